"""2b. Streaming from a source faster than the gateway: 10,000 chunks, gateway vs direct.

The fake engine produces 20-40k chunks/s here, slower than the gateway, so its stream measures
the engine. ``fast_source.py`` writes the same SSE shape (one chunk and one write per event, the
model named by its path so the gateway has names to rewrite) at ~250k chunks/s. The gateway
loads it as a model's engine; each repeat streams once straight from it and once through the
gateway (order alternating), on keep-alive connections. chunks/s = SSE data events / (last byte
- request sent); CPU per chunk = the gateway's user+system CPU over the stream / chunks.

Also: how fast a client's hang-up reaches the engine (the source notes when its connection
closes), since the engine connection is now pooled and a dropped client must still end it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks.client import Connection
from benchmarks.common import Ctx, Results, Target, chat
from benchmarks.harness import HOST, PYTHON, EngineSpec, GatewayProc, ModelSpec, free_port
from benchmarks.stats import fmt, spread, table, target

NAMES = ("stream_fast",)
NEEDS_REAL: tuple[str, ...] = ()
PATH = "/v1/chat/completions"
SOURCE = str(Path(__file__).resolve().parent / "fast_source.py")
LABEL = "2b. streaming (fast source)"  # in the targets table


@dataclass
class FastStreamParams:
    chunks: int = 10000
    repeats: int = 15
    hangups: int = 5  # client hang-ups mid-stream, timed to the engine seeing its connection close


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _closes(events: Path) -> list[float]:
    """When the source saw connections close mid-stream (time.time())."""
    lines = events.read_text().splitlines() if events.exists() else []
    return [json.loads(line)["t"] for line in lines if '"closed"' in line]


async def _hangup(gw: GatewayProc, body: dict[str, Any], events: Path) -> float:
    """Read the head and a few events of a slow stream, hang up; ms until the source saw its close."""
    before = len(_closes(events))
    reader, writer = await asyncio.open_connection(HOST, gw.port)
    payload = json.dumps(dict(body, fast_delay=0.01)).encode()
    writer.write(
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await asyncio.wait_for(reader.readuntil(b"data:"), 30)
    await asyncio.wait_for(reader.readuntil(b"data:"), 30)
    t0 = time.time()
    writer.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        closed = _closes(events)[before:]
        if closed:
            return (closed[0] - t0) * 1000
        await asyncio.sleep(0.005)
    raise RuntimeError("the source never saw the client's hang-up")


async def run(ctx: Ctx, name: str, params: FastStreamParams) -> dict[str, Any]:
    port = free_port()
    events = ctx.workdir / "fast-source-events.jsonl"
    spec = EngineSpec(
        PYTHON,
        [
            SOURCE,
            "--host",
            HOST,
            "--port",
            str(port),
            "--chunks",
            str(params.chunks),
            "-c",
            "16384",
            "-m",
            "/models/fast-source.gguf",
            "--events",
            str(events),
        ],
        16384,
        port,
    )
    gw = GatewayProc(
        ctx.workdir, [ModelSpec("F", [spec])], name="gw-stream-fast", profile=ctx.profile_path("stream-fast")
    )
    body = chat("F", "Tell me a long story.", stream=True, max_tokens=params.chunks)
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
    hangups: list[float] = []
    await gw.start()
    try:
        await gw.load("F")
        gw_proc = psutil.Process(gw.proc.pid)
        async with gw.connection() as via, Connection(HOST, port) as direct:
            conns = {"direct": direct, "gateway": via}
            for conn in conns.values():  # warm-up, not recorded
                await conn.request("POST", PATH, body, timeout=60, keep_body=False)
            for r in range(params.repeats):
                ctx.log(f"stream_fast: repeat {r + 1}/{params.repeats}")
                for path in ["direct", "gateway"] if r % 2 == 0 else ["gateway", "direct"]:
                    c0 = _cpu(gw_proc)
                    resp = await conns[path].request("POST", PATH, body, timeout=120, keep_body=False)
                    cpu = _cpu(gw_proc) - c0
                    runs[path].append(
                        {
                            "ok": resp.status == 200 and resp.done and resp.events >= params.chunks,
                            "chunks": resp.events,
                            "total_ms": resp.total * 1000,
                            "chunks_per_s": resp.events / resp.total if resp.total > 0 else 0.0,
                            "gateway_cpu_us_per_chunk": cpu / max(resp.events, 1) * 1e6,
                        }
                    )
        for _ in range(params.hangups):
            hangups.append(await _hangup(gw, body, events))
    finally:
        await gw.stop()
    pairs = list(zip(runs["direct"], runs["gateway"], strict=True))
    ratio = [g["chunks_per_s"] / d["chunks_per_s"] for d, g in pairs if d["chunks_per_s"]]
    keys = ("chunks", "total_ms", "chunks_per_s", "gateway_cpu_us_per_chunk")
    return {
        "chunks": params.chunks,
        "repeats": params.repeats,
        "all_ok": all(x["ok"] for path in runs.values() for x in path),
        "direct": {k: spread([x[k] for x in runs["direct"]], 1) for k in keys},
        "gateway": {k: spread([x[k] for x in runs["gateway"]], 1) for k in keys},
        "ratio_chunks_per_s": spread(ratio, 3),
        "hangup_to_engine_ms": spread(hangups, 1),
        "raw": runs,
    }


# --------------------------------------------------------------------------- report


def targets(results: Results) -> list[Target]:
    result = results["stream_fast"]
    ratio = result["ratio_chunks_per_s"]["median"]
    cpu = result["gateway"]["gateway_cpu_us_per_chunk"]["median"]
    return [
        target(
            LABEL,
            f"{result['chunks']}-chunk stream: chunks/s gateway / direct >= 0.9",
            ratio,
            ratio is not None and ratio >= 0.9 and result["all_ok"],
            fmt(result["ratio_chunks_per_s"], 3),
        ),
        target(
            LABEL,
            "gateway CPU per chunk <= 8 µs",
            cpu,
            cpu is not None and cpu <= 8,
            f"{fmt(result['gateway']['gateway_cpu_us_per_chunk'])} µs",
        ),
    ]


def section(results: Results) -> str:
    result = results["stream_fast"]
    rows = []
    labels = (
        ("chunks", "SSE events", 0),
        ("total_ms", "stream time ms", 1),
        ("chunks_per_s", "chunks/s", 0),
        ("gateway_cpu_us_per_chunk", "gateway CPU µs/chunk", 1),
    )
    for key, label, digits in labels:
        rows.append([label, fmt(result["direct"][key], digits), fmt(result["gateway"][key], digits)])
    rows.append(["**ratio chunks/s (gateway/direct)**", "", fmt(result["ratio_chunks_per_s"], 3)])
    rows.append(["client hang-up to engine connection closed ms", "", fmt(result["hangup_to_engine_ms"], 1)])
    return (
        f"## 2b. Streaming, source faster than the gateway\n\nOne stream of {result['chunks']} chunks from "
        f"`benchmarks/fast_source.py` (pre-built events, one write per event, faster than the gateway), "
        f"{result['repeats']} repeats, direct and gateway alternating on the same source process. The hang-up "
        "row: a client leaves a (slowed) stream; time until the source sees its connection closed.\n\n"
        + table(["", "direct", "gateway"], rows)
    )


def headlines(results: Results) -> dict[str, float | None]:
    result = results["stream_fast"]
    return {
        "stream_fast.ratio": result["ratio_chunks_per_s"]["median"],
        "stream_fast.gateway_cpu_us_per_chunk": result["gateway"]["gateway_cpu_us_per_chunk"]["median"],
        "stream_fast.hangup_to_engine_ms": result["hangup_to_engine_ms"]["median"],
    }


def plot(results: Results, path: Path) -> bool:
    return False


def blockers(results: Results, row: Target) -> str:
    return ""
