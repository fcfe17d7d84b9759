"""The comparison lab as plain data, and building and removing it with iproute2.

A lab is two hosts, ``a`` (the sender) and ``b`` (the receiver), joined through an impairment
router. ``LabSpec`` says what exists (namespaces, devices, addresses, MTU, the impairment of
each direction) without doing anything; ``build_commands`` and ``teardown_commands`` turn it
into the ``ip``/``tc`` command lines that a user could type themselves, so another backend
(Mininet or Containernet on a real testbed) can run the same experiment from the same data.

Two backends:

* ``tun``: one TUN device in each host namespace, point to point; a user-space router
  (``tunrouter.py``) reads every IP packet from one and writes it into the other through the
  seeded ``ImpairmentPolicy`` of ``udpxfer impair``. Needs only ``/dev/net/tun``.
* ``netem``: a router namespace between the hosts, joined by two veth pairs, with a netem
  qdisc on each router egress (one per direction). Needs ``sch_netem`` in the kernel.

Every name carries the ``udpxfer`` prefix and the owner's pid (``udpxfer-1234-a``), so that a
lab whose owner died can be recognised and removed (``stale_namespaces``).
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from udpxfer.errors import LabError
from udpxfer.lab.impair.models import Impairment

T = TypeVar("T")

PREFIX = "udpxfer"
MTU = 1500
ADDRESS_A = "10.201.1.1"  # inside the lab's namespaces only
ADDRESS_B = "10.201.2.1"
ROUTER_A_SIDE = "10.201.1.254"  # netem backend: the router's address on each side
ROUTER_B_SIDE = "10.201.2.254"
COMMAND_TIMEOUT_S = 20.0
_NS_NAME = re.compile(rf"^{PREFIX}-(\d+)-([a-z]+)$")
_DEV_NAME = re.compile(rf"^{PREFIX}(\d+)[a-z]$")
CLONE_NEWNET = 0x40000000


class Backend(StrEnum):
    """How the impairment router is made."""

    AUTO = "auto"
    NETEM = "netem"
    TUN = "tun"


@dataclass(frozen=True, slots=True)
class Host:
    """One end host: its namespace, its device on the path, its address."""

    role: str  # "a" (sender side) or "b" (receiver side)
    netns: str
    device: str
    address: str
    gateway: str | None = None  # netem: the router's address on this side


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A veth pair (netem backend): each end is (namespace, device, address/prefix)."""

    ends: tuple[tuple[str, str, str], tuple[str, str, str]]


