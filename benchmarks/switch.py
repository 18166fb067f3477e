"""1. Switch time: alternate two models, and two variants of one model; cold first requests.

Every round runs the same sequences two ways, one after the other:

* direct: the benchmark itself stops the old engine (SIGTERM, wait for exit), spawns the new one
  with the same binary and args the gateway uses, polls ``/health`` every 5 ms, sends the request;
  each part is timed (stop, spawn-to-healthy, first request);
* gateway: the same requests to ``python -m llmgw`` (which does all that itself).

Gateway added cost of a switch = switch latency - median direct spawn-to-healthy - median direct
first request (the issue's definition; the old engine's stop time is therefore counted as
gateway cost, and reported on its own too). ``vs_direct`` is latency - median direct end-to-end
switch (stop + spawn + request), the like-for-like comparison. llama-server's router mode on the
same switches: ``router.py`` (section 10), which reuses the steps and the analysis here.
"""

from __future__ import annotations

import datetime
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.client import Connection
from benchmarks.common import Ctx, Results, Target, chat, words
from benchmarks.harness import DirectEngine, EngineSpec, GatewayProc, ModelSpec, fake_engine, free_port, real_engine
from benchmarks.stats import fmt, median, mid, ms, spread, summary, table, target

NAMES = ("switch_fake", "switch_real")
NEEDS_REAL = ("switch_real",)

PATH = "/v1/chat/completions"
KINDS = ("cold", "model_switch", "variant_switch")
KIND_LABEL = {
    "model_switch": "switch between 2 models",
    "variant_switch": "switch to the larger variant",
    "cold": "cold first request",
}


@dataclass
class SwitchParams:
    rounds: int = 3  # each round: 1 cold + 2 model switches, 1 cold + 1 variant switch, per path


@dataclass
class Step:
    kind: str  # cold | model_switch | variant_switch
    model: str
    spec: EngineSpec
    body: dict[str, Any]


def setup(ctx: Ctx, engine: str) -> tuple[list[ModelSpec], list[Step], list[Step], dict[str, Any]]:
    """Models A and B (one variant each) and V (small and large variant); the two step sequences."""
    pa, pb, pv = free_port(), free_port(), free_port()
    if engine == "fake":
        small_ctx, large_ctx = 1024, 8192
        a, b = fake_engine(pa, small_ctx, "A"), fake_engine(pb, small_ctx, "B")
        vs, vl = fake_engine(pv, small_ctx, "V"), fake_engine(pv, large_ctx, "V")
        extra: dict[str, Any] = {"max_tokens": 8}
        long_words = 1500
    else:
        assert ctx.real is not None
        small_ctx, large_ctx = 256, 1024  # llama-server's smallest context is 256
        # -t 1: see README (llama.cpp's spinning thread barriers make 2 threads on 2 shared cores erratic).
        a, b = real_engine(ctx.real, pa, small_ctx, "-t", "1"), real_engine(ctx.real, pb, small_ctx, "-t", "1")
        vs, vl = real_engine(ctx.real, pv, small_ctx, "-t", "1"), real_engine(ctx.real, pv, large_ctx, "-t", "1")
        extra = {"max_tokens": 4, "temperature": 0}
        long_words = 300  # ~325 tokens with the template: over 256, under 1024
    models = [ModelSpec("A", [a]), ModelSpec("B", [b]), ModelSpec("V", [vs, vl])]
    short = "Say hello."

    def step(kind: str, model: str, spec: EngineSpec, text: str) -> Step:
        return Step(kind, model, spec, chat(model, text, **extra))

    alternation = [
        step("cold", "A", a, short),
        step("model_switch", "B", b, short),
        step("model_switch", "A", a, short),
    ]
    variants = [step("cold", "V", vs, short), step("variant_switch", "V", vl, words(long_words))]
    setup = {
        "contexts": [small_ctx, large_ctx],
        "long_prompt_words": long_words,
        "engine_args": {"A": a.args, "V_small": vs.args, "V_large": vl.args},
    }
    return models, alternation, variants, setup


