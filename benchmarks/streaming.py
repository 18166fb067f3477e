"""2. Streaming throughput: one long stream (no token delay) through the gateway vs straight from the engine.

The gateway loads the fake engine once; then each repeat sends the same request to the
gateway and, on another keep-alive connection, straight to that same engine process (order
alternating between repeats). chunks/s = SSE data events / (last byte - request sent).
Added per-chunk latency = (gateway stream time - direct stream time) / chunks. CPU figures
are the gateway's (and the engine's) user+system CPU time spent on one stream, per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks.client import Connection, Response
from benchmarks.common import Ctx, Results, Target, chat
from benchmarks.harness import HOST, GatewayProc, ModelSpec, fake_engine, free_port
from benchmarks.stats import fmt, mid, percentile, spread, table, target

NAMES = ("streaming",)
NEEDS_REAL: tuple[str, ...] = ()
PATH = "/v1/chat/completions"


@dataclass
class StreamParams:
    tokens: int = 5000
    repeats: int = 5


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _one(resp: Response, tokens: int, cpu_gw: float, cpu_engine: float) -> dict[str, Any]:
    gaps = [b - a for a, b in zip(resp.event_times, resp.event_times[1:], strict=False)]
    chunks = resp.events
    return {
        "status": resp.status,
        "done": resp.done,
        "chunks": chunks,
        "ok": resp.status == 200 and resp.done and chunks >= tokens,
        "total_ms": resp.total * 1000,
        "ttft_ms": (resp.ttft or 0.0) * 1000,
        "chunks_per_s": chunks / resp.total if resp.total > 0 else 0.0,
        "gap_p99_us": percentile(gaps, 99) * 1e6 if gaps else 0.0,
        "gap_max_ms": max(gaps) * 1000 if gaps else 0.0,
        "gateway_cpu_us_per_chunk": cpu_gw / max(chunks, 1) * 1e6,
        "engine_cpu_us_per_chunk": cpu_engine / max(chunks, 1) * 1e6,
    }


async def run(ctx: Ctx, name: str, params: StreamParams) -> dict[str, Any]:
    tokens = params.tokens
    context = 1 << max(12, (tokens + 1100).bit_length())  # room for prompt + completion + reserve
    spec = fake_engine(free_port(), context, "S", "--fake-tokens", str(tokens))
    gw = GatewayProc(ctx.workdir, [ModelSpec("S", [spec])], name="gw-stream", profile=ctx.profile_path("stream"))
    body = chat("S", "Tell me a long story.", stream=True, max_tokens=tokens)
    await gw.start()
    try:
        await gw.load("S")
        engine_pid = await gw.engine_pid()
        assert engine_pid is not None
        gw_proc, engine_proc = psutil.Process(gw.proc.pid), psutil.Process(engine_pid)
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
        async with gw.connection() as via, Connection(HOST, spec.port) as direct:
            conns = {"direct": direct, "gateway": via}
            for conn in conns.values():  # warm-up, not recorded
                await conn.request("POST", PATH, dict(body, max_tokens=200), timeout=60, keep_body=False)
            for r in range(params.repeats):
                ctx.log(f"streaming: repeat {r + 1}/{params.repeats}")
                order = ["direct", "gateway"] if r % 2 == 0 else ["gateway", "direct"]
                for path in order:
                    g0, e0 = _cpu(gw_proc), _cpu(engine_proc)
                    resp = await conns[path].request("POST", PATH, body, timeout=300, keep_body=False)
                    runs[path].append(_one(resp, tokens, _cpu(gw_proc) - g0, _cpu(engine_proc) - e0))
    finally:
        await gw.stop()
    pairs = list(zip(runs["direct"], runs["gateway"], strict=True))
    ratio = [g["chunks_per_s"] / d["chunks_per_s"] for d, g in pairs if d["chunks_per_s"]]
    added = [(g["total_ms"] - d["total_ms"]) * 1000 / max(g["chunks"], 1) for d, g in pairs]
    keys = (
        "chunks",
        "total_ms",
        "ttft_ms",
        "chunks_per_s",
        "gap_p99_us",
        "gap_max_ms",
        "gateway_cpu_us_per_chunk",
        "engine_cpu_us_per_chunk",
    )
    return {
        "tokens": tokens,
        "engine_context": context,
        "repeats": params.repeats,
        "all_ok": all(x["ok"] for path in runs.values() for x in path),
        "direct": {k: spread([x[k] for x in runs["direct"]], 1) for k in keys},
        "gateway": {k: spread([x[k] for x in runs["gateway"]], 1) for k in keys},
        "ratio_chunks_per_s": spread(ratio, 3),
        "added_us_per_chunk": spread(added, 1),
        "raw": runs,
    }


# --------------------------------------------------------------------------- report


def targets(results: Results) -> list[Target]:
    st = results["streaming"]
    value = mid(st["ratio_chunks_per_s"])
    return [
        target(
            "2. streaming",
            "chunks/s gateway / direct >= 0.8",
            value,
            value is not None and value >= 0.8 and st["all_ok"],
            fmt(st["ratio_chunks_per_s"], 3),
        )
    ]


def section(results: Results) -> str:
    st = results["streaming"]
    rows = []
    labels = [
        ("chunks", "SSE events", 0),
        ("total_ms", "stream time ms", 1),
        ("chunks_per_s", "chunks/s", 0),
        ("ttft_ms", "time to first token ms", 2),
        ("gap_p99_us", "inter-chunk gap p99 µs", 0),
        ("gap_max_ms", "longest gap ms", 2),
        ("engine_cpu_us_per_chunk", "engine CPU µs/chunk", 1),
        ("gateway_cpu_us_per_chunk", "gateway CPU µs/chunk", 1),
    ]
    for key, label, digits in labels:
        rows.append([label, fmt(st["direct"][key], digits), fmt(st["gateway"][key], digits)])
    rows.append(["**ratio chunks/s (gateway/direct)**", "", fmt(st["ratio_chunks_per_s"], 3)])
    rows.append(["**added per chunk µs**", "", fmt(st["added_us_per_chunk"], 1)])
    return (
        f"## 2. Streaming throughput\n\nOne stream of {st['tokens']} tokens (fake engine, no token delay, context "
        f"{st['engine_context']}), {st['repeats']} repeats, direct and gateway alternating on the same engine "
        "process.\n\n" + table(["", "direct", "gateway"], rows)
    )


def headlines(results: Results) -> dict[str, float | None]:
    st = results["streaming"]
    return {
        "streaming.ratio": st["ratio_chunks_per_s"]["median"],
        "streaming.gateway_chunks_per_s": st["gateway"]["chunks_per_s"]["median"],
        "streaming.added_us_per_chunk": st["added_us_per_chunk"]["median"],
        "streaming.gateway_cpu_us_per_chunk": st["gateway"]["gateway_cpu_us_per_chunk"]["median"],
    }


def plot(results: Results, path: Path) -> bool:
    return False


def blockers(results: Results, row: Target) -> str:
    st = results["streaming"]
    return (
        f" The gateway spends {fmt(st['gateway']['gateway_cpu_us_per_chunk'])} µs of CPU per chunk, the engine "
        f"{fmt(st['gateway']['engine_cpu_us_per_chunk'])} µs; on 2 cores shared by engine, gateway and client "
        "that CPU is throughput."
    )
