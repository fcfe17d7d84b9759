"""The pure parts of ``udpxfer compare``: lab description, sweeps, Mathis model, the report."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from schemas import validate
from typer.testing import CliRunner

from udpxfer.cli import app
from udpxfer.companions.tcp_info import decode_tcp_info
from udpxfer.errors import UsageError
from udpxfer.lab import netns
from udpxfer.lab.compare import report as compare_report
from udpxfer.lab.compare.plan import (
    TRANSPORTS,
    effective_loss,
    mathis_bps,
    parse_sweep,
    parse_transports,
    summarise,
    sweep_points,
)
from udpxfer.lab.compare.run import CompareConfig
from udpxfer.lab.impair.models import Direction, GilbertElliott, Impairment
from udpxfer.lab.netns import (
    Backend,
    describe_lab,
    namespace_commands,
    netem_args,
    netem_limit,
    owner_of,
    path_commands,
    stale_namespaces,
)

# ---------------------------------------------------------------- the lab as data


def test_tun_lab_names_carry_prefix_and_pid() -> None:
    spec = describe_lab(Backend.TUN, Impairment(loss=0.01), Impairment(), seed=3, pid=4194304)
    assert spec.namespaces == ("udpxfer-4194304-a", "udpxfer-4194304-b")
    assert {h.device for h in spec.hosts} == {"udpxfer4194304a", "udpxfer4194304b"}
    assert all(len(h.device) <= 15 for h in spec.hosts)  # IFNAMSIZ
    data = json.loads(json.dumps(spec.as_dict()))
    assert data["backend"] == "tun"
    assert data["mtu"] == 1500
    assert data["impairment"]["forward"] == "loss 0.01"
    # Addresses that exist only inside the lab's own namespaces (no traffic leaves them).
    assert [h["address"] for h in data["hosts"]] == [netns.ADDRESS_A, netns.ADDRESS_B]


def test_tun_path_is_point_to_point_at_mtu_1500() -> None:
    spec = describe_lab(Backend.TUN, Impairment(), Impairment(), seed=0, pid=42)
    cmds = [" ".join(c) for c in path_commands(spec)]
    a, b = netns.ADDRESS_A, netns.ADDRESS_B
    assert f"ip -n udpxfer-42-a addr add {a} peer {b} dev udpxfer42a" in cmds
    assert any("udpxfer42b mtu 1500" in c for c in cmds)
    assert [c for c in namespace_commands(spec) if c[:3] == ["ip", "netns", "add"]] == [
        ["ip", "netns", "add", "udpxfer-42-a"],
        ["ip", "netns", "add", "udpxfer-42-b"],
    ]


def test_netem_lab_routes_through_a_router_namespace() -> None:
    fwd = Impairment(loss=0.02, delay_s=0.02)
    spec = describe_lab(Backend.NETEM, fwd, Impairment(), seed=0, pid=7)
    assert spec.namespaces == ("udpxfer-7-a", "udpxfer-7-b", "udpxfer-7-r")
    cmds = [" ".join(c) for c in path_commands(spec)]
    # forward leaves the router towards b, reverse towards a
    assert (
        "tc -n udpxfer-7-r qdisc add dev udpxfer7q root netem limit 1000 delay 20ms loss "
        "random 2%" in cmds
    )
    assert f"ip -n udpxfer-7-a route add default via {netns.ROUTER_A_SIDE}" in cmds
    assert any("type veth peer name udpxfer7p netns udpxfer-7-r" in c for c in cmds)


def test_netem_args_cover_every_model() -> None:
    imp = Impairment(
        gilbert=GilbertElliott(0.01, 0.25),
        delay_s=0.01,
        jitter_s=0.002,
        duplicate=0.001,
        corrupt=0.002,
        reorder=0.05,
        reorder_gap=3,
        rate_bps=10_000_000,
        queue_limit=50,
    )
    assert netem_args(imp) == [
        "netem", "limit", "50", "delay", "10ms", "2ms",
        "loss", "gemodel", "1%", "25%", "100%", "0%",
        "duplicate", "0.1%", "corrupt", "0.2%", "reorder", "5%", "gap", "3",
        "rate", "10000000bit",
    ]  # fmt: skip


def test_netem_limit_counts_packets() -> None:
    assert netem_limit(Impairment()) == 1000
    assert netem_limit(Impairment(rate_bps=10**7, queue_limit=64 * 1500, queue_in_bytes=True)) == 64
    assert netem_limit(Impairment(rate_bps=10**7, queue_limit=0)) == 1_000_000


def test_leftovers_are_the_labs_of_dead_owners_only() -> None:
    names = ["udpxfer-10-a", "udpxfer-10-b", "udpxfer-11-a", "udpxfer99r", "other", "udpxfer-x-a"]
    assert owner_of("udpxfer-10-a") == 10
    assert owner_of("udpxfer99r") == 99
    assert owner_of("other") is None
    assert stale_namespaces(names, alive=lambda pid: pid == 11) == [
        "udpxfer-10-a",
        "udpxfer-10-b",
        "udpxfer99r",
    ]


# ---------------------------------------------------------------- parsing


def test_parse_sweep() -> None:
    axis = parse_sweep("loss=0,0.5%,1%,2%,5%")
    assert axis.param == "loss"
    assert axis.values == (0.0, 0.005, 0.01, 0.02, 0.05)
    assert axis.labels == ("0", "0.5%", "1%", "2%", "5%")
    assert parse_sweep("delay=1ms,20ms,80ms").values == pytest.approx((0.001, 0.02, 0.08))
    assert parse_sweep("rate=10M,100M").values == (1e7, 1e8)


@pytest.mark.parametrize(
    "text", ["loss", "speed=1,2", "loss=", "loss=1%,1%", "loss=2", "delay=fast"]
)
def test_parse_sweep_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_sweep(text)


def test_parse_transports() -> None:
    assert [t.name for t in parse_transports("blast, TCP")] == ["blast", "tcp"]
    for bad in ("", "tcp,tcp", "quic"):
        with pytest.raises(UsageError):
            parse_transports(bad)


def test_sweep_points_change_only_the_impaired_directions() -> None:
    fwd, rev = Impairment(delay_s=0.01, loss=0.03), Impairment(delay_s=0.01)
    points = sweep_points(fwd, rev, [Direction.FORWARD], [parse_sweep("loss=0,1%")])
    assert [p.forward.loss for p in points] == [0.0, 0.01]
    assert all(p.reverse == rev for p in points)
    assert all(p.forward.delay_s == 0.01 for p in points)
    assert [p.label for p in points] == ["loss 0", "loss 1%"]
    assert sweep_points(fwd, rev, [], [])[0].param is None


# ---------------------------------------------------------------- model


def test_mathis_model() -> None:
    # MSS 1448 B, RTT 40 ms, p = 1%: 1448*8/0.04 * 1.2247/0.1 = 3.546 Mbit/s
    assert mathis_bps(1448, 0.04, 0.01) == pytest.approx(3.5467e6, rel=1e-3)
    # rate ~ 1/sqrt(p): four times the loss, half the rate
    assert mathis_bps(1448, 0.04, 0.04) == pytest.approx(mathis_bps(1448, 0.04, 0.01) / 2)
    assert mathis_bps(1448, 0.04, 0.0) is None
    assert mathis_bps(1448, None, 0.01) is None


def test_effective_loss_combines_random_and_burst_loss() -> None:
    assert effective_loss(Impairment(loss=0.1)) == pytest.approx(0.1)
    ge = GilbertElliott(0.01, 0.09)  # 10% of packets meet the bad state
    assert effective_loss(Impairment(loss=0.1, gilbert=ge)) == pytest.approx(1 - 0.9 * 0.9)


def test_decode_tcp_info_reads_only_what_the_kernel_returned() -> None:
    raw = bytearray(104)
    raw[68:72] = (41_000).to_bytes(4, "little")
    raw[100:104] = (17).to_bytes(4, "little")
    info = decode_tcp_info(bytes(raw))
    assert info["rtt_us"] == 41_000
    assert info["total_retrans"] == 17
    assert "bytes_retrans" not in info


# ---------------------------------------------------------------- the report


def _run(point: int, name: str, run: int, goodput: float, **extra: Any) -> dict[str, Any]:
    t = TRANSPORTS[name]
    return {
        "point": point, "transport": t.transport, "mode": t.mode, "run": run,
        "goodput_bps": goodput, "duration_s": 2e6 * 8 / goodput, "complete": True,
        "verified": t.mode != "blast", "wire_bytes": 2_100_000, "wire_per_byte": 1.05,
        "retransmitted": 20, "loss_seen": 0.01, **extra,
    }  # fmt: skip


def _doc(tmp_path: Path, sweep: bool) -> dict[str, Any]:
    source = tmp_path / "f.bin"
    source.write_bytes(b"x" * 1000)
    axes = [parse_sweep("loss=0,1%,4%")] if sweep else []
    points = sweep_points(
        Impairment(delay_s=0.02, loss=0.01), Impairment(delay_s=0.02), [Direction.FORWARD], axes
    )
    config = CompareConfig(source, tmp_path, parse_transports("tcp,reliable,blast"), 2, points)
    runs, latency = [], []
    for p in points:
        scale = 1 / math.sqrt(max(p.forward.loss, 1e-4))
        for r in (1, 2):
            runs.append(_run(p.index, "tcp", r, 3e5 * scale * (1 + r / 10),
                             tcp_info={"snd_mss": 1448, "rtt_us": 42_000}))  # fmt: skip
            runs.append(_run(p.index, "reliable", r, 2e7 + r))
            runs.append(_run(p.index, "blast", r, 4e7 + r))
        echo = {"transmitted": 20, "received": 20, "loss": 0.0, "min_ms": 40.0,
                "avg_ms": 41.0, "max_ms": 45.0, "mdev_ms": 1.0, "median_ms": 40.5}  # fmt: skip
        latency.append({"point": p.index, "tcp_echo": echo, "udp_echo": echo})
    lab = describe_lab(Backend.TUN, points[0].forward, points[0].reverse, seed=1).as_dict()
    return compare_report.build_document(config, lab, "forward", runs, latency, started_unix_s=0.0)


def test_document_has_the_schema_keys(tmp_path: Path) -> None:
    doc = _doc(tmp_path, sweep=False)
    assert doc["schema"] == "udpxfer.compare/1"
    for key in ("impairment", "lab", "runs", "model", "sweep"):
        assert key in doc
    for run in doc["runs"]:
        for key in ("transport", "mode", "run", "goodput_bps", "duration_s", "complete",
                    "verified", "wire_bytes", "retransmitted", "loss_seen"):  # fmt: skip
            assert key in run
    model = doc["model"]
    assert model["rtt_s"] == pytest.approx(0.0405)
    assert model["loss"] == pytest.approx(0.01)
    assert model["mss_bytes"] == 1448
    assert model["mathis_bps"] == pytest.approx(mathis_bps(1448, 0.0405, 0.01))
    assert model["tcp_srtt_s"] == pytest.approx(0.042)
    assert model["mathis_bps_at_tcp_srtt"] == pytest.approx(mathis_bps(1448, 0.042, 0.01))
    tcp = next(row for row in doc["summary"] if row["mode"] == "stream")
    assert tcp["goodput_bps"]["min"] < tcp["goodput_bps"]["median"] < tcp["goodput_bps"]["max"]
    assert doc["sweep"] == []


@pytest.mark.parametrize("sweep", [False, True], ids=["one point", "sweep"])
def test_document_validates_against_its_schema(tmp_path: Path, sweep: bool) -> None:
    validate(json.loads(json.dumps(_doc(tmp_path, sweep=sweep))))


def test_summary_counts_only_finished_runs() -> None:
    runs = [_run(0, "tcp", 1, 1e6), {**_run(0, "tcp", 2, 1e6), "goodput_bps": None,
                                     "complete": False, "verified": False}]  # fmt: skip
    (row,) = summarise(runs, [TRANSPORTS["tcp"]])
    assert (row["runs"], row["verified"]) == (2, 1)
    assert row["goodput_bps"]["median"] == 1e6
    assert row["goodput_bps"]["stdev"] is None


def test_pages_carry_their_plots(tmp_path: Path) -> None:
    doc = _doc(tmp_path, sweep=True)
    assert [p["label"] for p in doc["sweep"]] == ["loss 0", "loss 1%", "loss 4%"]
    assert doc["sweep"][0]["model"]["mathis_bps"] is None  # no loss: no model
    plots = compare_report.compare_plots(doc)
    assert [p.slug for p in plots][:2] == ["sweep-loss", "goodput"]
    assert all(p.png.startswith(b"\x89PNG") for p in plots)
    compare_report.write_outputs(doc, tmp_path / "out")
    page = (tmp_path / "out" / "compare.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == len(plots)
    assert "Goodput against loss, with the Mathis model" in page
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "![Goodput against loss, with the Mathis model](compare-sweep-loss.png)" in md
    assert (tmp_path / "out" / "compare-sweep-loss.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["schema"] == (
        "udpxfer.compare/1"
    )


def test_a_second_comparison_into_one_directory_keeps_the_first(tmp_path: Path) -> None:
    doc = _doc(tmp_path, sweep=True)
    out = tmp_path / "out"
    first = compare_report.write_outputs(doc, out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    second = compare_report.write_outputs(doc, out)
    assert [p.name for p in first] == ["compare.json", "compare.md", "compare.html"]
    assert [p.name for p in second] == ["compare-1.json", "compare-1.md", "compare-1.html"]
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.name in before} == before
    md = (out / "compare-1.md").read_text()
    assert "![Goodput against loss, with the Mathis model](compare-1-sweep-loss.png)" in md
    assert (out / "compare-1-sweep-loss.png").read_bytes().startswith(b"\x89PNG")


def test_compare_without_root_says_so_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "f.bin"
    source.write_bytes(b"x")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(app, ["compare", str(source), "--loss", "1%"])
    assert result.exit_code == 2
    assert "run it as root" in result.output


def test_compare_rejects_bad_options_before_building_anything(tmp_path: Path) -> None:
    source = tmp_path / "f.bin"
    source.write_bytes(b"x")
    for args in (["--sweep", "speed=1"], ["--loss", "7"], ["--transports", "quic"]):
        result = CliRunner().invoke(app, ["compare", str(source), *args])
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1
