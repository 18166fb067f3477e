"""10. llmgw vs llama-server's router mode (real engine): switch, cold start, small request, launch.

The same llama-server binary and gguf on every path, one engine process at a time. Each round runs
three paths, one after the other, order rotated between rounds:

* direct: by hand, as the switch benchmark (1) does it: A cold (spawn, poll ``/health`` every 5 ms,
  request), B (stop A, spawn B, ...), A again; stop, spawn-to-healthy and first request timed;
* gateway: ``python -m llmgw -c cfg.lua`` (models A and B, one variant each, the arguments used by
  hand), launched afresh and timed from the spawn to its port accepting connections and to
  ``GET /health`` answering; then the requests A (cold: the first one the fresh gateway gets), B,
  A; then small requests to A, each paired with the same request straight to A's engine process;
* router: ``llama-server --models-preset`` (sections A and B with the same settings,
  ``--models-max 1``), launched afresh and timed the same way; the same requests, then small pairs
  against the engine process the router runs for A (its port from ``/v1/models``).

Before the rounds, `launches` launch-only samples per path and round are taken the same way (spawn,
time, stop), plus one of each and one engine start that are not recorded (they warm the page cache).

Overhead of a switch or a cold request = its latency - median direct spawn-to-healthy - median direct
first request (section 1's definition); small-request added latency = median through the path - median
straight to the same engine process, per round.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import switch
from benchmarks.client import Connection
from benchmarks.common import Ctx, Results, Target, chat
from benchmarks.harness import HOST, DirectEngine, GatewayProc, ModelSpec, RealFiles, RouterProc
from benchmarks.stats import fmt, median, mid, ms, spread, table, target

NAMES = ("router_real",)
NEEDS_REAL = ("router_real",)
LABEL = "10. vs router (real engine)"  # in the targets table
PATHS = ("gateway", "router")
PATH_LABEL = {"direct": "direct (by hand)", "gateway": "llmgw", "router": "llama-server router"}
LAUNCH_TARGET_MS = 100.0


@dataclass
class RouterParams:
    rounds: int = 5
    small_pairs: int = 20  # small requests per path and round, each paired with one straight to the engine
    launches: int = 2  # launch-only samples per path and round (each phase's own launch is one more)


def _presets(models: list[ModelSpec]) -> dict[str, dict[str, Any]]:
    """The router's INI sections: the same context, slots and threads as the engines started by hand."""
    out = {}
    for model in models:
        args = model.variants[0].args
        out[model.name] = {"ctx-size": args[args.index("-c") + 1], "parallel": 1, "threads": 1}
    return out


async def _pairs(via: Connection, direct: Connection, body: dict[str, Any], n: int) -> dict[str, list[float]]:
    """``n`` small requests through ``via``, each paired with the same straight to the engine (order flipped)."""
    out: dict[str, list[float]] = {"path": [], "direct": []}
    for i in range(n + 2):  # the first two warm both connections up and are not kept
        order = (("path", via), ("direct", direct)) if i % 2 == 0 else (("direct", direct), ("path", via))
        for key, conn in order:
            resp = await conn.request("POST", "/v1/chat/completions", body, timeout=120)
            if resp.status != 200:
                raise RuntimeError(f"small request ({key}): {resp.status} {resp.body[:200]!r}")
            if i >= 2:
                out[key].append(ms(resp.total))
    return out