async def run_direct(ctx: Ctx, steps: list[Step], tag: str) -> list[dict[str, Any]]:
    """Do by hand what the gateway does: stop the old engine, spawn, poll /health, send."""
    out: list[dict[str, Any]] = []
    current: DirectEngine | None = None
    try:
        for i, st in enumerate(steps):
            t0 = time.perf_counter()
            stop = 0.0
            if current is not None:
                stop = await current.stop()
                current = None
            current = DirectEngine(st.spec, ctx.workdir / f"direct-{tag}-{i}.log")
            spawn = await current.start()
            async with current.connection() as conn:
                resp = await conn.request("POST", PATH, st.body, timeout=300)
            row = {
                "kind": st.kind,
                "model": st.model,
                "status": resp.status,
                "stop_ms": ms(stop),
                "spawn_to_healthy_ms": ms(spawn),
                "request_ms": ms(resp.total),
                "total_ms": ms(time.perf_counter() - t0),
            }
            engine_ready = engine_listening_ms(current.proc.log_path.read_text(errors="replace"))
            if engine_ready is not None:
                row["engine_ready_ms"] = engine_ready
            out.append(row)
    finally:
        if current is not None:
            await current.stop()
    return out


async def run_via(conn: Connection, steps: list[Step]) -> list[dict[str, Any]]:
    """The same steps as requests on ``conn`` (a gateway, or the router): it does the stopping and starting."""
    out = []
    for st in steps:
        resp = await conn.request("POST", PATH, st.body, timeout=300)
        out.append({"kind": st.kind, "model": st.model, "status": resp.status, "total_ms": ms(resp.total)})
    return out


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+\s+(\S+): (.*)$")
_ACCESS = re.compile(r"^(\d{3}) POST /v1/chat/completions \(.*\) ([\d.]+)ms$")
_READY = re.compile(r"^model '.*' variant \d+ ready in ([\d.]+) s")
# llama-server's log tag is minutes.seconds.milliseconds.microseconds since the process started.
_LISTENING = re.compile(r"(\d+)\.(\d+)\.(\d+)\.(\d+) I srv +llama_server: listening on http")


def engine_listening_ms(text: str) -> float | None:
    """When llama-server says it listens (ready), by its own clock, in ms since it started; None if not found."""
    m = _LISTENING.search(text)
    if m is None:
        return None
    minutes, seconds, millis, micros = (int(g) for g in m.groups())
    return (minutes * 60 + seconds) * 1000 + millis + micros / 1000


def gateway_log_breakdown(log: Path) -> list[dict[str, float]]:
    """From the gateway's own log, per chat request: how long it saw the old engine take to stop, the new
    one take from spawn to ready (its ``/props`` read included), and the rest of the request."""
    out: list[dict[str, float]] = []
    stop0 = stop1 = start = engine_ready = None
    for line in log.read_text(errors="replace").splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        stamp, logger, message = m.groups()
        if logger.startswith("llmgw.engine.output."):
            engine_ready = engine_listening_ms(message) or engine_ready
            continue
        t = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if message.startswith("stopping engine of model"):
            stop0 = t
        elif logger.endswith("engine_process") and "] stopped (exit code" in message and stop0 is not None:
            stop1 = t
        elif logger.startswith("llmgw.") and (ready := _READY.match(message)):
            start = float(ready.group(1)) * 1000
        elif logger == "tornado.access":
            access = _ACCESS.match(message)
            if access:
                total = float(access.group(2))
                stop = (stop1 - stop0) * 1000 if stop0 is not None and stop1 is not None else 0.0
                spawn = start or 0.0
                row = {
                    "stop_ms": stop,
                    "spawn_to_ready_ms": spawn,
                    "rest_ms": total - stop - spawn,
                    "request_time_ms": total,
                }
                if engine_ready is not None and start is not None:
                    row["engine_ready_ms"] = engine_ready
                out.append(row)
            stop0 = stop1 = start = engine_ready = None
    return out


