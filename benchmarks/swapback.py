"""7. Swap-back (real engine): a long conversation comes back to its model after a switch.

Model A (gemma-3 270M, context 4096) holds a conversation of about 3,000 tokens; a request to
model B makes the engine switch; then A gets the same conversation plus its answer and one new
turn. The time to the first token of that last request is the figure. Three paths, the same
requests, in the same run (order rotated between rounds):

* gateway without slot cache: A's new engine processes the whole conversation again;
* gateway with ``slot_cache``: A's slot is saved when it stops and restored before the request;
* llama-server's router (``--models-preset``, ``--models-max 1``): its own swap, no slot cache.

Every path runs A with ``--swa-full`` (gemma-3 has sliding-window layers: without it llama-server
does not reuse a restored slot) and ``-t 1`` (see README). Each round uses a conversation of its
own (a tag in its first words), so nothing carries over from an earlier round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.client import Connection, Response
from benchmarks.common import Ctx, Results, Target, words
from benchmarks.harness import GatewayProc, ModelSpec, RouterProc, fake_engine, free_port, real_engine
from benchmarks.stats import fmt, ms, spread, table, target

NAMES = ("swapback",)
NEEDS_REAL = ("swapback",)  # the smoke test runs a fake-engine version through run() directly
PATH = "/v1/chat/completions"
LABEL = "9. swap-back (real engine)"  # in the targets table
PATHS = ("no_cache", "slot_cache", "router")
LABELS = {"no_cache": "gateway, no slot cache", "slot_cache": "gateway, slot cache", "router": "llama-server router"}
CONTEXT = 4096


@dataclass
class SwapbackParams:
    rounds: int = 3
    turns: int = 12  # user/assistant pairs in the conversation (~250 tokens each)
    router: bool = True
    engine: str = "real"  # "fake": the smoke test's version (fake engines, no router)


def conversation(tag: str, turns: int) -> list[dict[str, str]]:
    """~250 tokens per turn; the tag opens it, so two rounds share no prefix worth restoring."""
    messages = [{"role": "system", "content": f"{tag}: you are a careful assistant. Answer briefly."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Part {i} of the notes ({tag}): {words(150, offset=7 * i)}"})
        messages.append({"role": "assistant", "content": f"Noted part {i}. {words(30, offset=3 * i)}"})
    messages.append({"role": "user", "content": "Summarize the notes in one sentence."})
    return messages


def _body(model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}


def _answer(resp: Response) -> str:
    text = []
    for block in resp.body.split(b"\n\n"):
        if block.startswith(b"data: {"):
            choices = json.loads(block[6:]).get("choices") or [{}]
            text.append((choices[0].get("delta") or {}).get("content") or "")
    return "".join(text)


def _timings(resp: Response) -> dict[str, Any]:
    for block in reversed(resp.body.split(b"\n\n")):
        if block.startswith(b"data: {") and b'"timings"' in block:
            return dict(json.loads(block[6:]).get("timings") or {})
    return {}


async def _round(conn: Connection, tag: str, turns: int, names: dict[str, str]) -> dict[str, Any]:
    """A (cold), B (the switch), A again with one more turn; times and the engine's timings."""
    messages = conversation(tag, turns)
    first = await conn.request("POST", PATH, _body(names["A"], messages, 8), timeout=900)
    if first.status != 200:
        raise RuntimeError(f"first request to A: {first.status} {first.body[:300]!r}")
    other = await conn.request("POST", PATH, _body(names["B"], [{"role": "user", "content": "Hello"}], 4), timeout=300)
    if other.status != 200:
        raise RuntimeError(f"request to B: {other.status} {other.body[:300]!r}")
    messages += [{"role": "assistant", "content": _answer(first)}, {"role": "user", "content": "And in one word?"}]
    back = await conn.request("POST", PATH, _body(names["A"], messages, 8), timeout=900)
    if back.status != 200 or back.ttft is None:
        raise RuntimeError(f"swap-back request to A: {back.status} {back.body[:300]!r}")
    cold, warm = _timings(first), _timings(back)
    return {
        "cold_ttft_ms": ms(first.ttft or first.total),
        "switch_ms": ms(other.total),
        "swapback_ttft_ms": ms(back.ttft),
        "prompt_tokens": (warm.get("cache_n") or 0) + (warm.get("prompt_n") or 0),
        "cold_prompt_tokens": (cold.get("cache_n") or 0) + (cold.get("prompt_n") or 0),
        "swapback_cache_n": warm.get("cache_n"),
        "swapback_prompt_n": warm.get("prompt_n"),
    }