class _Paths:
    """One run's three paths over the same models and steps."""

    def __init__(self, ctx: Ctx, files: RealFiles, params: RouterParams) -> None:
        self.ctx, self.files, self.params = ctx, files, params
        models, alternation, _, setup = switch.setup(ctx, "real")
        self.models = models[:2]  # A and B
        self.steps = alternation  # A (cold), B, A
        self.setup = {
            "context": setup["contexts"][0],
            "engine_args": setup["engine_args"]["A"],
            "presets": _presets(self.models),
        }
        self.body = chat("A", "Say hello.", max_tokens=1, temperature=0)
        self.count = 0

    def gateway(self, tag: str) -> GatewayProc:
        self.count += 1
        return GatewayProc(
            self.ctx.workdir,
            self.models,
            name=f"gw-router-cmp-{tag}-{self.count}",
            profile=self.ctx.profile_path(f"router-cmp-{tag}-{self.count}"),
        )

    def router(self, tag: str) -> RouterProc:
        self.count += 1
        return RouterProc(self.ctx.workdir, self.files, self.setup["presets"], name=f"router-cmp-{tag}-{self.count}")

    async def launches(self, path: str, n: int) -> list[dict[str, float]]:
        """``n`` launch-only samples: spawn, time to accepting and to /health, stop."""
        out = []
        for _ in range(n):
            proc = self.gateway("launch") if path == "gateway" else self.router("launch")
            try:
                out.append(await proc.launch())
            finally:
                await proc.stop()
        return out

    async def warm_up(self) -> None:
        """One launch of each and one engine start, not recorded: binaries, model and bytecode in the page cache."""
        for path in PATHS:
            await self.launches(path, 1)
        engine = DirectEngine(self.models[0].variants[0], self.ctx.workdir / "router-cmp-warm-up.log")
        await engine.start()
        await engine.stop()

    async def via_gateway(self, r: int) -> dict[str, Any]:
        launches = await self.launches("gateway", self.params.launches)
        gw = self.gateway(f"round{r}")
        launches.append(await gw.launch())
        try:
            async with gw.connection() as conn, Connection(HOST, self.models[0].variants[0].port) as direct:
                rows = await switch.run_via(conn, self.steps)
                small = await _pairs(conn, direct, self.body, self.params.small_pairs)
        finally:
            await gw.stop()
        logged = switch.gateway_log_breakdown(gw.proc.log_path)[: len(rows)]
        if len(logged) == len(rows):
            for row, entry in zip(rows, logged, strict=True):
                row["log"] = entry
        return {"launches": launches, "switch": rows, "small": small}

    async def via_router(self, r: int) -> dict[str, Any]:
        launches = await self.launches("router", self.params.launches)
        rt = self.router(f"round{r}")
        launches.append(await rt.launch())
        try:
            async with rt.connection() as conn:
                rows = await switch.run_via(conn, self.steps)
                async with Connection(HOST, await rt.child_port("A")) as direct:
                    small = await _pairs(conn, direct, self.body, self.params.small_pairs)
        finally:
            await rt.stop()
        # The router's log carries its children's lines, each with the child's own clock: the load
        # time of each engine it started, in order (one start per step).
        ready = router_engine_ready_ms(rt.proc.log_path)
        if len(ready) >= len(rows):
            for row, ms_ in zip(rows, ready, strict=False):
                row["engine_ready_ms"] = ms_
        return {"launches": launches, "switch": rows, "small": small}


async def run(ctx: Ctx, name: str, params: RouterParams) -> dict[str, Any]:
    if ctx.real is None:
        raise RuntimeError("needs the real engine")
    paths = _Paths(ctx, ctx.real, params)
    raw: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": [], "router": []}
    t0 = time.monotonic()
    await paths.warm_up()
    ctx.log(f"router: warm-up {time.monotonic() - t0:.1f} s")
    for r in range(params.rounds):
        order = ["direct", *PATHS]
        order = order[r % 3 :] + order[: r % 3]
        ctx.log(f"router: round {r + 1}/{params.rounds} ({', '.join(order)})")
        for path in order:
            if path == "direct":
                raw["direct"] += await switch.run_direct(ctx, paths.steps, f"router-cmp-{r}")
            elif path == "gateway":
                raw["gateway"].append(await paths.via_gateway(r))
            else:
                raw["router"].append(await paths.via_router(r))
    return _result(params, paths.setup, raw)


def router_engine_ready_ms(log: Path) -> list[float]:
    """When each engine the router started said it listens, by that engine's own clock, in order."""
    ready = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("[") and (found := switch.engine_listening_ms(line)) is not None:
            ready.append(found)
    return ready


