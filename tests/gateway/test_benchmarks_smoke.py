"""A tiny run of every fake-engine benchmark, through the suite's own code, so it cannot rot."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import report, router  # noqa: E402
from benchmarks.common import Ctx  # noqa: E402
from benchmarks.harness import kill_all  # noqa: E402
from benchmarks.runner import SMOKE, run_suite  # noqa: E402

FAKE_BENCHMARKS = [
    "switch_fake",
    "streaming",
    "overhead",
    "concurrency",
    "alternate_fake",
    "starting_fake",
    "stream_fast",
    "swapback",
    "peer_latency",
    "routing_decision",
    "pool_sim",
]


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("bench")
    ctx = Ctx(workdir=work, quiet=True)
    try:
        results, errors = asyncio.run(asyncio.wait_for(run_suite(ctx, SMOKE, FAKE_BENCHMARKS), 120))
    finally:
        kill_all()
    assert not errors, errors
    data = {"meta": {}, "benchmarks": results, "skipped": {}, "errors": errors}
    data["targets"] = report.targets(data)
    return data


def _positive(spread: dict[str, Any]) -> bool:
    return spread["n"] > 0 and spread["median"] is not None and spread["median"] > 0


def test_switch_shape(smoke_results: dict[str, Any]) -> None:
    sw = smoke_results["benchmarks"]["switch_fake"]
    assert set(sw["direct"]) == set(sw["gateway"]) == {"cold", "model_switch", "variant_switch"}
    for kind, g in sw["gateway"].items():
        assert g["all_ok"], kind
        assert g["samples"] > 0
        assert _positive(g["latency_ms"])
        d = sw["direct"][kind]
        assert d["all_ok"]
        assert _positive(d["spawn_to_healthy_ms"]) and _positive(d["request_ms"])
    assert all(r["status"] == 200 for path in sw["raw"].values() for r in path)
    assert "router" not in sw  # real engine only


def test_streaming_shape(smoke_results: dict[str, Any]) -> None:
    st = smoke_results["benchmarks"]["streaming"]
    assert st["all_ok"]
    for path in ("direct", "gateway"):
        assert st[path]["chunks"]["median"] >= st["tokens"]
        assert _positive(st[path]["chunks_per_s"])
    assert st["ratio_chunks_per_s"]["median"] > 0


def test_fast_stream_shape(smoke_results: dict[str, Any]) -> None:
    st = smoke_results["benchmarks"]["stream_fast"]
    assert st["all_ok"]
    for path in ("direct", "gateway"):
        assert st[path]["chunks"]["median"] >= st["chunks"]
        assert _positive(st[path]["chunks_per_s"])
    assert st["ratio_chunks_per_s"]["median"] > 0
    assert st["gateway"]["gateway_cpu_us_per_chunk"]["n"] == st["repeats"]
    assert st["hangup_to_engine_ms"]["n"] == 1  # the source saw the client's hang-up (no figure asserted)
    assert {t["target"] for t in smoke_results["targets"] if t["benchmark"].startswith("2b.")} == {
        "300-chunk stream: chunks/s gateway / direct >= 0.9",
        "gateway CPU per chunk <= 8 µs",
    }


def test_swapback_shape(smoke_results: dict[str, Any]) -> None:
    sb = smoke_results["benchmarks"]["swapback"]
    assert sb["engine"] == "fake" and set(sb["paths"]) == {"no_cache", "slot_cache"}  # no router without llama-server
    for path in sb["paths"].values():
        assert _positive(path["swapback_ttft_ms"]) and _positive(path["prompt_tokens"])
    # The fake reports restored tokens as cached: the shape of a restore, not a timing.
    assert sb["paths"]["slot_cache"]["swapback_cache_n"]["median"] > 0
    assert sb["paths"]["no_cache"]["swapback_cache_n"]["median"] == 0
    assert sb["speedup_vs_no_cache"]["n"] == 1


def test_overhead_shape(smoke_results: dict[str, Any]) -> None:
    ov = smoke_results["benchmarks"]["overhead"]
    assert ov["all_ok"]
    for key in ("nonstream", "stream_ttft", "health", "count", "count_new_conn"):
        for path in ("direct", "gateway"):
            probe = ov["probes"].get(f"{key}/{path}")
            if probe is not None:
                assert probe["median"]["median"] > 0
    assert ov["added_nonstream_ms"]["median"]["median"] is not None
    # The fake engine counts in a process of its own, and the result says so.
    assert ov["count_thread"] and "--fake-count-process" in ov["fake_flags"]
    # A CPU-time figure: its value belongs to the benchmark report, the test checks that it is there.
    cpu = ov["gateway_cpu_ms_per_request"]
    assert isinstance(cpu, float) and cpu >= 0


def test_peers_shape(smoke_results: dict[str, Any]) -> None:
    pl = smoke_results["benchmarks"]["peer_latency"]
    assert pl["all_ok"]  # every request through the first gateway was served by the peer (checked per request)
    for key in ("peer/via", "peer/direct", "peer_ttft/via", "peer_ttft/direct", "local/pooled", "local/alone"):
        assert pl["probes"][key]["median"]["median"] > 0, key
    for name in ("peer", "peer_ttft", "local"):
        assert isinstance(pl[f"added_{name}_ms"]["median"]["median"], float)
    assert pl["forwarding_cpu_ms_per_request"] >= 0
    rd = smoke_results["benchmarks"]["routing_decision"]
    assert set(rd["peers"]) == {"3", "30"} and all(_positive(v["decision_us"]) for v in rd["peers"].values())
    sim = smoke_results["benchmarks"]["pool_sim"]
    assert sim["all_ok"] and sim["failed"] == 0
    assert 0 <= sim["warm_ratio"] <= 1 and sim["nodes_used"] >= 1 and sim["max_waiting"] >= 0
    assert sim["per_node_max"] * sim["nodes"] >= sim["requests"]


def test_concurrency_and_memory_shape(smoke_results: dict[str, Any]) -> None:
    cc = smoke_results["benchmarks"]["concurrency"]
    assert cc["all_ok"]
    assert [row["clients"] for row in cc["levels"]] == [1, 2]
    for row in cc["levels"]:
        assert _positive(row["direct_wall_ms"]) and _positive(row["gateway_wall_ms"])
        assert _positive(row["gateway_chunks_per_s"])
    memory = cc["memory"]
    assert memory["idle_no_engine_mb"] > 5
    assert memory["peak_under_load_mb"] >= memory["idle_no_engine_mb"] * 0.5


def test_alternate_shape(smoke_results: dict[str, Any]) -> None:
    al = smoke_results["benchmarks"]["alternate_fake"]
    assert al["all_ok"]
    # Both engines loaded once before measuring, then never restarted (the benchmark raises otherwise).
    assert al["engine_starts"] == {"gateway_log": {"A": 1, "B": 1}, "fake_events": {"A": 1, "B": 1}}
    assert al["engine_starts_during_measurement"] == 0
    assert set(al["pids"]) == {"A", "B"} and all(isinstance(pid, int) for pid in al["pids"].values())
    assert sorted(blk["mode"] for blk in al["blocks"]) == ["alternating", "alternating", "single", "single"]
    for blk in al["blocks"]:
        models = {"A", "B"} if blk["mode"] == "alternating" else {"A"}
        assert set(blk["per_model"]) == models
        assert blk["gateway"]["n"] == blk["direct"]["n"] == 6
    for mode in ("single", "alternating"):
        assert _positive(al[mode]["gateway_ms"]) and _positive(al[mode]["direct_ms"])
        assert isinstance(al[mode]["added_ms"]["median"]["median"], float)
    assert isinstance(al["difference_ms"]["median"], float)
    assert isinstance(al["within_spread"], bool)


def test_starting_shape(smoke_results: dict[str, Any]) -> None:
    sg = smoke_results["benchmarks"]["starting_fake"]
    assert sg["all_ok"]
    # A loaded once; B started once per round (and unloaded after it).
    assert sg["engine_starts"] == {"gateway_log": {"A": 1, "B": 2}, "fake_events": {"A": 1, "B": 2}}
    assert len(sg["per_round"]) == 2
    for row in sg["per_round"]:
        assert row["n_idle"] > 0 and row["n_starting"] > 0
        assert isinstance(row["load_s"], float)
    assert sg["samples"]["starting"] > 0 and sg["samples"]["idle"] > 0
    for key in ("gateway_more_ms", "direct_more_ms", "added_more_ms", "idle_added_ms", "starting_added_ms"):
        assert isinstance(sg[key]["median"], float), key
    for phase in ("idle", "starting"):
        for path in ("gateway", "direct"):
            assert _positive(sg["pooled"][phase][path])
        assert isinstance(sg["gateway_cpu_ms_per_pair"][phase]["median"], float)
    assert isinstance(sg["readiness_probes_per_start"], float)


def test_report_renders(smoke_results: dict[str, Any], tmp_path: Path) -> None:
    data = dict(smoke_results)
    data["meta"] = {
        "machine": {
            "cpu_model": "x",
            "logical_cpus": 2,
            "physical_cores": 2,
            "memory_gb": 1,
            "os": "os",
            "python": "3",
            "tornado": "6",
            "llama_server": "none",
            "model": None,
        },
        "git": "abc",
        "command": "python -m benchmarks",
        "mode": "smoke",
        "started": "now",
        "duration_s": 1,
    }
    path = report.write(data, tmp_path, "-smoke")
    text = path.read_text()
    for heading in (
        "## Targets",
        "## 1. Switch time",
        "## 2. Streaming",
        "## 3. Per-request",
        "## 5. Concurrency",
        "## 6. Memory",
        "## 7. Alternating",
        "## 8. A loaded model while another starts",
        "## 2b. Streaming, source faster",
        "## 9. Swap-back",
        "## 11. A pool of gateways",
    ):
        assert heading in text
    assert {t["benchmark"] for t in data["targets"]} >= {
        "2. streaming",
        "3. overhead",
        "5. concurrency",
        "7. alternation (fake engine)",
        "8. while another starts (fake engine)",
        "11. peers",
    }
    assert "alternate_fake.difference_ms" in report.headlines(data)
    assert "counting" not in report.compare(data, data)


def test_router_report_renders(tmp_path: Path) -> None:
    """The router comparison needs llama-server; its analysis and report run here on made-up samples
    of the shape its run records (shapes only: the numbers mean nothing)."""
    direct = [
        {
            "kind": kind,
            "model": model,
            "status": 200,
            "stop_ms": 0.0 if kind == "cold" else 90.0,
            "spawn_to_healthy_ms": 1200.0 + i,
            "request_ms": 150.0,
            "total_ms": 1400.0 + i,
        }
        for i, (kind, model) in enumerate((("cold", "A"), ("model_switch", "B"), ("model_switch", "A")))
    ]

    def path_round(offset: float) -> dict[str, Any]:
        return {
            "launches": [{"accept_ms": 200.0 + offset, "ready_ms": 202.0 + offset}],
            "switch": [dict(row, total_ms=row["total_ms"] + offset) for row in direct],
            "small": {"path": [50.0 + offset, 51.0], "direct": [49.0, 50.0]},
        }

    params = router.RouterParams(rounds=2, small_pairs=2, launches=0)
    raw = {"direct": direct * 2, "gateway": [path_round(1), path_round(2)], "router": [path_round(3), path_round(4)]}
    result = router._result(params, {"context": 256, "engine_args": [], "presets": {}}, raw)
    for path in ("gateway", "router"):
        assert set(result[path]["switch"]) == {"cold", "model_switch"}
        assert result[path]["switch"]["model_switch"]["samples"] == 4
        assert result[path]["small"]["pairs"] == 4 and result[path]["launch"]["accept_ms"]["n"] == 2
    results = {"router_real": result}
    rows = router.targets(results)
    assert [row["benchmark"] for row in rows] == [router.LABEL] * 4
    assert all(isinstance(row["met"], bool) for row in rows)
    text = router.section(results)
    assert "## 10. llmgw vs llama-server's router mode" in text and "(4) launch" in text
    assert set(router.headlines(results)) >= {"router_real.gateway.launch_ms", "router_real.router.switch_ms"}
    pytest.importorskip("matplotlib")
    assert router.plot(results, tmp_path / "router.png") and (tmp_path / "router.png").stat().st_size > 0
