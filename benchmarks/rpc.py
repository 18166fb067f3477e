"""12. One model across hosts (real engine): llama.cpp RPC workers through the gateway.

gemma-3 270M split over two ``ggml-rpc-server`` workers (``-d CPU -t 1``, weight cache ``-c``),
each supervised by ``python -m llmgw agent``; the gateway starts llama-server with ``--rpc``.
Each worker runs in a network namespace of its own behind a veth link when the benchmark can make
them (root), else on loopback (the report says which). Two figures, side by side in one run:

* **load time, cold vs warm weight cache**: ``POST /load`` after the workers' cache directories
  were emptied (every tensor is sent), then again (tensors over 10 MiB go as hashes and the worker
  reads them from its cache); with namespaces, the bytes sent to the workers too;
* **tokens/s, local vs RPC**: the same greedy ``/completion`` (prompt and ``n_predict``) on a local
  llama-server with the same arguments (talked to directly) and through the gateway on the RPC
  engine; the engine's own ``timings`` give prompt and generation speed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.client import wait_http_ok
from benchmarks.common import Ctx, Results, Target, words
from benchmarks.harness import (
    HOST,
    PYTHON,
    DirectEngine,
    GatewayProc,
    ModelSpec,
    Proc,
    RealFiles,
    free_port,
    real_engine,
)
from benchmarks.stats import fmt, spread, table, target
from fake_engine.configs import lua
from fake_engine.netns import Link, Namespaces, unavailable

NAMES = ("rpc_real",)
NEEDS_REAL = ("rpc_real",)
LABEL = "12. RPC workers (real engine)"
CONTEXT = 2048


@dataclass
class RpcParams:
    rounds: int = 3  # cold load, warm load, and a generation on each path, per round
    tokens: int = 128  # n_predict of the generation
    prompt_words: int = 200


@dataclass
class _Worker:
    name: str
    host: str
    port: int
    agent_port: int
    cache: Path
    proc: Proc
    link: Link | None


class _RpcModel(ModelSpec):
    """A model whose variants run over the named RPC workers."""

    def __init__(self, name: str, variants: list[Any], workers: list[str]) -> None:
        super().__init__(name, variants)
        self.workers = workers

    def table(self) -> dict[str, Any]:
        return {**super().table(), "rpc": list(self.workers)}


def _agent(ctx: Ctx, files: RealFiles, name: str, link: Link | None) -> _Worker:
    host = link.ip if link is not None else HOST
    port, agent_port = free_port(), free_port()
    cache = ctx.workdir / f"rpc-cache-{name}"
    config = {
        "listen": f"{host}:{agent_port}",
        "binary": str(Path(files.binary).parent / "ggml-rpc-server"),
        "env": dict(files.env),
        "cache_dir": str(cache),
        "workers": [{"address": f"{host}:{port}", "devices": ["CPU"], "threads": 1}],
    }
    path = ctx.workdir / f"agent-{name}.lua"
    path.write_text(f"agent = {lua(config)}\n")
    wrap = list(link.wrap()) if link is not None else []
    proc = Proc([*wrap, PYTHON, "-m", "llmgw", "agent", "-c", str(path)], ctx.workdir / f"agent-{name}.log")
    proc.start()
    return _Worker(name, host, port, agent_port, cache, proc, link)


def _clear(cache: Path) -> None:
    """Empty the worker's cache, keeping its directory: the worker makes it once, at its start, and
    later only writes files into it (into a directory gone, silently not at all)."""
    for path in (cache / "rpc").glob("*"):
        path.unlink(missing_ok=True)


def _sent(workers: list[_Worker]) -> int | None:
    if any(w.link is None for w in workers):
        return None
    return sum(w.link.sent_bytes() for w in workers if w.link is not None)


async def _generate(conn: Any, body: dict[str, Any]) -> dict[str, Any]:
    resp = await conn.request("POST", "/completion", body, timeout=300)
    if resp.status != 200:
        raise RuntimeError(f"/completion: {resp.status} {resp.body[:300]!r}")
    data: dict[str, Any] = resp.json()
    return data


async def run(ctx: Ctx, name: str, params: RpcParams) -> dict[str, Any]:
    files = ctx.real
    if files is None:
        raise RuntimeError("needs the real engine")
    why = unavailable()
    net = Namespaces() if why is None else None
    links: list[Link | None] = [net.add(), net.add()] if net is not None else [None, None]
    workers = [_agent(ctx, files, f"w{i}", link) for i, link in enumerate(links, 1)]
    local = DirectEngine(real_engine(files, free_port(), CONTEXT, "-t", "1"), ctx.workdir / "rpc-local.log")
    engine = real_engine(files, free_port(), CONTEXT, "-t", "1")
    rpc_workers = {
        w.name: {"address": f"{w.host}:{w.port}", "agent": f"http://{w.host}:{w.agent_port}"} for w in workers
    }
    gateway = GatewayProc(
        ctx.workdir, [_RpcModel("gemma", [engine], [w.name for w in workers])], name="gw-rpc", rpc_workers=rpc_workers
    )
    body = {"prompt": words(params.prompt_words), "n_predict": params.tokens, "temperature": 0, "cache_prompt": False}
    rows: list[dict[str, Any]] = []
    try:
        for w in workers:
            await wait_http_ok(w.host, w.agent_port, "/status", 60)
        await local.start()
        await gateway.start()
        for r in range(params.rounds):
            row: dict[str, Any] = {}
            for w in workers:
                _clear(w.cache)
            for kind in ("cold", "warm"):
                ctx.log(f"rpc: round {r + 1}/{params.rounds}, {kind} load")
                sent = _sent(workers)
                started = time.perf_counter()
                await gateway.load("gemma")
                row[f"{kind}_load_s"] = time.perf_counter() - started
                after = _sent(workers)
                row[f"{kind}_sent_mib"] = None if sent is None or after is None else (after - sent) / 2**20
                if kind == "cold":
                    await gateway.unload()
            ctx.log(f"rpc: round {r + 1}/{params.rounds}, generation local and over RPC")
            order = ("local", "rpc") if r % 2 == 0 else ("rpc", "local")
            for path in order:
                conn_of = local.connection if path == "local" else gateway.connection
                async with conn_of() as conn:
                    data = await _generate(conn, {**body, **({"model": "gemma"} if path == "rpc" else {})})
                timings = data.get("timings") or {}
                row[f"{path}_gen_tps"] = timings.get("predicted_per_second")
                row[f"{path}_prompt_tps"] = timings.get("prompt_per_second")
                row[f"{path}_text"] = data.get("content", "")
            await gateway.unload()
            rows.append(row)
    finally:
        await gateway.stop()
        await local.proc.stop()
        for w in workers:
            await w.proc.stop(timeout=15, group=False)
        if net is not None:
            net.close()
    keys = [
        "cold_load_s",
        "warm_load_s",
        "cold_sent_mib",
        "warm_sent_mib",
        "local_gen_tps",
        "rpc_gen_tps",
        "local_prompt_tps",
        "rpc_prompt_tps",
    ]
    result: dict[str, Any] = {
        "network": "network namespaces (veth)" if net is not None else f"loopback ({why})",
        "rounds": params.rounds,
        "tokens": params.tokens,
        **{k: spread([row[k] for row in rows if row.get(k) is not None], 2) for k in keys},
        "warm_over_cold": spread([row["warm_load_s"] / row["cold_load_s"] for row in rows], 2),
        "rpc_over_local_tps": spread(
            [row["rpc_gen_tps"] / row["local_gen_tps"] for row in rows if row["rpc_gen_tps"] and row["local_gen_tps"]],
            2,
        ),
        "same_text": all(row["local_text"] == row["rpc_text"] for row in rows),
    }
    return result


# --------------------------------------------------------------------------- report


def targets(results: Results) -> list[Target]:
    result = results["rpc_real"]
    ratio = result["warm_over_cold"]["median"]
    speed = result["rpc_over_local_tps"]["median"]
    return [
        target(
            LABEL,
            "load with the workers' weight cache warm vs cold: faster",
            ratio,
            ratio is not None and ratio < 1,
            f"{fmt(result['warm_load_s'], 2)} s vs {fmt(result['cold_load_s'], 2)} s",
        ),
        target(
            LABEL,
            "generation over two RPC workers vs local: >= 0.8x the tokens/s",
            speed,
            speed is not None and speed >= 0.8,
            f"{fmt(result['rpc_gen_tps'], 1)} vs {fmt(result['local_gen_tps'], 1)} tokens/s",
        ),
    ]


def section(results: Results) -> str:
    result = results["rpc_real"]
    rows = [
        ["load, cold cache (s)", fmt(result["cold_load_s"], 2), "bytes sent (MiB)", fmt(result["cold_sent_mib"], 1)],
        ["load, warm cache (s)", fmt(result["warm_load_s"], 2), "bytes sent (MiB)", fmt(result["warm_sent_mib"], 1)],
        [
            "generation, local (tokens/s)",
            fmt(result["local_gen_tps"], 1),
            "prompt (tokens/s)",
            fmt(result["local_prompt_tps"], 0),
        ],
        [
            "generation, RPC (tokens/s)",
            fmt(result["rpc_gen_tps"], 1),
            "prompt (tokens/s)",
            fmt(result["rpc_prompt_tps"], 0),
        ],
    ]
    same = (
        "the same text"
        if result["same_text"]
        else "different text (the local CPU backend repacks Q4_K weights; RPC workers do not)"
    )
    return (
        "## 12. One model across hosts: llama.cpp RPC (real engine)\n\n"
        f"gemma-3 270M over two `ggml-rpc-server` workers (`-d CPU -t 1 -c`) supervised by `python -m llmgw agent`, "
        f"over {result['network']}; {result['rounds']} round(s): a load with the workers' cache emptied, "
        f"a load with it warm, then {result['tokens']} greedy tokens on a local llama-server (direct) and on the "
        f"RPC engine (through the gateway), order alternating; local and RPC gave {same}.\n\n"
        + table(["figure", "median [min, max]", "", ""], rows)
        + f"\nWarm / cold load time: **{fmt(result['warm_over_cold'], 2)}**; RPC / local generation speed: "
        f"**{fmt(result['rpc_over_local_tps'], 2)}**.\n"
    )


def headlines(results: Results) -> dict[str, float | None]:
    result = results["rpc_real"]
    return {
        "rpc.cold_load_s": result["cold_load_s"]["median"],
        "rpc.warm_load_s": result["warm_load_s"]["median"],
        "rpc.rpc_over_local_tps": result["rpc_over_local_tps"]["median"],
    }


def plot(results: Results, path: Path) -> bool:
    return False


def blockers(results: Results, row: Target) -> str:
    return ""
