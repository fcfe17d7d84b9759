"""A lab that exists: built from a ``LabSpec``, running processes inside, torn down once.

``LiveLab`` is a context manager. Entering removes the leftovers of crashed earlier labs,
then builds this one; leaving (normally, on an exception, on Ctrl-C) stops every process it
started, stops the router and deletes the namespaces. The owner process makes SIGTERM raise
(``udpxfer.cli.signals``) so that ``finally`` always runs; ``stop_owner`` sends it that SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from udpxfer.errors import LabError
from udpxfer.lab.impair.models import Impairment
from udpxfer.lab.netns import (
    Backend,
    LabSpec,
    list_namespaces,
    namespace_commands,
    netem_commands,
    netns_name,
    owner_of,
    path_commands,
    remove_leftovers,
    remove_namespaces,
    run,
)
from udpxfer.lab.tunrouter import TunRouter, open_tun

STOP_GRACE_S = 3.0
STATE_DIR = Path("/run/udpxfer")


def check_privileges() -> None:
    """Raise ``LabError`` unless this process may build namespaces (root, iproute2)."""
    if os.geteuid() != 0:
        raise LabError("the lab builds network namespaces: run it as root (sudo)")
    if shutil.which("ip") is None:
        raise LabError("the lab needs iproute2's `ip` command")


def netem_available() -> bool:
    """True when a netem qdisc can be added here (tried in a scratch namespace)."""
    if shutil.which("tc") is None:
        return False
    scratch = netns_name(os.getpid(), "t")
    try:
        run(["ip", "netns", "add", scratch])
        run(["tc", "-n", scratch, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"])
    except LabError:
        return False
    finally:
        remove_namespaces([scratch])
    return True


def choose_backend(requested: Backend) -> Backend:
    """``auto``: netem where the kernel has it, else the TUN router.

    Raises:
        LabError: the requested backend cannot work here.
    """
    tun_ok = os.path.exists("/dev/net/tun")
    if requested is Backend.NETEM or (requested is Backend.AUTO and netem_available()):
        if requested is Backend.NETEM and not netem_available():
            raise LabError("--backend netem: this kernel has no sch_netem (try --backend tun)")
        return Backend.NETEM
    if not tun_ok:
        raise LabError("no /dev/net/tun and no sch_netem: the lab cannot impair packets here")
    return Backend.TUN


def labs_by_owner() -> dict[int, list[str]]:
    """The udpxfer lab namespaces on this machine, by the pid of the process that owns them."""
    labs: dict[int, list[str]] = {}
    for name in list_namespaces():
        pid = owner_of(name)
        if pid is not None:
            labs.setdefault(pid, []).append(name)
    return labs


def stop_owner(pid: int, timeout_s: float) -> None:
    """Ask a lab's owner to remove its lab (SIGTERM); wait until it has, ``timeout_s`` at most."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pid in labs_by_owner() and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for the owner's teardown, bounded