async def run(ctx: Ctx, name: str, params: SwapbackParams) -> dict[str, Any]:
    files = ctx.real
    if files is None and params.engine == "real":
        raise RuntimeError("needs the real engine")

    def models() -> list[ModelSpec]:
        if files is None or params.engine == "fake":
            return [
                ModelSpec("A", [fake_engine(free_port(), CONTEXT, "A")]),
                ModelSpec("B", [fake_engine(free_port(), 512, "B")]),
            ]
        a = real_engine(files, free_port(), CONTEXT, "-t", "1", "--swa-full")
        b = real_engine(files, free_port(), 512, "-t", "1")
        return [ModelSpec("A", [a]), ModelSpec("B", [b])]

    gateways = {
        "no_cache": GatewayProc(ctx.workdir, models(), name="gw-swapback-plain"),
        "slot_cache": GatewayProc(
            ctx.workdir,
            models(),
            name="gw-swapback-cache",
            slot_cache={"dir": str(ctx.workdir / "slots"), "max_mb": 1024},
        ),
    }
    router = None
    if files is not None and params.router and params.engine == "real":
        router = RouterProc(
            ctx.workdir,
            files,
            {
                "A": {"ctx-size": CONTEXT, "parallel": 1, "threads": 1, "swa-full": "true"},
                "B": {"ctx-size": 512, "parallel": 1, "threads": 1},
            },
            name="swapback-router",
        )
    rows: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS if path != "router" or router}
    try:
        for gw in gateways.values():
            await gw.start()
        if router is not None:
            await router.start()
        for r in range(params.rounds):
            order = list(rows)[r % len(rows) :] + list(rows)[: r % len(rows)]
            for path in order:
                ctx.log(f"swapback: round {r + 1}/{params.rounds}, {LABELS[path]}")
                tag = f"Round {r} {path}"
                if path == "router":
                    assert router is not None
                    async with router.connection() as conn:
                        rows[path].append(await _round(conn, tag, params.turns, {"A": "A", "B": "B"}))
                else:
                    gw = gateways[path]
                    async with gw.connection() as conn:
                        rows[path].append(await _round(conn, tag, params.turns, {"A": "A", "B": "B"}))
                    await gw.unload()  # the next path starts from no engine at all
    finally:
        for gw in gateways.values():
            await gw.stop()
        if router is not None:
            await router.stop()
    keys = ("cold_ttft_ms", "switch_ms", "swapback_ttft_ms", "prompt_tokens", "swapback_cache_n", "swapback_prompt_n")
    result: dict[str, Any] = {
        "engine": params.engine,
        "rounds": params.rounds,
        "context": CONTEXT,
        "paths": {
            path: {k: spread([row[k] for row in data if row[k] is not None], 1) for k in keys}
            for path, data in rows.items()
        },
        "raw": rows,
    }
    speedup = [
        p["swapback_ttft_ms"] / c["swapback_ttft_ms"]
        for p, c in zip(rows["no_cache"], rows["slot_cache"], strict=True)
        if c["swapback_ttft_ms"] > 0
    ]
    result["speedup_vs_no_cache"] = spread(speedup, 2)
    if "router" in rows:
        result["speedup_vs_router"] = spread(
            [
                p["swapback_ttft_ms"] / c["swapback_ttft_ms"]
                for p, c in zip(rows["router"], rows["slot_cache"], strict=True)
                if c["swapback_ttft_ms"] > 0
            ],
            2,
        )
    return result


# --------------------------------------------------------------------------- report


def targets(results: Results) -> list[Target]:
    result = results["swapback"]
    value = result["speedup_vs_no_cache"]["median"]
    cache = result["paths"]["slot_cache"]["swapback_ttft_ms"]
    plain = result["paths"]["no_cache"]["swapback_ttft_ms"]
    shown = f"{fmt(result['speedup_vs_no_cache'], 1)}x ({fmt(cache, 0)} ms vs {fmt(plain, 0)} ms)"
    return [
        target(
            LABEL,
            "swap-back time to first token, slot cache vs none: >= 5x faster",
            value,
            value is not None and value >= 5,
            shown,
        )
    ]


def section(results: Results) -> str:
    result = results["swapback"]
    rows = []
    for path, data in result["paths"].items():
        rows.append(
            [
                LABELS[path],
                fmt(data["prompt_tokens"], 0),
                fmt(data["cold_ttft_ms"], 0),
                fmt(data["switch_ms"], 0),
                f"**{fmt(data['swapback_ttft_ms'], 0)}**",
                fmt(data["swapback_cache_n"], 0),
                fmt(data["swapback_prompt_n"], 0),
            ]
        )
    out = (
        f"## 9. Swap-back with the slot cache (real engine)\n\ngemma-3 270M, model A with context "
        f"{result['context']} and `--swa-full`, `-t 1`; {result['rounds']} round(s), each: A's conversation (cold), "
        "a request to B (the switch, A's slot saved on the cached path), then A's conversation plus one turn (time "
        "to first token below). cache_n / prompt_n: the engine's own timings of that last request (tokens reused / "
        "processed).\n\n"
        + table(
            [
                "path",
                "prompt tokens",
                "first request TTFT ms (cold)",
                "switch to B ms",
                "swap-back TTFT ms",
                "cache_n",
                "prompt_n",
            ],
            rows,
        )
    )
    out += f"\nSwap-back TTFT without the slot cache / with it: **{fmt(result['speedup_vs_no_cache'], 1)}x**"
    if "speedup_vs_router" in result:
        out += f"; router / gateway with the slot cache: **{fmt(result['speedup_vs_router'], 1)}x**"
    return out + ".\n"


def headlines(results: Results) -> dict[str, float | None]:
    result = results["swapback"]
    out = {"swapback.speedup_vs_no_cache": result["speedup_vs_no_cache"]["median"]}
    for path, data in result["paths"].items():
        out[f"swapback.{path}.swapback_ttft_ms"] = data["swapback_ttft_ms"]["median"]
    return out


def plot(results: Results, path: Path) -> bool:
    return False


def blockers(results: Results, row: Target) -> str:
    return ""