def analyse(direct: list[dict[str, Any]], via: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind: latency, and the added cost against the direct medians of the same kind."""
    result: dict[str, Any] = {}
    for kind in KINDS:
        d = [r for r in direct if r["kind"] == kind]
        v = [r for r in via if r["kind"] == kind]
        if not d or not v:
            continue
        spawn = median([r["spawn_to_healthy_ms"] for r in d])
        request = median([r["request_ms"] for r in d])
        stop = median([r["stop_ms"] for r in d])
        direct_total = median([r["total_ms"] for r in d])
        totals = [r["total_ms"] for r in v]
        added = [t - spawn - request for t in totals]
        result[kind] = {
            "samples": len(v),
            "all_ok": all(r["status"] == 200 for r in v),
            "latency_ms": summary(totals, 1),
            "added_ms": spread(added, 1),
            "added_excl_stop_ms": spread([a - stop for a in added], 1),
            "vs_direct_ms": spread([t - direct_total for t in totals], 1),
        }
        if all("log" in r for r in v):
            result[kind]["gateway_log_ms"] = {
                key: spread([r["log"][key] for r in v], 1) for key in ("stop_ms", "spawn_to_ready_ms", "rest_ms")
            }
            # The rest, minus what the engine itself takes for the first request: the gateway's own part.
            result[kind]["gateway_log_ms"]["own_ms"] = spread([r["log"]["rest_ms"] - request for r in v], 1)
        if all("engine_ready_ms" in r for r in d) and all("engine_ready_ms" in r.get("log", {}) for r in v):
            # Orchestration = what is neither the old engine stopping, the new one loading (by its own clock)
            # nor the engine answering: spawning, readiness detection, counting, proxying. Engine-side noise
            # (load time varies by hundreds of ms here) cancels out of it.
            gw_orch = [r["total_ms"] - r["log"]["stop_ms"] - r["log"]["engine_ready_ms"] - request for r in v]
            d_orch = [r["total_ms"] - r["stop_ms"] - r["engine_ready_ms"] - r["request_ms"] for r in d]
            result[kind]["orchestration_ms"] = {
                "engine_ready_gateway": spread([r["log"]["engine_ready_ms"] for r in v], 1),
                "engine_ready_direct": spread([r["engine_ready_ms"] for r in d], 1),
                "gateway": spread(gw_orch, 1),
                "direct": spread(d_orch, 1),
                "added": round(median(gw_orch) - median(d_orch), 1),
            }
    return result


def direct_summary(direct: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in KINDS:
        d = [r for r in direct if r["kind"] == kind]
        if d:
            out[kind] = {
                "samples": len(d),
                "all_ok": all(r["status"] == 200 for r in d),
                **{
                    key: spread([r[key] for r in d], 1)
                    for key in ("stop_ms", "spawn_to_healthy_ms", "request_ms", "total_ms")
                },
            }
    return out


async def _check_variant(gw: GatewayProc, context: int) -> None:
    """The variant sequence must have ended on the large variant, or it measured no switch."""
    async with gw.connection() as conn:
        engines = (await conn.request("GET", "/running", timeout=10)).json().get("engines") or [{}]
        engine = engines[-1]
    if engine.get("context") != context:
        raise RuntimeError(f"expected the large variant (context {context}) to run, /running says {engine}")


async def run(ctx: Ctx, name: str, params: SwitchParams) -> dict[str, Any]:
    engine = "real" if name == "switch_real" else "fake"
    models, alternation, variants, setup_info = setup(ctx, engine)
    vl_context = setup_info["contexts"][1]
    direct: list[dict[str, Any]] = []
    gateway: list[dict[str, Any]] = []
    gw = GatewayProc(ctx.workdir, models, name=f"gw-switch-{engine}", profile=ctx.profile_path(f"switch-{engine}"))
    await gw.start()
    try:
        for r in range(params.rounds):
            ctx.log(f"switch/{engine}: round {r + 1}/{params.rounds}")
            # Direct first: the gateway holds no engine between its sequences (unload), so ports are free.
            direct += await run_direct(ctx, alternation, f"{engine}-alt-{r}")
            direct += await run_direct(ctx, variants, f"{engine}-var-{r}")
            async with gw.connection() as conn:
                await gw.unload()
                gateway += await run_via(conn, alternation)
                await gw.unload()
                gateway += await run_via(conn, variants)
                await _check_variant(gw, vl_context)
                await gw.unload()
    finally:
        await gw.stop()
    breakdown = gateway_log_breakdown(gw.proc.log_path)
    if len(breakdown) == len(gateway):
        for row, logged in zip(gateway, breakdown, strict=True):
            row["log"] = logged
    return {
        "engine": engine,
        "setup": setup_info,
        "rounds": params.rounds,
        "direct": direct_summary(direct),
        "gateway": analyse(direct, gateway),
        "raw": {"direct": direct, "gateway": gateway},
    }


# --------------------------------------------------------------------------- report


def targets(results: Results) -> list[Target]:
    rows = []
    for sw in results.values():
        for kind in KINDS:
            g = sw["gateway"].get(kind)
            if g:
                value = mid(g["added_ms"])
                shown = f"{fmt(g['added_ms'])} ms"
                if g.get("orchestration_ms"):
                    shown += f" (orchestration vs by hand: {g['orchestration_ms']['added']:+.1f} ms)"
                rows.append(
                    target(
                        f"1. switch ({sw['engine']} engine)",
                        f"added cost, {KIND_LABEL[kind]}: median <= 50 ms",
                        value,
                        value is not None and value <= 50 and g["all_ok"],
                        shown,
                    )
                )
    return rows


def section(results: Results) -> str:
    out = [
        "## 1. Switch time\n",
        "Added = latency - direct spawn→healthy - direct first request (medians; the old engine's stop is in it). "
        "Added excl. stop also takes off the direct stop time. Vs direct = latency - the direct end-to-end switch. "
        "The same targets follow the issue's formula, so the engine's own start-to-start variance lands in them, "
        "in both directions; for the real engine the orchestration figure (engine load time taken from the "
        "engine's own log on both sides) shows the gateway's part without that noise. llama-server's router "
        "mode on the same switches: section 10.\n",
    ]
    out += [f"### {sw['engine']} engine\n\n" + switch_tables(sw) for sw in results.values()]
    return "\n".join(out)


def switch_tables(sw: dict[str, Any]) -> str:
    """One engine's switch tables: latency and added cost per path, the gateway log's view, orchestration."""
    out = [
        f"Contexts {sw['setup']['contexts']}, {sw['rounds']} round(s); latency = the client's request time. "
        "Direct = the benchmark doing the same by hand (stop old, spawn, poll /health every 5 ms, request).\n"
    ]
    rows = []
    for kind in KINDS:
        d = sw["direct"].get(kind)
        if not d:
            continue
        rows.append(
            [
                KIND_LABEL[kind],
                "direct",
                d["samples"],
                fmt(d["total_ms"]),
                fmt(d["stop_ms"]),
                fmt(d["spawn_to_healthy_ms"]),
                fmt(d["request_ms"]),
                "",
                "",
                "",
            ]
        )
        for path in ("gateway", "router"):  # results of earlier runs have the router here
            g = sw.get(path, {}).get(kind)
            if g:
                ok = "" if g["all_ok"] else " **(failures)**"
                rows.append(
                    [
                        KIND_LABEL[kind],
                        path + ok,
                        g["samples"],
                        fmt(g["latency_ms"]),
                        "",
                        "",
                        "",
                        fmt(g["added_ms"]),
                        fmt(g["added_excl_stop_ms"]),
                        fmt(g["vs_direct_ms"]),
                    ]
                )
    out.append(
        table(
            [
                "scenario",
                "path",
                "n",
                "latency ms",
                "engine stop ms",
                "spawn→healthy ms",
                "first request ms",
                "added ms",
                "added excl. stop ms",
                "vs direct ms",
            ],
            rows,
        )
    )
    logged = [
        [KIND_LABEL[kind], fmt(g["stop_ms"]), fmt(g["spawn_to_ready_ms"]), fmt(g["rest_ms"]), fmt(g["own_ms"])]
        for kind in KINDS
        if (g := sw["gateway"].get(kind, {}).get("gateway_log_ms"))
    ]
    if logged:
        out.append(
            "\nThe same gateway switches as the gateway's own log times them (ms resolution): the old "
            "engine's stop, spawn to ready (its readiness polling and `/props` read included), the rest of "
            "the request (counting, forwarding, the engine's answer) and that rest minus the direct first "
            "request (the gateway's own work outside the engine's start and stop).\n"
        )
        out.append(table(["scenario", "stop ms", "spawn→ready ms", "rest ms", "rest - direct request ms"], logged))
    orch = [
        [
            KIND_LABEL[kind],
            fmt(o["engine_ready_direct"]),
            fmt(o["engine_ready_gateway"]),
            fmt(o["direct"]),
            fmt(o["gateway"]),
            f"**{o['added']:.1f}**",
        ]
        for kind in KINDS
        if (o := sw["gateway"].get(kind, {}).get("orchestration_ms"))
    ]
    if orch:
        out.append(
            "\nOrchestration time: latency minus the old engine's stop, minus the new engine's load time by its "
            "own log clock (`listening on` line), minus the first request's direct time. What is left is "
            "spawning, readiness detection, counting and proxying; the engine's load-time noise drops out.\n"
        )
        out.append(
            table(
                [
                    "scenario",
                    "engine load (own clock), direct runs ms",
                    "same, gateway runs ms",
                    "orchestration by hand ms",
                    "orchestration by the gateway ms",
                    "gateway - by hand ms",
                ],
                orch,
            )
        )
    return "\n".join(out)


def headlines(results: Results) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, sw in results.items():
        for path in ("gateway", "router"):
            for kind, g in sw.get(path, {}).items():
                out[f"{name}.{path}.{kind}.latency_ms"] = g["latency_ms"]["median"]
                out[f"{name}.{path}.{kind}.added_ms"] = g["added_ms"]["median"]
    return out


def plot(results: Results, path: Path) -> bool:
    """Per engine, a bar per scenario and path: the direct switch's parts, and the gateway's latency."""
    import matplotlib.pyplot as plt

    switches = list(results.values())
    fig, axes = plt.subplots(1, len(switches), figsize=(6 * len(switches), 3.8), squeeze=False)
    colors = {
        "engine stop": "#999999",
        "spawn→healthy": "#4c72b0",
        "first request": "#55a868",
        "by-hand rest": "#dd8452",
        "latency (up to the direct one)": "#c9c9c9",
        "more than direct": "#c44e52",
    }
    seen: set[str] = set()
    for ax, sw in zip(axes[0], switches, strict=True):
        rows = _plot_rows(sw)
        for y, (_, segments) in enumerate(rows):
            left = 0.0
            for name, width in segments:
                ax.barh(y, width, left=left, color=colors[name], label=None if name in seen else name)
                seen.add(name)
                left += width
        ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("ms (medians)", fontsize=7)
        ax.set_title(f"switch latency, {sw['engine']} engine", fontsize=9)
    fig.legend(loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def _plot_rows(sw: dict[str, Any]) -> list[tuple[str, list[tuple[str, float]]]]:
    rows: list[tuple[str, list[tuple[str, float]]]] = []
    for kind in KINDS:
        d = sw["direct"].get(kind)
        if not d:
            continue
        stop, spawn, req, total = (
            mid(d[k]) or 0.0 for k in ("stop_ms", "spawn_to_healthy_ms", "request_ms", "total_ms")
        )
        rows.append(
            (
                f"direct: {KIND_LABEL[kind]}",
                [
                    ("engine stop", stop),
                    ("spawn→healthy", spawn),
                    ("first request", req),
                    ("by-hand rest", max(total - stop - spawn - req, 0)),
                ],
            )
        )
        for path in ("gateway", "router"):
            latency = mid(sw.get(path, {}).get(kind, {}).get("latency_ms"))
            if latency is not None:
                rows.append(
                    (
                        f"{path}: {KIND_LABEL[kind]}",
                        [
                            ("latency (up to the direct one)", min(latency, total)),
                            ("more than direct", max(latency - total, 0)),
                        ],
                    )
                )
    return rows


def blockers(results: Results, row: Target) -> str:
    sw = results["switch_real" if "real" in row["benchmark"] else "switch_fake"]
    kind = next(k for k, label in KIND_LABEL.items() if label in row["target"])
    d, g = sw["direct"][kind], sw["gateway"][kind]
    line = (
        f" Of that, the old engine's own stop (SIGTERM to exit, measured directly) is {fmt(d['stop_ms'])} ms; "
        f"without it the gateway adds {fmt(g['added_excl_stop_ms'])} ms; against the same switch done by hand it "
        f"adds {fmt(g['vs_direct_ms'])} ms."
    )
    orch = g.get("orchestration_ms")
    if orch:
        line += (
            f" Taking the engine's own load time (its log clock) out of both sides, the gateway's "
            f"orchestration costs {orch['added']:.1f} ms more than doing it by hand."
        )
    logged = g.get("gateway_log_ms")
    if logged:
        line += (
            f" The gateway's own log of these switches: stop {fmt(logged['stop_ms'])} ms, spawn to ready "
            f"{fmt(logged['spawn_to_ready_ms'])} ms (direct: {fmt(d['spawn_to_healthy_ms'])} ms), its own "
            f"work besides {fmt(logged['own_ms'])} ms."
        )
    if kind == "variant_switch":
        line += " A variant switch also counts the prompt twice (on the small engine, then on the large one)."
    return line