@dataclass(frozen=True, slots=True)
class LabSpec:
    """Everything the lab consists of, as data (JSON-ready through ``as_dict``)."""

    owner_pid: int
    backend: Backend
    hosts: tuple[Host, Host]
    forward: Impairment  # a -> b
    reverse: Impairment  # b -> a
    seed: int
    mtu: int = MTU
    router_netns: str | None = None  # netem only
    links: tuple[LinkSpec, ...] = ()
    # The TCP senders' congestion control, set per socket (`tcp send --congestion`): a
    # namespace other than the first may only default to the "allowed" algorithms.
    tcp_congestion: str = "cubic"

    @property
    def a(self) -> Host:
        """The sender's host."""
        return self.hosts[0]

    @property
    def b(self) -> Host:
        """The receiver's host."""
        return self.hosts[1]

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace of the lab, hosts first."""
        names = [host.netns for host in self.hosts]
        if self.router_netns is not None:
            names.append(self.router_netns)
        return tuple(names)

    def as_dict(self) -> dict[str, Any]:
        """The lab as plain data, for ``compare.json`` and ``lab status``."""
        return {
            "backend": self.backend.value,
            "owner_pid": self.owner_pid,
            "mtu": self.mtu,
            "seed": self.seed,
            "hosts": [
                {"role": h.role, "netns": h.netns, "device": h.device, "address": h.address}
                for h in self.hosts
            ],
            "router": (
                {"kind": "tun", "process": self.owner_pid}
                if self.backend is Backend.TUN
                else {"kind": "netem", "netns": self.router_netns}
            ),
            "links": [[list(end) for end in link.ends] for link in self.links],
            "tcp_congestion": self.tcp_congestion,
            "impairment": {
                "forward": self.forward.describe(),
                "reverse": self.reverse.describe(),
            },
        }


def netns_name(pid: int, role: str) -> str:
    """``udpxfer-<pid>-<role>``."""
    return f"{PREFIX}-{pid}-{role}"


def device_name(pid: int, letter: str) -> str:
    """``udpxfer<pid><letter>``: at most 15 characters (IFNAMSIZ) for any Linux pid."""
    return f"{PREFIX}{pid}{letter}"


def describe_lab(
    backend: Backend,
    forward: Impairment,
    reverse: Impairment,
    *,
    seed: int,
    pid: int | None = None,
    mtu: int = MTU,
    tcp_congestion: str = "cubic",
) -> LabSpec:
    """The lab for ``backend`` (``tun`` or ``netem``), owned by ``pid`` (default: this process)."""
    if backend is Backend.AUTO:
        raise ValueError("resolve the backend first (choose_backend)")
    pid = os.getpid() if pid is None else pid
    ns_a, ns_b = netns_name(pid, "a"), netns_name(pid, "b")
    if backend is Backend.TUN:
        hosts = (
            Host("a", ns_a, device_name(pid, "a"), ADDRESS_A),
            Host("b", ns_b, device_name(pid, "b"), ADDRESS_B),
        )
        return LabSpec(
            pid, backend, hosts, forward, reverse, seed, mtu, tcp_congestion=tcp_congestion
        )
    ns_r = netns_name(pid, "r")
    dev_a, dev_p, dev_q, dev_b = (device_name(pid, x) for x in "apqb")
    hosts = (
        Host("a", ns_a, dev_a, ADDRESS_A, ROUTER_A_SIDE),
        Host("b", ns_b, dev_b, ADDRESS_B, ROUTER_B_SIDE),
    )
    links = (
        LinkSpec(((ns_a, dev_a, f"{ADDRESS_A}/24"), (ns_r, dev_p, f"{ROUTER_A_SIDE}/24"))),
        LinkSpec(((ns_r, dev_q, f"{ROUTER_B_SIDE}/24"), (ns_b, dev_b, f"{ADDRESS_B}/24"))),
    )
    return LabSpec(pid, backend, hosts, forward, reverse, seed, mtu, ns_r, links, tcp_congestion)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.6g}ms"


def _pct(probability: float) -> str:
    return f"{probability * 100:.6g}%"


def netem_limit(impairment: Impairment, mtu: int = MTU) -> int:
    """netem's ``limit`` (packets) for the bottleneck queue; 1000 (netem's default) without one."""
    if not impairment.rate_bps:
        return 1000
    if impairment.queue_limit == 0:
        return 1_000_000  # "unlimited"
    if impairment.queue_in_bytes:
        return max(1, impairment.queue_limit // mtu)
    return impairment.queue_limit


def netem_args(impairment: Impairment) -> list[str]:
    """The ``tc qdisc ... netem`` arguments for one direction of ``impairment``.

    netem draws its own random numbers (it has no seed), and its rate counts whole packets
    with their link-layer headers: the same model, not the same decisions as the TUN router.
    """
    args = ["netem", "limit", str(netem_limit(impairment))]
    if impairment.delay_s or impairment.jitter_s:
        args += ["delay", _ms(impairment.delay_s)]
        if impairment.jitter_s:
            args += [_ms(impairment.jitter_s)]
            if impairment.jitter_distribution.value == "normal":
                args += ["distribution", "normal"]
    if impairment.gilbert is not None:
        ge = impairment.gilbert
        args += ["loss", "gemodel", _pct(ge.p), _pct(ge.r), _pct(ge.loss_bad)]
        args += [_pct(ge.loss_good)]
    elif impairment.loss:
        args += ["loss", "random", _pct(impairment.loss)]
    if impairment.duplicate:
        args += ["duplicate", _pct(impairment.duplicate)]
    if impairment.corrupt:
        args += ["corrupt", _pct(impairment.corrupt)]
    if impairment.reorder:
        args += ["reorder", _pct(impairment.reorder), "gap", str(impairment.reorder_gap)]
    if impairment.rate_bps:
        args += ["rate", f"{impairment.rate_bps}bit"]
    return args


def namespace_commands(spec: LabSpec) -> list[list[str]]:
    """The command lines that create the namespaces and set them up (before any device)."""
    cmds: list[list[str]] = [["ip", "netns", "add", ns] for ns in spec.namespaces]
    for ns in spec.namespaces:
        sysctl = ["ip", "netns", "exec", ns, "sysctl", "-q", "-w"]
        cmds.append(["ip", "-n", ns, "link", "set", "lo", "up"])
        # IPv4 only: no router solicitations or DAD on the path, so its counters are ours.
        cmds.append([*sysctl, "net.ipv6.conf.all.disable_ipv6=1"])
        cmds.append([*sysctl, "net.ipv6.conf.default.disable_ipv6=1"])
    return cmds


def path_commands(spec: LabSpec) -> list[list[str]]:
    """The command lines that make the path between the hosts.

    For the TUN backend these configure the devices, which must exist (opened) first.
    """
    cmds: list[list[str]] = []
    if spec.backend is Backend.TUN:
        for host, peer in ((spec.a, spec.b), (spec.b, spec.a)):
            ns, dev = host.netns, host.device
            cmds.append(["ip", "-n", ns, "addr", "add", host.address, "peer", peer.address,
                         "dev", dev])  # fmt: skip
            cmds.append(["ip", "-n", ns, "link", "set", dev, "mtu", str(spec.mtu),
                         "txqueuelen", "1000", "up"])  # fmt: skip
        return cmds
    for link in spec.links:
        (ns1, dev1, _), (ns2, dev2, _) = link.ends
        cmds.append(["ip", "link", "add", dev1, "netns", ns1, "mtu", str(spec.mtu), "type",
                     "veth", "peer", "name", dev2, "netns", ns2, "mtu", str(spec.mtu)])  # fmt: skip
        for ns, dev, address in link.ends:
            cmds.append(["ip", "-n", ns, "addr", "add", address, "dev", dev])
            cmds.append(["ip", "-n", ns, "link", "set", dev, "up"])
    router = spec.router_netns
    assert router is not None
    cmds.append(["ip", "netns", "exec", router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    for host in spec.hosts:
        assert host.gateway is not None
        cmds.append(["ip", "-n", host.netns, "route", "add", "default", "via", host.gateway])
    cmds += netem_commands(spec, "add")
    return cmds


def netem_commands(spec: LabSpec, verb: str = "change") -> list[list[str]]:
    """``tc qdisc add|change`` of both directions: forward leaves the router towards b."""
    toward_b, toward_a = spec.links[1].ends[0], spec.links[0].ends[1]
    cmds = []
    for (ns, dev, _), impairment in ((toward_b, spec.forward), (toward_a, spec.reverse)):
        cmds.append(["tc", "-n", ns, "qdisc", verb, "dev", dev, "root", *netem_args(impairment)])
    return cmds


def teardown_commands(namespaces: Iterable[str]) -> list[list[str]]:
    """Delete each namespace (its devices go with it)."""
    return [["ip", "netns", "del", ns] for ns in namespaces]


def run(cmd: Sequence[str]) -> str:
    """Run one command, its stdout back.

    Raises:
        LabError: it failed or hung.
    """
    try:
        done = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except FileNotFoundError as exc:
        raise LabError(f"{cmd[0]} not found: the lab needs iproute2 (ip, tc)") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(cmd)}: no answer in {COMMAND_TIMEOUT_S:g} s") from exc
    if done.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


# ------------------------------------------------------------------------ what exists now


def list_namespaces() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    return [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()]


def list_root_links() -> list[str]:
    """Names of the links in this process's namespace."""
    names = []
    for line in run(["ip", "-o", "link", "show"]).splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def owner_of(name: str) -> int | None:
    """The owner pid encoded in a lab namespace or device name, None if not one of ours."""
    match = _NS_NAME.match(name) or _DEV_NAME.match(name)
    return int(match.group(1)) if match else None


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists (a reused pid keeps a leftover until it ends: safe)."""
    return os.path.exists(f"/proc/{pid}")


def stale_namespaces(names: Iterable[str], alive: Callable[[int], bool]) -> list[str]:
    """The lab namespaces among ``names`` whose owner is no longer ``alive``."""
    stale = []
    for name in names:
        pid = owner_of(name)
        if pid is not None and not alive(pid):
            stale.append(name)
    return stale


def kill_namespace_processes(netns: str) -> list[int]:
    """SIGKILL every process left inside ``netns``; their pids back."""
    try:
        pids = [int(p) for p in run(["ip", "netns", "pids", netns]).split()]
    except LabError:
        return []
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            continue
    return pids


def remove_namespaces(namespaces: Iterable[str]) -> list[str]:
    """Kill what runs inside and delete each namespace; the error texts of those that failed."""
    errors = []
    present = set(list_namespaces())
    for ns in namespaces:
        if ns not in present:
            continue
        kill_namespace_processes(ns)
        try:
            run(["ip", "netns", "del", ns])
        except LabError as exc:
            errors.append(str(exc))
    return errors


def remove_leftovers(alive: Callable[[int], bool] = pid_alive) -> list[str]:
    """Remove labs (namespaces and stray root links) whose owner died; what was removed."""
    removed = stale_namespaces(list_namespaces(), alive)
    remove_namespaces(removed)
    for link in stale_namespaces(list_root_links(), alive):
        try:
            run(["ip", "link", "del", link])
        except LabError:
            continue  # the peer's deletion took it already
        removed.append(link)
    return removed


# ------------------------------------------------------------------------ entering a netns

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass(slots=True)
class _Outcome:
    value: Any = None
    error: BaseException | None = None


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run ``fn()`` in a new thread that has entered ``netns``; its result back.

    ``setns(2)`` changes the calling thread's namespace only, so a fresh thread keeps the
    caller where it was. Sockets and TUN devices opened inside stay in ``netns`` after the
    thread ends. (``os.setns`` exists from Python 3.12; this is the same call through ctypes.)
    """
    outcome = _Outcome()

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            outcome.value = fn()
        except BaseException as exc:  # handed to the caller below
            outcome.error = exc

    thread = threading.Thread(target=body, name=f"in-{netns}", daemon=True)
    thread.start()
    thread.join()
    if outcome.error is not None:
        raise outcome.error
    return outcome.value  # type: ignore[no-any-return]
