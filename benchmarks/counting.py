"""4. Token counting cost per request and its growth with the prompt (real llama-server).

The gateway counts every request's prompt exactly with one engine call
(``POST /v1/chat/completions/input_tokens``, the whole body). Per prompt size:

* ``direct``: that call straight to the engine on a keep-alive connection (the engine's own
  tokenizing and templating time, plus HTTP);
* ``gateway``: a request through the gateway that asks for more completion tokens than any
  variant holds, so the gateway answers 400 ``context_length_exceeded`` right after counting:
  this is the whole gateway path of the count (parse, re-encode, one new connection to the
  engine, the engine's work) without any generation;
* ``gateway_floor``: the same with a one-line prompt (what does not depend on size);
* ``json_ms``: the gateway's own JSON work on that body (``json.loads`` + ``json.dumps``, in
  this process), a part of the above that grows with size.

The variant has a 33792-token context (``-c 33792``; gemma-3 270M trains on 32768 and
llama-server caps the per-slot context there, which the gateway learns from ``/props``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.client import Connection
from benchmarks.common import Ctx, Results, Target, chat, words
from benchmarks.harness import HOST, GatewayProc, ModelSpec, free_port, real_engine
from benchmarks.stats import fmt, ms, spread, table

NAMES = ("counting",)
NEEDS_REAL = ("counting",)
PATH = "/v1/chat/completions"
COUNT_PATH = "/v1/chat/completions/input_tokens"
CONTEXT = 33792


@dataclass
class CountParams:
    sizes: tuple[int, ...] = (1000, 8000, 32000)
    repeats: int = 7


async def run(ctx: Ctx, name: str, params: CountParams) -> dict[str, Any]:
    assert ctx.real is not None
    spec = real_engine(ctx.real, free_port(), CONTEXT)
    # strict_context: a budget no variant holds is refused right after the count (without it the
    # largest variant runs until its context is full, since README's "budgets bigger than any variant").
    gw = GatewayProc(
        ctx.workdir, [ModelSpec("G", [spec])], name="gw-count", profile=ctx.profile_path("count"), strict_context=True
    )
    await gw.start()
    rows: list[dict[str, Any]] = []
    try:
        info = await gw.load("G")
        learned = info["engine"]["context"]
        async with Connection(HOST, spec.port) as direct, gw.connection() as via:

            async def count(text: str) -> int:
                resp = await direct.request("POST", COUNT_PATH, {"messages": [{"role": "user", "content": text}]})
                return int(resp.json()["input_tokens"])

            async def reject(text: str) -> float:
                resp = await via.request("POST", PATH, chat("G", text, max_tokens=10 * CONTEXT), timeout=120)
                error = resp.json().get("error", {})
                if resp.status != 400 or error.get("code") != "context_length_exceeded":
                    raise RuntimeError(f"expected a 400 after counting, got {resp.status} {resp.body[:200]!r}")
                return resp.total

            floor = [ms(await reject("Hi")) for _ in range(3)]  # warm-up
            floor = [ms(await reject("Hi")) for _ in range(params.repeats)]
            for target in params.sizes:
                # Calibrate the word count once so the prompt is `target` tokens (+ the template's few).
                n_words = target
                tokens = await count(words(n_words))
                n_words = max(1, round(n_words * target / tokens))
                text = words(n_words)
                tokens = await count(text)
                body = json.dumps(chat("G", text)).encode()
                direct_ms, gateway_ms, json_ms = [], [], []
                await reject(text)  # warm-up
                for r in range(params.repeats):
                    ctx.log(f"counting: {tokens} tokens, repeat {r + 1}/{params.repeats}")
                    t0 = time.perf_counter()
                    await count(text)
                    direct_ms.append(ms(time.perf_counter() - t0))
                    gateway_ms.append(ms(await reject(text)))
                    t0 = time.perf_counter()
                    json.dumps(json.loads(body))
                    json_ms.append(ms(time.perf_counter() - t0))
                rows.append(
                    {
                        "target_tokens": target,
                        "prompt_tokens": tokens,
                        "body_bytes": len(body),
                        "direct_ms": spread(direct_ms, 2),
                        "gateway_ms": spread(gateway_ms, 2),
                        "gateway_minus_direct_ms": spread(
                            [g - d for g, d in zip(gateway_ms, direct_ms, strict=True)], 2
                        ),
                        "json_ms": spread(json_ms, 3),
                    }
                )
    finally:
        await gw.stop()
    slope = None
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        slope = (
            (last["direct_ms"]["median"] - first["direct_ms"]["median"])
            / (last["prompt_tokens"] - first["prompt_tokens"])
            * 1000
        )
    return {
        "context_flag": CONTEXT,
        "context_learned": learned,
        "repeats": params.repeats,
        "gateway_floor_ms": spread(floor, 2),
        "sizes": rows,
        "direct_ms_per_1k_tokens": round(slope, 3) if slope is not None else None,
        "all_ok": True,
    }


# --------------------------------------------------------------------------- report


def targets(results: Results) -> list[Target]:
    return []  # no target: the figures show what counting costs and how it grows


def section(results: Results) -> str:
    ct = results["counting"]
    rows = []
    for r in ct["sizes"]:
        rows.append(
            [
                r["prompt_tokens"],
                f"{r['body_bytes'] / 1024:.0f} KiB",
                fmt(r["direct_ms"], 2),
                fmt(r["gateway_ms"], 2),
                fmt(r["gateway_minus_direct_ms"], 2),
                fmt(r["json_ms"], 3),
            ]
        )
    return (
        f"## 4. Token counting cost\n\nReal llama-server, one variant `-c {ct['context_flag']}` (the engine "
        f"reports {ct['context_learned']}), {ct['repeats']} repeats. Gateway = a request rejected with 400 right "
        f"after its count (no generation); its floor with a one-line prompt: {fmt(ct['gateway_floor_ms'], 2)} "
        "ms.\n\n"
        + table(
            [
                "prompt tokens",
                "body",
                "direct input_tokens ms",
                "gateway count-and-reject ms",
                "gateway - direct ms",
                "gateway JSON loads+dumps ms",
            ],
            rows,
        )
        + f"\nGrowth of the engine's count: {ct['direct_ms_per_1k_tokens']} ms per 1k tokens.\n"
    )


def headlines(results: Results) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for r in results["counting"]["sizes"]:
        out[f"counting.{r['target_tokens']}.direct_ms"] = r["direct_ms"]["median"]
        out[f"counting.{r['target_tokens']}.gateway_ms"] = r["gateway_ms"]["median"]
    return out


def plot(results: Results, path: Path) -> bool:
    import matplotlib.pyplot as plt

    ct = results["counting"]
    fig, ax = plt.subplots(figsize=(5, 3))
    toks = [r["prompt_tokens"] for r in ct["sizes"]]
    for key, label in (("direct_ms", "direct input_tokens"), ("gateway_ms", "through the gateway")):
        ax.plot(toks, [r[key]["median"] for r in ct["sizes"]], marker="o", label=label)
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("ms per request")
    ax.set_title("exact token count cost (real engine)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def blockers(results: Results, row: Target) -> str:
    return ""