class LiveLab:
    """The lab of ``spec``, built on ``__enter__`` and removed on ``__exit__``."""

    def __init__(self, spec: LabSpec) -> None:
        self.spec = spec
        self.router: TunRouter | None = None
        self.removed_leftovers: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._closed = False

    @property
    def state_path(self) -> Path:
        """Where ``lab status`` finds this lab's description."""
        return STATE_DIR / f"lab-{self.spec.owner_pid}.json"

    def __enter__(self) -> LiveLab:
        check_privileges()
        self.removed_leftovers = remove_leftovers()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _build(self) -> None:
        spec = self.spec
        for cmd in namespace_commands(spec):
            run(cmd)
        if spec.backend is Backend.TUN:
            fds = [open_tun(host.netns, host.device) for host in spec.hosts]
            self.router = TunRouter(fds[0], fds[1], spec.forward, spec.reverse, seed=spec.seed)
        for cmd in path_commands(spec):
            run(cmd)
        if self.router is not None:
            self.router.start()
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps(spec.as_dict(), indent=2) + "\n")

    def set_impairment(self, forward: Impairment, reverse: Impairment) -> None:
        """Change both directions' impairment in place (counters restart)."""
        self.spec = replace(self.spec, forward=forward, reverse=reverse)
        if self.router is not None:
            self.router.set_impairment(forward, reverse)
        else:
            for cmd in netem_commands(self.spec, "change"):
                run(cmd)

    def check_router(self) -> None:
        """Raise ``LabError`` if the TUN router died."""
        if self.router is not None and self.router.error is not None:
            raise LabError(f"the TUN router stopped: {self.router.error!r}")

    def device_counters(self) -> dict[str, dict[str, int]]:
        """Per host: bytes and packets its path device sent and received, and drops."""
        out = {}
        for host in self.spec.hosts:
            doc = json.loads(run(["ip", "-n", host.netns, "-j", "-s", "link", "show", "dev",
                                  host.device]))  # fmt: skip
            stats = doc[0].get("stats64") or doc[0].get("stats") or {}
            tx, rx = stats.get("tx", {}), stats.get("rx", {})
            out[host.role] = {
                "tx_bytes": int(tx.get("bytes", 0)),
                "tx_packets": int(tx.get("packets", 0)),
                "tx_dropped": int(tx.get("dropped", 0)),
                "rx_bytes": int(rx.get("bytes", 0)),
                "rx_packets": int(rx.get("packets", 0)),
            }
        return out

    def router_counters(self) -> dict[str, Any]:
        """What the impairment did since the last ``set_impairment`` (TUN) or ever (netem)."""
        if self.router is not None:
            return self.router.snapshot()
        out: dict[str, Any] = {}
        spec = self.spec
        for name, (ns, dev, _) in (
            ("forward", spec.links[1].ends[0]),
            ("reverse", spec.links[0].ends[1]),
        ):
            doc = json.loads(run(["tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev", dev]))
            qdisc: dict[str, Any] = next((q for q in doc if q.get("kind") == "netem"), {})
            out[name] = {
                "datagrams_in": int(qdisc.get("packets", 0)) + int(qdisc.get("drops", 0)),
                "delivered": int(qdisc.get("packets", 0)),
                "dropped": {"netem": int(qdisc.get("drops", 0))},
            }
        return out

    def spawn(self, role: str, args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``python -m udpxfer ARGS`` inside host ``role``'s namespace, output to ``log``."""
        host = self.spec.a if role == "a" else self.spec.b
        cmd = ["ip", "netns", "exec", host.netns, sys.executable, "-m", "udpxfer", *args]
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # the terminal's Ctrl-C reaches us only; we stop them
            )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop one process we started: SIGTERM, then SIGKILL after a grace period."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_GRACE_S)
        if proc in self._procs:
            self._procs.remove(proc)

    def close(self) -> None:
        """Stop every process, the router, and delete the namespaces (idempotent)."""
        if self._closed:
            return
        self._closed = True
        # Ctrl-C or SIGTERM again during teardown must not leave half a lab: finish it first.
        main = threading.current_thread() is threading.main_thread()
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals} if main else {}
        try:
            for proc in list(self._procs):
                self.stop(proc)
            if self.router is not None:
                self.router.close()
            errors = remove_namespaces(self.spec.namespaces)
            self.state_path.unlink(missing_ok=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if errors:
            raise LabError("teardown: " + "; ".join(errors))


def wait_for_line(proc: subprocess.Popen[bytes], log: Path, text: str, timeout_s: float) -> None:
    """Wait until ``log`` holds a line containing ``text`` (a server saying it listens).

    Raises:
        LabError: the process exited first, or ``timeout_s`` passed.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text.encode() in log.read_bytes():
            return
        if proc.poll() is not None:
            tail = log.read_bytes()[-300:].decode("utf-8", "replace").strip()
            raise LabError(f"{' '.join(map(str, proc.args[4:7]))} exited: {tail}")  # type: ignore[index]
        time.sleep(0.02)  # polling a log file, bounded by the deadline
    raise LabError(f"no {text!r} from {log.name} within {timeout_s:g} s")