def beyond_load(direct: list[dict[str, Any]], rows: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    """A switch's cost beyond the new engine's own load (by its log clock) and the first request's
    direct time: the orchestration, the old engine's stop included. The engine's load time varies
    by hundreds of ms from one start to the next on this machine; this figure leaves that noise
    out of the comparison, on every path alike."""
    d = [r for r in direct if r["kind"] == kind]
    v = [r for r in rows if r["kind"] == kind]
    ready = [r.get("engine_ready_ms", r.get("log", {}).get("engine_ready_ms")) for r in v]
    if not d or not v or any(x is None for x in ready):
        return None
    request = median([r["request_ms"] for r in d])
    return spread([r["total_ms"] - x - request for r, x in zip(v, ready, strict=True)], 1)


def _result(params: RouterParams, setup: dict[str, Any], raw: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    direct = raw["direct"]
    result: dict[str, Any] = {
        "rounds": params.rounds,
        "small_pairs": params.small_pairs,
        "setup": setup,
        "direct": switch.direct_summary(direct),
        "raw": raw,
    }
    for path in PATHS:
        rounds = raw[path]
        launches = [x for rnd in rounds for x in rnd["launches"]]
        added = [median(rnd["small"]["path"]) - median(rnd["small"]["direct"]) for rnd in rounds]
        rows = [row for rnd in rounds for row in rnd["switch"]]
        result[path] = {
            "switch": switch.analyse(direct, rows),
            "beyond_load_ms": {kind: beyond_load(direct, rows, kind) for kind in ("model_switch", "cold")},
            "small": {
                "added_ms": spread(added, 2),
                "path_ms": spread([median(rnd["small"]["path"]) for rnd in rounds], 2),
                "direct_ms": spread([median(rnd["small"]["direct"]) for rnd in rounds], 2),
                "pairs": sum(len(rnd["small"]["path"]) for rnd in rounds),
            },
            "launch": {
                "accept_ms": spread([x["accept_ms"] for x in launches], 1),
                "ready_ms": spread([x["ready_ms"] for x in launches], 1),
            },
        }
    return result


# --------------------------------------------------------------------------- report

FIGURES = (  # (key, label): the four figures, each llmgw's and the router's
    ("switch", "(1) switch between 2 models: cost beyond the engine's own load and answer"),
    ("cold", "(2) cold first request: cost beyond the engine's own load and answer"),
    ("small", "(3) small request to a loaded model: added latency"),
    ("launch", "(4) launch to listening (spawn to accepting connections)"),
)


def figure(path_result: dict[str, Any], key: str) -> dict[str, Any] | None:
    """One of the four figures (a spread, ms) of one path."""
    found: dict[str, Any] | None
    if key in ("switch", "cold"):
        kind = "model_switch" if key == "switch" else "cold"
        found = path_result.get("beyond_load_ms", {}).get(kind) or path_result["switch"].get(kind, {}).get("added_ms")
    else:
        found = path_result["small"]["added_ms"] if key == "small" else path_result["launch"]["accept_ms"]
    return found


def _ok(path_result: dict[str, Any], key: str) -> bool:
    kind = {"switch": "model_switch", "cold": "cold"}.get(key)
    return kind is None or bool(path_result["switch"].get(kind, {}).get("all_ok"))


def targets(results: Results) -> list[Target]:
    res = results["router_real"]
    rows = []
    for key, label in FIGURES:
        gw, rt = figure(res["gateway"], key), figure(res["router"], key)
        value, theirs = mid(gw), mid(rt)
        if key == "launch":
            text = f"{label}: llmgw median <= {LAUNCH_TARGET_MS:g} ms"
            ok = value is not None and value <= LAUNCH_TARGET_MS
            shown = f"llmgw {fmt(gw)} ms (/health {fmt(res['gateway']['launch']['ready_ms'])} ms); router {fmt(rt)} ms"
        else:
            text = f"{label}: llmgw median below the router's"
            ok = value is not None and theirs is not None and value < theirs and _ok(res["gateway"], key)
            shown = f"llmgw {fmt(gw, 2 if key == 'small' else 1)} ms; router {fmt(rt, 2 if key == 'small' else 1)} ms"
        rows.append(target(LABEL, text, value, ok, shown))
    return rows


def _summary_rows(res: dict[str, Any], met: dict[str, bool | None]) -> list[list[str]]:
    d = res["direct"]
    gw, rt = res["gateway"], res["router"]
    verdict = {True: "met", False: "**not met**", None: "-"}

    def latency(kind: str) -> list[str]:
        return [
            fmt(d.get(kind, {}).get("total_ms")),
            fmt(gw["switch"].get(kind, {}).get("latency_ms")),
            fmt(rt["switch"].get(kind, {}).get("latency_ms")),
        ]

    return [
        ["(1) switch A↔B: latency ms", *latency("model_switch"), "", ""],
        [
            "(1) switch A↔B: overhead over direct spawn→healthy + first request, ms",
            "",
            fmt(gw["switch"].get("model_switch", {}).get("added_ms")),
            fmt(rt["switch"].get("model_switch", {}).get("added_ms")),
            "",
            "",
        ],
        [
            "(1) switch A↔B: **cost beyond the new engine's own load** (its log clock) and the first request, ms",
            "",
            f"**{fmt(figure(gw, 'switch'))}**",
            f"**{fmt(figure(rt, 'switch'))}**",
            "llmgw < router",
            verdict[met["switch"]],
        ],
        ["(2) cold first request: latency ms", *latency("cold"), "", ""],
        [
            "(2) cold first request: overhead, ms",
            "",
            fmt(gw["switch"].get("cold", {}).get("added_ms")),
            fmt(rt["switch"].get("cold", {}).get("added_ms")),
            "",
            "",
        ],
        [
            "(2) cold first request: **cost beyond the engine's own load** and the first request, ms",
            "",
            f"**{fmt(figure(gw, 'cold'))}**",
            f"**{fmt(figure(rt, 'cold'))}**",
            "llmgw < router",
            verdict[met["cold"]],
        ],
        [
            "(3) small request (1 token) to a loaded model: latency ms (direct: next to llmgw / next to the router)",
            f"{fmt(gw['small']['direct_ms'], 2)} / {fmt(rt['small']['direct_ms'], 2)}",
            fmt(gw["small"]["path_ms"], 2),
            fmt(rt["small"]["path_ms"], 2),
            "",
            "",
        ],
        [
            "(3) small request: **added latency** over the same engine process, ms",
            "",
            f"**{fmt(figure(gw, 'small'), 2)}**",
            f"**{fmt(figure(rt, 'small'), 2)}**",
            "llmgw < router",
            verdict[met["small"]],
        ],
        [
            "(4) launch: spawn → **accepting connections**, ms",
            "",
            f"**{fmt(figure(gw, 'launch'))}**",
            f"**{fmt(figure(rt, 'launch'))}**",
            f"llmgw <= {LAUNCH_TARGET_MS:g} ms",
            verdict[met["launch"]],
        ],
        [
            "(4) launch: spawn → `GET /health` answering, ms",
            "",
            fmt(gw["launch"]["ready_ms"]),
            fmt(rt["launch"]["ready_ms"]),
            "",
            "",
        ],
    ]


def section(results: Results) -> str:
    res = results["router_real"]
    met = {key: row["met"] for (key, _), row in zip(FIGURES, targets(results), strict=True)}
    launches = res["gateway"]["launch"]["accept_ms"]["n"]
    out = [
        f"## 10. llmgw vs llama-server's router mode (real engine)\n\n"
        f"The same binary and gguf on every path (context {res['setup']['context']}, one slot, `-t 1`), one "
        f"engine at a time; {res['rounds']} round(s) of: by hand, through a freshly launched gateway, through a "
        "freshly launched router (`--models-preset`, `--models-max 1`), order rotated. Each path: A (cold), B, A; "
        f"then {res['small_pairs']} small requests (1 token) to A, each paired with the same request straight to "
        f"the engine process serving it. Launch: {launches} samples per path (spawn to the port accepting "
        "connections; spawn to `GET /health` answering 200). Overhead = latency - median direct spawn→healthy - "
        "median direct first request (as in section 1). The engine's own load varies by hundreds of ms from one "
        "start to the next here, which swamps a difference of tens of ms in that figure; the targets (1) and (2) "
        "therefore take, on each path alike, the latency minus the new engine's load time by its own log clock "
        "(its `listening on` line: the gateway's log and the router's both carry their engines' lines) minus the "
        "median direct first request: what the gateway or the router itself spends, the old engine's stop "
        "included.\n",
        table(
            ["figure", PATH_LABEL["direct"], PATH_LABEL["gateway"], PATH_LABEL["router"], "target", ""],
            _summary_rows(res, met),
        ),
        "\nThe switches in detail (router rows: the router's own stop and start of its engine process):\n",
        switch.switch_tables(
            {
                "engine": "real",
                "setup": {"contexts": [res["setup"]["context"]]},
                "rounds": res["rounds"],
                "direct": res["direct"],
                "gateway": res["gateway"]["switch"],
                "router": res["router"]["switch"],
            }
        ),
    ]
    return "\n".join(out)


def headlines(results: Results) -> dict[str, float | None]:
    res = results["router_real"]
    out: dict[str, float | None] = {}
    for path in PATHS:
        for key, _ in FIGURES:
            out[f"router_real.{path}.{key}_ms"] = mid(figure(res[path], key))
        out[f"router_real.{path}.launch_ready_ms"] = mid(res[path]["launch"]["ready_ms"])
        for kind in ("model_switch", "cold"):
            out[f"router_real.{path}.{kind}.latency_ms"] = mid(res[path]["switch"].get(kind, {}).get("latency_ms"))
    return out


def plot(results: Results, path: Path) -> bool:
    """The four figures, llmgw next to the router (medians, min-max bars)."""
    import matplotlib.pyplot as plt

    res = results["router_real"]
    fig, axes = plt.subplots(1, len(FIGURES), figsize=(11, 3))
    for ax, (key, label) in zip(axes, FIGURES, strict=True):
        for i, p in enumerate(PATHS):
            sp = figure(res[p], key) or {}
            med = sp.get("median")
            if med is None:
                continue
            ax.bar(i, med, 0.6, yerr=[[med - sp["min"]], [sp["max"] - med]], capsize=3, color=f"C{i}")
        ax.set_xticks(range(len(PATHS)), [PATH_LABEL[p] for p in PATHS], fontsize=7)
        ax.axhline(0, color="black", lw=0.5)
        if key == "launch":
            ax.axhline(LAUNCH_TARGET_MS, ls="--", color="gray", lw=1)
        ax.set_title(label.split(": ")[0].replace(" (spawn to accepting connections)", ""), fontsize=8)
        ax.set_ylabel("ms", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def blockers(results: Results, row: Target) -> str:
    res = results["router_real"]
    gw = res["gateway"]
    if "launch" in row["target"]:
        return (
            " Where a launch's time goes: `python -m benchmarks.breakdown launch` (imports, config load, app, "
            "listen; see the findings)."
        )
    if "small request" in row["target"]:
        return (
            f" Straight to the engine the request takes {fmt(gw['small']['direct_ms'], 2)} ms; the gateway's added "
            "part includes its exact count (a second request to the engine) and its own HTTP hop; the router "
            "only proxies."
        )
    kind = "cold" if "cold" in row["target"] else "model_switch"
    g = gw["switch"].get(kind, {})
    logged = g.get("gateway_log_ms")
    line = f" Against the same switch by hand: llmgw {fmt(g.get('vs_direct_ms'))} ms."
    if logged:
        line += (
            f" The gateway's own log: stop {fmt(logged['stop_ms'])} ms, spawn to ready "
            f"{fmt(logged['spawn_to_ready_ms'])} ms, its own work besides {fmt(logged['own_ms'])} ms."
        )
    if g.get("orchestration_ms"):
        line += (
            " Orchestration vs by hand (the engine's load time by its own clock taken out): "
            f"{g['orchestration_ms']['added']:+.1f} ms."
        )
    return line + " Where a switch's time goes: `python -m benchmarks.breakdown switch`."
