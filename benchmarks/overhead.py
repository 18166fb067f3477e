"""3. Per-request overhead on a loaded fake engine: small requests via the gateway vs direct.

Each iteration sends, in a rotating order, one of each probe below on keep-alive connections
(one per probe and path), so drift and noise hit both sides alike:

* ``nonstream``: a small chat request (8 tokens, not streamed), total time;
* ``stream_ttft``: the same streamed, time to the first generated text;
* ``count``: what the gateway adds per request to count the prompt exactly: one direct
  ``POST /v1/chat/completions/input_tokens``, on a keep-alive connection (as the gateway's
  engine client sends it) and on a new connection each time (as it did before pooling);
* ``health``: ``GET /health`` (the gateway's own floor: Tornado, no engine involved).

Added = gateway - direct, for the median and for the p99 of each repeat. A final block of
gateway-only requests measures the gateway's CPU time per request.

The fake engine runs with ``OverheadParams.fake_flags``, plus ``--fake-count-process``: it then
answers the count in a process of its own, beside the generation, as llama-server does on its
HTTP threads (the issue's target is set for such an engine). Without it the fake answers the
count and the request one after the other, and that wait lands in the gateway's added latency.
The result says which flags ran.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks.client import Connection, Response, fetch
from benchmarks.common import Ctx, Results, Target, chat
from benchmarks.harness import HOST, GatewayProc, ModelSpec, fake_engine, free_port
from benchmarks.stats import fmt, mid, ms, spread, summary, table, target

NAMES = ("overhead",)
NEEDS_REAL: tuple[str, ...] = ()
PATH = "/v1/chat/completions"
COUNT_PATH = "/v1/chat/completions/input_tokens"
COUNT_THREAD = "--fake-count-process"  # the fake counts beside its generation, as llama-server
TARGET_ADDED_MS = 0.8  # issue 17, with a fake engine that counts on its own thread
TARGET_CPU_MS = 1.5


@dataclass
class OverheadParams:
    requests: int = 300  # per probe and path, per repeat
    repeats: int = 3
    cpu_requests: int = 300
    fake_flags: tuple[str, ...] = ()  # extra fake-engine flags
    count_thread: bool = True  # add --fake-count-process (the fake engine's counting process)


def engine_flags(params: OverheadParams) -> list[str]:
    """The fake engine's extra flags for this run: the plan's, and its counting process."""
    flags = list(params.fake_flags)
    if params.count_thread and COUNT_THREAD not in flags:
        flags.append(COUNT_THREAD)
    return flags


def _check(resp: Response, stream: bool) -> float:
    if resp.status != 200:
        raise RuntimeError(f"request failed: {resp.status} {resp.body[:200]!r}")
    if stream:
        if not resp.done or resp.ttft is None:
            raise RuntimeError("stream ended without text or [DONE]")
        return resp.ttft
    return resp.total


async def run(ctx: Ctx, name: str, params: OverheadParams) -> dict[str, Any]:
    flags = engine_flags(params)
    spec = fake_engine(free_port(), 4096, "O", *flags)
    gw = GatewayProc(ctx.workdir, [ModelSpec("O", [spec])], name="gw-overhead", profile=ctx.profile_path("overhead"))
    small = chat("O", "Hello there, how are you?", max_tokens=8)
    streamed = dict(small, stream=True)
    count_body = {"messages": small["messages"]}
    await gw.start()
    repeats: list[dict[str, Any]] = []
    try:
        await gw.load("O")
        gw_proc = psutil.Process(gw.proc.pid)
        conns = {
            ("nonstream", "gateway"): gw.connection(),
            ("nonstream", "direct"): Connection(HOST, spec.port),
            ("stream_ttft", "gateway"): gw.connection(),
            ("stream_ttft", "direct"): Connection(HOST, spec.port),
            ("count", "direct"): Connection(HOST, spec.port),
            ("health", "gateway"): gw.connection(),
            ("health", "direct"): Connection(HOST, spec.port),
        }

        async def probe(name: str, path: str) -> float:
            conn = conns[(name, path)]
            if name == "nonstream":
                return _check(await conn.request("POST", PATH, small, timeout=30), False)
            if name == "stream_ttft":
                return _check(await conn.request("POST", PATH, streamed, timeout=30), True)
            if name == "count":
                return _check(await conn.request("POST", COUNT_PATH, count_body, timeout=30), False)
            return _check(await conn.request("GET", "/health", timeout=30), False)

        async def count_new_connection() -> float:
            t0 = time.perf_counter()
            resp = await fetch(HOST, spec.port, "POST", COUNT_PATH, count_body, timeout=30)
            _check(resp, False)
            return time.perf_counter() - t0

        probes = [*conns, ("count_new_conn", "direct")]
        try:
            for _ in range(20):  # warm-up
                for name, path in conns:
                    await probe(name, path)
            for r in range(params.repeats):
                ctx.log(f"overhead: repeat {r + 1}/{params.repeats}")
                samples: dict[tuple[str, str], list[float]] = {p: [] for p in probes}
                for i in range(params.requests):
                    k = i % len(probes)
                    for name, path in probes[k:] + probes[:k]:
                        if name == "count_new_conn":
                            samples[(name, path)].append(await count_new_connection())
                        else:
                            samples[(name, path)].append(await probe(name, path))
                repeats.append({f"{n}/{p}": summary([ms(x) for x in v], 4) for (n, p), v in samples.items()})
            # Gateway CPU per request: a block of gateway-only small requests.
            conn = conns[("nonstream", "gateway")]
            c0, t0 = gw_proc.cpu_times(), time.perf_counter()
            for _ in range(params.cpu_requests):
                await probe("nonstream", "gateway")
            c1, wall = gw_proc.cpu_times(), time.perf_counter() - t0
        finally:
            for conn in conns.values():
                await conn.close()
    finally:
        await gw.stop()
    cpu = (c1.user + c1.system - c0.user - c0.system) / params.cpu_requests
    result: dict[str, Any] = {
        "requests_per_repeat": params.requests,
        "repeats": params.repeats,
        "probes": {},
        "fake_flags": flags,
        "count_thread": COUNT_THREAD in flags,
    }
    for key in repeats[0]:
        result["probes"][key] = {
            stat: spread([rep[key][stat] for rep in repeats], 4) for stat in ("median", "p99", "min", "max")
        }
    for name in ("nonstream", "stream_ttft", "health"):
        result[f"added_{name}_ms"] = {
            stat: spread([rep[f"{name}/gateway"][stat] - rep[f"{name}/direct"][stat] for rep in repeats], 4)
            for stat in ("median", "p99")
        }
    result["count_direct_ms"] = result["probes"]["count/direct"]
    result["count_new_conn_ms"] = result["probes"]["count_new_conn/direct"]
    result["gateway_cpu_ms_per_request"] = round(cpu * 1000, 4)
    result["gateway_requests_per_s_sequential"] = round(params.cpu_requests / wall, 1)
    result["all_ok"] = True  # _check raises on any failure
    return result


# --------------------------------------------------------------------------- report


def targets(results: Results) -> list[Target]:
    ov = results["overhead"]
    value = mid(ov["added_nonstream_ms"]["median"])
    cpu = ov["gateway_cpu_ms_per_request"]
    return [
        target(
            "3. overhead",
            f"added median, small non-streaming request <= {TARGET_ADDED_MS:g} ms",
            value,
            value is not None and value <= TARGET_ADDED_MS,
            f"{fmt(ov['added_nonstream_ms']['median'], 2)} ms",
        ),
        target(
            "3. overhead",
            f"gateway CPU per small request <= {TARGET_CPU_MS:g} ms",
            cpu,
            cpu <= TARGET_CPU_MS,
            f"{cpu:.2f} ms",
        ),
    ]


def _engine_note(ov: dict[str, Any]) -> str:
    if "count_thread" not in ov:
        return ""
    if ov["count_thread"]:
        how = (
            "`--fake-count-process`: it answers the count in a process of its own, beside the generation, as "
            "llama-server does"
        )
    else:
        how = (
            "no counting process (run without `--fake-count-process`): it answers the count and the "
            "request one after the other, so that wait is in the added figure"
        )
    flags = " ".join(ov["fake_flags"]) or "none"
    return f" Fake engine: {how} (extra flags: `{flags}`)."


def section(results: Results) -> str:
    ov = results["overhead"]
    p = ov["probes"]
    rows = []
    for name, label in (
        ("nonstream", "small request, not streamed"),
        ("stream_ttft", "streamed: time to first token"),
        ("health", "GET /health (no engine call via gateway)"),
    ):
        d, g = p[f"{name}/direct"], p[f"{name}/gateway"]
        a = ov[f"added_{name}_ms"]
        rows.append(
            [
                label,
                fmt(d["median"], 3),
                fmt(g["median"], 3),
                f"**{fmt(a['median'], 3)}**",
                fmt(d["p99"], 3),
                fmt(g["p99"], 3),
                fmt(a["p99"], 3),
            ]
        )
    rows.append(
        [
            "exact count: direct input_tokens call, keep-alive",
            fmt(p["count/direct"]["median"], 3),
            "",
            "",
            fmt(p["count/direct"]["p99"], 3),
            "",
            "",
        ]
    )
    rows.append(
        [
            "exact count: the same on a new connection (as the gateway did before pooling)",
            fmt(p["count_new_conn/direct"]["median"], 3),
            "",
            "",
            fmt(p["count_new_conn/direct"]["p99"], 3),
            "",
            "",
        ]
    )
    return (
        f"## 3. Per-request overhead\n\nFake engine loaded, {ov['requests_per_repeat']} requests per probe and "
        f"path per repeat, {ov['repeats']} repeats (figures: median [min, max] over the repeats).{_engine_note(ov)}"
        " The same small request on the real engine, against llama-server's router: section 10.\n\n"
        + table(
            [
                "probe",
                "direct median ms",
                "gateway median ms",
                "added median ms",
                "direct p99 ms",
                "gateway p99 ms",
                "added p99 ms",
            ],
            rows,
        )
        + f"\nGateway CPU per small request: **{ov['gateway_cpu_ms_per_request']} ms** "
        f"({ov['gateway_requests_per_s_sequential']} sequential requests/s through the gateway, one client).\n"
    )


def headlines(results: Results) -> dict[str, float | None]:
    ov = results["overhead"]
    out: dict[str, float | None] = {}
    for name in ("nonstream", "stream_ttft", "health"):
        out[f"overhead.added_{name}_median_ms"] = ov[f"added_{name}_ms"]["median"]["median"]
        out[f"overhead.added_{name}_p99_ms"] = ov[f"added_{name}_ms"]["p99"]["median"]
    out["overhead.gateway_cpu_ms_per_request"] = ov["gateway_cpu_ms_per_request"]
    return out


def plot(results: Results, path: Path) -> bool:
    return False


def blockers(results: Results, row: Target) -> str:
    ov = results["overhead"]
    if ov.get("count_thread"):
        engine = "the fake engine counts on a thread of its own, beside the generation."
    else:
        engine = (
            "the fake engine answers it and the request one after the other (llama-server counts on its HTTP "
            "threads, beside the generation)."
        )
    return (
        f" The gateway spends {ov['gateway_cpu_ms_per_request']:.2f} ms of CPU per such request; its floor "
        f"(GET /health) adds {fmt(ov['added_health_ms']['median'], 3)} ms; the exact count it makes per request "
        f"costs the engine {fmt(ov['count_direct_ms']['median'], 3)} ms straight to it on a kept-alive "
        f"connection, as the gateway now sends it; {engine}"
    )
