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
from pathlib import Path
from typing import Any

from benchmarks.client import Response, fetch
from benchmarks.common import Ctx, Results, Target, chat
from benchmarks.harness import HOST, GatewayProc, ModelSpec, fake_engine, free_port
from benchmarks.stats import fmt, median, mid, spread, table, target

NAMES = ("concurrency",)
NEEDS_REAL: tuple[str, ...] = ()
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
    errors = [
        repr(r) if not isinstance(r, Response) else f"status {r.status}, {r.events} events"
        for r in results
        if not (isinstance(r, Response) and r in ok)
    ]
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


async def run(ctx: Ctx, name: str, params: ConcurrencyParams) -> dict[str, Any]:
    top = max(params.clients)
    spec = fake_engine(
        free_port(),
        1024,
        "P",
        "--fake-tokens",
        str(params.tokens),
        "--fake-token-delay",
        str(params.token_delay),
        parallel=top,
    )
    gw = GatewayProc(
        ctx.workdir, [ModelSpec("P", [spec])], name="gw-concurrency", profile=ctx.profile_path("concurrency")
    )
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
                for path in ["direct", "gateway"] if r % 2 == 0 else ["gateway", "direct"]:
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


# --------------------------------------------------------------------------- report


def targets(results: Results) -> list[Target]:
    cc = results["concurrency"]
    rows = []
    for level in cc["levels"]:
        if level["clients"] == 16:
            value = mid(level["wall_ratio"])
            rows.append(
                target(
                    "5. concurrency",
                    "16 clients: gateway wall <= 1.2 x direct",
                    value,
                    value is not None and value <= 1.2 and level["all_ok"],
                    fmt(level["wall_ratio"], 3),
                )
            )
    failed = [level["clients"] for level in cc["levels"] if not level["all_ok"]]
    rows.append(
        target(
            "5. concurrency",
            "every client of every level succeeds",
            0 if not failed else len(failed),
            not failed,
            "all succeeded" if not failed else f"failures at {failed} clients",
        )
    )
    return rows


def section(results: Results) -> str:
    cc = results["concurrency"]
    rows = []
    for r in cc["levels"]:
        ok = "yes" if r["all_ok"] else f"**no** {r['errors']}"
        rows.append(
            [
                r["clients"],
                ok,
                fmt(r["direct_wall_ms"]),
                fmt(r["gateway_wall_ms"]),
                fmt(r["wall_ratio"], 3),
                fmt(r["direct_chunks_per_s"], 0),
                fmt(r["gateway_chunks_per_s"], 0),
                fmt(r["direct_ttft_ms"], 2),
                fmt(r["gateway_ttft_ms"], 2),
            ]
        )
    m = cc["memory"]
    memory = [
        ["idle, no engine", m.get("idle_no_engine_mb")],
        ["idle, engine loaded", m.get("idle_engine_loaded_mb")],
        [f"under {m.get('load_clients')} streaming clients: median", m.get("median_under_load_mb")],
        [f"under {m.get('load_clients')} streaming clients: peak", m.get("peak_under_load_mb")],
        ["after the load", m.get("after_load_mb")],
    ]
    return (
        f"## 5. Concurrency\n\nFake engine, {cc['tokens']} tokens at {cc['token_delay_s'] * 1000:.0f} ms each, "
        f"{cc['engine_slots']} slots; each client on its own connection, all started at once; {cc['repeats']} "
        "repeats.\n\n"
        + table(
            [
                "clients",
                "all ok",
                "direct wall ms",
                "gateway wall ms",
                "ratio",
                "direct chunks/s",
                "gateway chunks/s",
                "direct TTFT ms (median client)",
                "gateway TTFT ms",
            ],
            rows,
        )
        + "\n## 6. Memory\n\nGateway process RSS (psutil), MB.\n\n"
        + table(["", "RSS MB"], memory)
    )


def headlines(results: Results) -> dict[str, float | None]:
    cc = results["concurrency"]
    out: dict[str, float | None] = {
        f"concurrency.{r['clients']}.wall_ratio": r["wall_ratio"]["median"] for r in cc["levels"]
    }
    out.update({f"memory.{k}": v for k, v in cc["memory"].items() if isinstance(v, float)})
    return out


def plot(results: Results, path: Path) -> bool:
    import matplotlib.pyplot as plt

    levels = results["concurrency"]["levels"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    n = [r["clients"] for r in levels]
    for key, label in (("direct_wall_ms", "direct"), ("gateway_wall_ms", "gateway")):
        med = [r[key]["median"] for r in levels]
        err = [
            [m - r[key]["min"] for m, r in zip(med, levels, strict=True)],
            [r[key]["max"] - m for m, r in zip(med, levels, strict=True)],
        ]
        ax1.errorbar(n, med, yerr=err, marker="o", capsize=3, label=label)
    ax1.set_xlabel("concurrent streaming clients")
    ax1.set_ylabel("wall time ms")
    ax1.legend(fontsize=7)
    ax2.plot(n, [r["wall_ratio"]["median"] for r in levels], marker="o", color="#c44e52")
    ax2.axhline(1.2, ls="--", color="gray", lw=1)
    ax2.text(n[0], 1.21, "target at 16 clients", fontsize=7, color="gray")
    ax2.set_xlabel("concurrent streaming clients")
    ax2.set_ylabel("gateway / direct wall time")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def blockers(results: Results, row: Target) -> str:
    return ""
