"""5. Concurrency and 6. memory: N concurrent streaming clients on a loaded model, gateway vs direct.

The fake engine generates ``tokens`` tokens at ``token_delay`` each with enough slots
(``-np``) for every client. A wave = N clients, each on a connection of its own, all started
at once; wall time runs until the last one has its ``[DONE]``. The same wave goes straight to
the engine and through the gateway (order alternating between repeats). Ratio = gateway wall
/ direct wall. The gateway's RSS (psutil) is sampled idle and every 20 ms during its waves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.client import Response, fetch
from benchmarks.common import Ctx, chat
from benchmarks.harness import HOST, GatewayProc, ModelSpec, fake_engine, free_port
from benchmarks.stats import median, spread

PATH = "/v1/chat/completions"
MB = 1 << 20


@dataclass
class ConcurrencyParams:
    clients: tuple[int, ...] = (1, 8, 16, 32, 64)
    tokens: int = 200
    token_delay: float = 0.005
    repeats: int = 3


async def _wave(port: int, n: int, body: dict[str, Any], tokens: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *[fetch(HOST, port, "POST", PATH, body, timeout=120, keep_body=False) for _ in range(n)],
        return_exceptions=True,
    )
    wall = time.perf_counter() - t0
    ok = [r for r in results if isinstance(r, Response) and r.status == 200 and r.done and r.events >= tokens]
    errors = [repr(r) if not isinstance(r, Response) else f"status {r.status}, {r.events} events" for r in results
              if not (isinstance(r, Response) and r in ok)]
    ttfts = [r.ttft * 1000 for r in ok if r.ttft is not None]
    return {
        "clients": n,
        "ok": len(ok),
        "failed": n - len(ok),
        "errors": errors[:3],
        "wall_ms": wall * 1000,
        "chunks_per_s": sum(r.events for r in ok) / wall,
        "ttft_median_ms": median(ttfts),
        "ttft_max_ms": max(ttfts) if ttfts else None,
    }


async def run_concurrency(ctx: Ctx, params: ConcurrencyParams) -> dict[str, Any]:
    top = max(params.clients)
    spec = fake_engine(
        free_port(), 1024, "P", "--fake-tokens", str(params.tokens), "--fake-token-delay", str(params.token_delay),
        parallel=top,
    )
    gw = GatewayProc(ctx.workdir, [ModelSpec("P", [spec])], name="gw-concurrency",
                     profile=ctx.profile_path("concurrency"))
    body = chat("P", "Stream something.", stream=True, max_tokens=params.tokens)
    levels: dict[int, dict[str, list[dict[str, Any]]]] = {n: {"direct": [], "gateway": []} for n in params.clients}
    memory: dict[str, Any] = {}
    samples: list[int] = []
    sampling = False

    async def sampler() -> None:
        while True:
            if sampling:
                with contextlib.suppress(Exception):
                    samples.append(gw.rss())
            await asyncio.sleep(0.02)

    await gw.start()
    sampler_task = asyncio.ensure_future(sampler())
    try:
        await asyncio.sleep(0.5)
        memory["idle_no_engine_mb"] = gw.rss() / MB
        await gw.load("P")
        await _wave(gw.port, 2, body, params.tokens)  # warm-up
        await _wave(spec.port, 2, body, params.tokens)
        await asyncio.sleep(0.2)
        memory["idle_engine_loaded_mb"] = gw.rss() / MB
        for n in params.clients:
            for r in range(params.repeats):
                ctx.log(f"concurrency: {n} clients, repeat {r + 1}/{params.repeats}")
                for path in (["direct", "gateway"] if r % 2 == 0 else ["gateway", "direct"]):
                    port = gw.port if path == "gateway" else spec.port
                    sampling = path == "gateway" and n == top
                    levels[n][path].append(await _wave(port, n, body, params.tokens))
                    sampling = False
        await asyncio.sleep(0.5)
        memory["after_load_mb"] = gw.rss() / MB
    finally:
        sampler_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler_task
        await gw.stop()
    memory["peak_under_load_mb"] = max(samples) / MB if samples else None
    memory["median_under_load_mb"] = median(samples) / MB if samples else None
    memory["load_clients"] = top
    memory = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in memory.items()}
    table = []
    for n, runs in levels.items():
        ratios = [g["wall_ms"] / d["wall_ms"] for d, g in zip(runs["direct"], runs["gateway"], strict=True)]
        table.append(
            {
                "clients": n,
                "all_ok": all(x["failed"] == 0 for p in runs.values() for x in p),
                "errors": [e for p in runs.values() for x in p for e in x["errors"]][:3],
                "direct_wall_ms": spread([x["wall_ms"] for x in runs["direct"]], 1),
                "gateway_wall_ms": spread([x["wall_ms"] for x in runs["gateway"]], 1),
                "wall_ratio": spread(ratios, 3),
                "direct_chunks_per_s": spread([x["chunks_per_s"] for x in runs["direct"]], 0),
                "gateway_chunks_per_s": spread([x["chunks_per_s"] for x in runs["gateway"]], 0),
                "direct_ttft_ms": spread([x["ttft_median_ms"] for x in runs["direct"]], 2),
                "gateway_ttft_ms": spread([x["ttft_median_ms"] for x in runs["gateway"]], 2),
            }
        )
    return {
        "tokens": params.tokens,
        "token_delay_s": params.token_delay,
        "engine_slots": top,
        "repeats": params.repeats,
        "levels": table,
        "memory": memory,
        "all_ok": all(row["all_ok"] for row in table),
    }
