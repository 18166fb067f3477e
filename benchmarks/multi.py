"""7. Several engines at once (``server.max_engines = 2``): alternating loaded models, and a loaded model
while another one starts.

**Alternation** (``alternate_fake``, ``alternate_real``): a gateway with models A and B, both loaded
(``POST /load``) before anything is measured. Each repeat runs two blocks, order flipped between
repeats: (a) *single*, small non-streamed requests to A only; (b) *alternating*, the same requests to
A, B, A, B... Every gateway request is paired with the same request sent straight to the engine
process that serves it (its own port, a keep-alive connection per engine), order flipped between
pairs. Added = median gateway - median direct, per block, then summarised over repeats. /running is
read before and after every block: the same two pids, both ``ready``, nothing queued; the gateway log
must show exactly two engine starts, and with the fake engine each engine's event file exactly one
``start`` and no ``exit``. Any restart fails the benchmark.

**A loaded model while another starts** (``starting_fake``, ``starting_real``): A loaded; B's start
takes a while (fake engine: ``--fake-load-delay``; real engine: its real load). Each round has an
*idle* phase (only A exists) and a *starting* phase (order flipped between rounds); both take
samples the same way: read /running, send a pair (the small request to A through the gateway and
straight to A's process, order flipped between pairs), read /running again. In the starting phase
B's start is triggered by ``POST /load {"model": "B"}`` sent in the background; a pair is kept only
if both reads show B in state ``starting`` (a state B enters once and leaves once, so it was
starting for the whole pair); in the idle phase only if both reads show A alone and ``ready``.
After the start the benchmark waits for the load to answer, checks A's pid, and unloads B
(``POST /unload {"model": "B"}``, which returns once B is gone) before the next phase.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks.client import Connection, Response
from benchmarks.common import Ctx, Results, Target, chat
from benchmarks.harness import HOST, EngineSpec, GatewayProc, ModelSpec, fake_engine, free_port, real_engine
from benchmarks.stats import fmt, median, mid, ms, spread, summary, table, target

NAMES = ("alternate_fake", "alternate_real", "starting_fake", "starting_real")
NEEDS_REAL = ("alternate_real", "starting_real")
PATH = "/v1/chat/completions"


@dataclass
class AlternateParams:
    requests: int = 200  # gateway requests per block (as many direct), per repeat
    repeats: int = 3
    warmup: int = 20


@dataclass
class StartingParams:
    rounds: int = 5  # each: an idle phase and a phase while B starts
    idle_pairs: int = 100  # samples (gateway + direct) of the idle phase, per round
    max_starting_pairs: int = 2000  # bound on the samples taken during one start
    load_delay: float = 2.0  # fake engine: B's --fake-load-delay


# --------------------------------------------------------------------------- shared


async def run(ctx: Ctx, name: str, params: AlternateParams | StartingParams) -> dict[str, Any]:
    engine = name.rsplit("_", 1)[1]
    if isinstance(params, AlternateParams):
        return await run_alternate(ctx, engine, params)
    return await run_starting(ctx, engine, params)


def _engines(ctx: Ctx, engine: str, b_extra: tuple[str, ...] = ()) -> tuple[EngineSpec, EngineSpec, dict[str, Any]]:
    """Engines A and B on ports of their own; with the fake engine, each writes an event file."""
    pa, pb = free_port(), free_port()
    if engine == "fake":
        events = {name: ctx.workdir / f"events-{name}-{pa}.jsonl" for name in ("A", "B")}
        a = fake_engine(pa, 4096, "A", "--fake-events", str(events["A"]))
        b = fake_engine(pb, 4096, "B", "--fake-events", str(events["B"]), *b_extra)
        extra: dict[str, Any] = {"max_tokens": 8, "events": events}
    else:
        assert ctx.real is not None
        # -t 1 as everywhere in the suite (README: llama.cpp's spinning threads on 2 shared cores).
        a = real_engine(ctx.real, pa, 256, "-t", "1")
        b = real_engine(ctx.real, pb, 256, "-t", "1")
        extra = {"max_tokens": 1, "temperature": 0}  # one token: the smallest real request (~80 ms here)
    return a, b, extra


def _ok(resp: Response) -> float:
    if resp.status != 200:
        raise RuntimeError(f"request failed: {resp.status} {resp.body[:200]!r}")
    return resp.total


async def _running(conn: Connection) -> dict[str, Any]:
    resp = await conn.request("GET", "/running", timeout=10)
    if resp.status != 200:
        raise RuntimeError(f"/running: {resp.status} {resp.body[:200]!r}")
    return dict(resp.json())


def _engines_by_model(running: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["model"]: e for e in running.get("engines", [])}


def _events(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


_STARTING = re.compile(r"llmgw\.runtime\.local: starting model '([^']*)'")


_PROBE_503 = re.compile(r"llmgw\.engine\.output\.B#\d+: .*GET /health \S+ 503")


def readiness_probes(log: Path) -> int:
    """B's /health requests answered 503 (loading), as the fake engine logs them and the gateway relays
    its output; llama-server does not log /health, so this is 0 with the real engine."""
    return len(_PROBE_503.findall(log.read_text(errors="replace")))


def gateway_starts(log: Path) -> dict[str, int]:
    """Engine starts by model, from the gateway's own log."""
    starts: dict[str, int] = {}
    for m in _STARTING.finditer(log.read_text(errors="replace")):
        starts[m.group(1)] = starts.get(m.group(1), 0) + 1
    return starts


# --------------------------------------------------------------------------- 1. alternation


async def run_alternate(ctx: Ctx, engine: str, params: AlternateParams) -> dict[str, Any]:
    a, b, extra = _engines(ctx, engine)
    events: dict[str, Path] = extra.pop("events", {})
    specs = {"A": a, "B": b}
    bodies = {name: chat(name, "Say hello.", **extra) for name in specs}
    gw = GatewayProc(
        ctx.workdir,
        [ModelSpec("A", [a]), ModelSpec("B", [b])],
        name=f"gw-alternate-{engine}",
        profile=ctx.profile_path(f"alternate-{engine}"),
        max_engines=2,
    )
    checks: list[dict[str, Any]] = []
    blocks: list[dict[str, Any]] = []
    await gw.start()
    try:
        await gw.load("A")
        await gw.load("B")
        control = gw.connection()
        via = gw.connection()
        direct = {name: Connection(HOST, spec.port) for name, spec in specs.items()}
        try:
            expected: dict[str, int] = {}

            async def check(when: str) -> None:
                """Both engines ready with the pids they had after loading: no start, no stop, no queue."""
                running = await _running(control)
                engines = _engines_by_model(running)
                pids = {name: engines.get(name, {}).get("pid") for name in specs}
                states = {name: engines.get(name, {}).get("state") for name in specs}
                if not expected:
                    expected.update({k: v for k, v in pids.items() if v is not None})
                ok = (
                    pids == expected
                    and len(expected) == 2
                    and set(states.values()) == {"ready"}
                    and len(running["engines"]) == 2
                    and running["queued"] == 0
                )
                checks.append({"when": when, "pids": pids, "states": states, "ok": ok})
                if not ok:
                    raise RuntimeError(f"engine restarted or not ready {when}: /running says {running}")

            await check("after loading")

            async def pair(name: str, gateway_first: bool) -> tuple[float, float]:
                order = ("gateway", "direct") if gateway_first else ("direct", "gateway")
                out: dict[str, float] = {}
                for path in order:
                    conn = via if path == "gateway" else direct[name]
                    out[path] = _ok(await conn.request("POST", PATH, bodies[name], timeout=120))
                return out["gateway"], out["direct"]

            for i in range(params.warmup):
                await pair("AB"[i % 2], i % 2 == 0)
            await check("after the warm-up")
            for r in range(params.repeats):
                order = ("single", "alternating") if r % 2 == 0 else ("alternating", "single")
                ctx.log(f"alternate/{engine}: repeat {r + 1}/{params.repeats} ({', '.join(order)})")
                for mode in order:
                    samples: dict[str, list[float]] = {"gateway": [], "direct": []}
                    per_model: dict[str, dict[str, list[float]]] = {n: {"gateway": [], "direct": []} for n in specs}
                    for i in range(params.requests):
                        name = "A" if mode == "single" else "AB"[i % 2]
                        g, d = await pair(name, (i // 2) % 2 == 0)
                        samples["gateway"].append(ms(g))
                        samples["direct"].append(ms(d))
                        per_model[name]["gateway"].append(ms(g))
                        per_model[name]["direct"].append(ms(d))
                    await check(f"after repeat {r + 1}, {mode}")
                    blocks.append(
                        {
                            "repeat": r,
                            "mode": mode,
                            "gateway": summary(samples["gateway"], 4),
                            "direct": summary(samples["direct"], 4),
                            "per_model": {
                                n: {p: summary(v, 4) for p, v in pm.items()}
                                for n, pm in per_model.items()
                                if pm["gateway"]
                            },
                        }
                    )
        finally:
            for conn in (control, via, *direct.values()):
                await conn.close()
    finally:
        await gw.stop()
    starts = gateway_starts(gw.proc.log_path)
    engine_events = {name: _events(path) for name, path in events.items()}
    fake_starts = {name: sum(e["event"] == "start" for e in ev) for name, ev in engine_events.items()}
    fake_exits_before_end = {name: sum(e["event"] == "exit" for e in ev) for name, ev in engine_events.items()}
    # The gateway's stop at the end makes each engine write "exit" once; that is the only one allowed.
    restarts_ok = (
        starts == {"A": 1, "B": 1}
        and all(n == 1 for n in fake_starts.values())
        and all(n <= 1 for n in fake_exits_before_end.values())
    )
    if not restarts_ok:
        raise RuntimeError(
            f"an engine started more than once: gateway log {starts}, fake events {fake_starts}, "
            f"exits {fake_exits_before_end}"
        )
    result: dict[str, Any] = {
        "engine": engine,
        "requests_per_block": params.requests,
        "repeats": params.repeats,
        "max_tokens": extra["max_tokens"],
        "engine_starts": {"gateway_log": starts, **({"fake_events": fake_starts} if fake_starts else {})},
        "engine_starts_during_measurement": 0,  # checked above: any other value raised
        "pids": checks[0]["pids"],
        "checks": len(checks),
        "all_ok": all(c["ok"] for c in checks),
        "blocks": blocks,
    }
    for mode in ("single", "alternating"):
        mine = [blk for blk in blocks if blk["mode"] == mode]
        result[mode] = {
            "gateway_ms": spread([blk["gateway"]["median"] for blk in mine], 4),
            "direct_ms": spread([blk["direct"]["median"] for blk in mine], 4),
            "added_ms": {
                stat: spread([blk["gateway"][stat] - blk["direct"][stat] for blk in mine], 4)
                for stat in ("median", "p99")
            },
        }
    single = [blk["gateway"]["median"] - blk["direct"]["median"] for blk in blocks if blk["mode"] == "single"]
    alternating = [blk["gateway"]["median"] - blk["direct"]["median"] for blk in blocks if blk["mode"] == "alternating"]
    result["difference_ms"] = spread([x - y for x, y in zip(alternating, single, strict=True)], 4)
    # The suite's rule for "same" (README, comparing runs): the two min-max spreads overlap.
    result["within_spread"] = max(single) >= min(alternating) and max(alternating) >= min(single)
    return result


# --------------------------------------------------------------------------- 2. while another starts


async def run_starting(ctx: Ctx, engine: str, params: StartingParams) -> dict[str, Any]:
    b_extra = ("--fake-load-delay", f"{params.load_delay:g}") if engine == "fake" else ()
    a, b, extra = _engines(ctx, engine, b_extra)
    events: dict[str, Path] = extra.pop("events", {})
    body = chat("A", "Say hello.", **extra)
    gw = GatewayProc(
        ctx.workdir,
        [ModelSpec("A", [a]), ModelSpec("B", [b])],
        name=f"gw-starting-{engine}",
        profile=ctx.profile_path(f"starting-{engine}"),
        max_engines=2,
    )
    rounds: list[dict[str, Any]] = []
    await gw.start()
    try:
        await gw.load("A")
        control = gw.connection()
        via = gw.connection()
        direct = Connection(HOST, a.port)
        try:
            a_pid = _engines_by_model(await _running(control))["A"]["pid"]
            gw_proc = psutil.Process(gw.proc.pid)

            def gateway_cpu() -> float:
                t = gw_proc.cpu_times()
                return float(t.user + t.system)

            flip = [0]

            async def pair() -> tuple[float, float]:
                flip[0] += 1
                order = ("gateway", "direct") if flip[0] % 2 else ("direct", "gateway")
                out: dict[str, float] = {}
                for path in order:
                    out[path] = ms(
                        _ok(await (via if path == "gateway" else direct).request("POST", PATH, body, timeout=120))
                    )
                return out["gateway"], out["direct"]

            def idle_state(running: dict[str, Any]) -> bool:
                engines = running["engines"]
                return (
                    len(engines) == 1
                    and engines[0]["model"] == "A"
                    and engines[0]["state"] == "ready"
                    and engines[0]["pid"] == a_pid
                )

            def b_starting(running: dict[str, Any]) -> bool:
                engines = _engines_by_model(running)
                return engines.get("B", {}).get("state") == "starting" and engines.get("A", {}).get("pid") == a_pid

            async def idle_phase() -> dict[str, Any]:
                kept: dict[str, list[float]] = {"gateway": [], "direct": []}
                dropped = 0
                # The same pattern as while B starts: one /running read before the first pair and after each.
                c0 = gateway_cpu()
                before = idle_state(await _running(control))
                for _ in range(params.idle_pairs):
                    g, d = await pair()
                    after = idle_state(await _running(control))
                    if before and after:
                        kept["gateway"].append(g)
                        kept["direct"].append(d)
                    else:
                        dropped += 1
                    before = after
                cpu = (gateway_cpu() - c0) / params.idle_pairs
                return {"samples": kept, "dropped": dropped, "gateway_cpu_ms_per_pair": round(cpu * 1000, 3)}

            async def starting_phase(r: int) -> dict[str, Any]:
                kept: dict[str, list[float]] = {"gateway": [], "direct": []}
                dropped = 0
                c0, t0 = gateway_cpu(), time.perf_counter()
                load = asyncio.ensure_future(gw.load("B"))
                try:
                    deadline = time.perf_counter() + 30
                    running = await _running(control)
                    while not b_starting(running):  # B shows up as "starting" as soon as it is decided
                        if load.done() or time.perf_counter() > deadline:
                            raise RuntimeError(f"round {r + 1}: B never seen starting; /running says {running}")
                        await asyncio.sleep(0.001)
                        running = await _running(control)
                    for _ in range(params.max_starting_pairs):
                        g, d = await pair()
                        running = await _running(control)
                        if b_starting(running):
                            kept["gateway"].append(g)
                            kept["direct"].append(d)
                        else:
                            dropped += 1  # B's start ended during this pair
                            break
                    else:
                        raise RuntimeError(f"round {r + 1}: B still starting after {params.max_starting_pairs} pairs")
                    cpu = (gateway_cpu() - c0) / (len(kept["gateway"]) + dropped)
                    await asyncio.wait_for(asyncio.shield(load), 180)
                    start_s = time.perf_counter() - t0
                finally:
                    if not load.done():
                        load.cancel()
                engines = _engines_by_model(await _running(control))
                if engines.get("B", {}).get("state") != "ready" or engines.get("A", {}).get("pid") != a_pid:
                    raise RuntimeError(f"round {r + 1}: after B's start, /running says {engines}")
                await gw.unload("B")
                return {
                    "samples": kept,
                    "dropped": dropped,
                    "load_s": round(start_s, 3),
                    "gateway_cpu_ms_per_pair": round(cpu * 1000, 3),
                }

            for _ in range(max(3, params.idle_pairs // 10)):  # warm-up
                await pair()
            for r in range(params.rounds):
                order = ("idle", "starting") if r % 2 == 0 else ("starting", "idle")
                ctx.log(f"starting/{engine}: round {r + 1}/{params.rounds} ({', '.join(order)})")
                row: dict[str, Any] = {"round": r}
                for phase in order:
                    row[phase] = await idle_phase() if phase == "idle" else await starting_phase(r)
                rounds.append(row)
            final = await _running(control)
        finally:
            for conn in (control, via, direct):
                await conn.close()
    finally:
        await gw.stop()
    if not idle_state(final):
        raise RuntimeError(f"after the rounds, /running says {final}")
    starts = gateway_starts(gw.proc.log_path)
    fake_starts = {name: sum(e["event"] == "start" for e in _events(path)) for name, path in events.items()}
    expected = {"A": 1, "B": params.rounds}
    if starts != expected or (fake_starts and fake_starts != expected):
        raise RuntimeError(f"expected starts {expected}; gateway log {starts}, fake events {fake_starts}")
    result = _starting_result(engine, params, extra, rounds, starts, fake_starts)
    if engine == "fake":
        result["readiness_probes_per_start"] = round(readiness_probes(gw.proc.log_path) / params.rounds, 1)
    return result


def _starting_result(
    engine: str,
    params: StartingParams,
    extra: dict[str, Any],
    rounds: list[dict[str, Any]],
    starts: dict[str, int],
    fake_starts: dict[str, int],
) -> dict[str, Any]:
    def med(samples: list[float]) -> float:
        return median(samples) if samples else float("nan")

    per_round = []
    for row in rounds:
        idle, starting = row["idle"]["samples"], row["starting"]["samples"]
        out = {
            "round": row["round"],
            "load_s": row["starting"]["load_s"],
            "n_idle": len(idle["gateway"]),
            "n_starting": len(starting["gateway"]),
            "dropped_idle": row["idle"]["dropped"],
            "dropped_starting": row["starting"]["dropped"],
            "idle_gateway_cpu_ms_per_pair": row["idle"]["gateway_cpu_ms_per_pair"],
            "starting_gateway_cpu_ms_per_pair": row["starting"]["gateway_cpu_ms_per_pair"],
        }
        for phase, s in (("idle", idle), ("starting", starting)):
            out[f"{phase}_gateway_ms"] = round(med(s["gateway"]), 4)
            out[f"{phase}_direct_ms"] = round(med(s["direct"]), 4)
            out[f"{phase}_added_ms"] = round(med(s["gateway"]) - med(s["direct"]), 4)
        out["gateway_more_ms"] = round(out["starting_gateway_ms"] - out["idle_gateway_ms"], 4)
        out["direct_more_ms"] = round(out["starting_direct_ms"] - out["idle_direct_ms"], 4)
        out["added_more_ms"] = round(out["starting_added_ms"] - out["idle_added_ms"], 4)
        per_round.append(out)
    usable = [r for r in per_round if r["n_starting"] > 0 and r["n_idle"] > 0]
    if not usable:
        raise RuntimeError("no sample was taken while B was starting")

    def pooled(phase: str, path: str) -> list[float]:
        return [x for row in rounds for x in row[phase]["samples"][path]]

    pool = {
        phase: {path: summary(pooled(phase, path), 4) for path in ("gateway", "direct")}
        for phase in ("idle", "starting")
    }
    return {
        "engine": engine,
        "rounds": params.rounds,
        "load_delay_s": params.load_delay if engine == "fake" else None,
        "max_tokens": extra["max_tokens"],
        "engine_starts": {"gateway_log": starts, **({"fake_events": fake_starts} if fake_starts else {})},
        "b_start_s": spread([r["load_s"] for r in per_round], 3),
        "samples": {
            "idle": sum(r["n_idle"] for r in per_round),
            "starting": sum(r["n_starting"] for r in per_round),
            "dropped_idle": sum(r["dropped_idle"] for r in per_round),
            "dropped_starting": sum(r["dropped_starting"] for r in per_round),
        },
        "all_ok": len(usable) == len(per_round),
        # Per round, then summarised over rounds: the target's figure and the two halves it is made of.
        "gateway_more_ms": spread([r["gateway_more_ms"] for r in usable], 3),
        "direct_more_ms": spread([r["direct_more_ms"] for r in usable], 3),
        "added_more_ms": spread([r["added_more_ms"] for r in usable], 3),
        "idle_added_ms": spread([r["idle_added_ms"] for r in usable], 3),
        "starting_added_ms": spread([r["starting_added_ms"] for r in usable], 3),
        # The gateway's CPU time (psutil, user + system) over a phase, per pair sent: its request work plus
        # whatever else it does meanwhile (while B starts: spawning, readiness probes, relaying B's output).
        "gateway_cpu_ms_per_pair": {
            phase: spread([r[f"{phase}_gateway_cpu_ms_per_pair"] for r in per_round], 3)
            for phase in ("idle", "starting")
        },
        "pooled": pool,
        "per_round": per_round,
    }


# --------------------------------------------------------------------------- report

STARTING_METHOD = (
    "A gateway with `max_engines = 2`; A loaded. Each round has an idle phase (A alone) and a phase while B starts "
    '(`POST /load {"model": "B"}` sent in the background), order flipped between rounds. Both phases sample alike: '
    "`GET /running`, then a pair (the small request to A through the gateway and straight to A's process, order "
    "flipped), then `GET /running` again. **While B is starting** means: a pair counts only if the reads before and "
    "after it both show B in state `starting` (B enters that state once, when the gateway decides to start it, and "
    "leaves it once, when it is ready), so B was starting during the whole pair; the pair during which the start "
    "ended is dropped. Idle pairs count only if both reads show A alone and `ready` with its first pid. After each "
    'start, B is unloaded (`POST /unload {"model": "B"}` returns once it is gone). Differences are taken per round '
    "(starting - idle), then summarised over rounds.\n"
)


ALTERNATE_METHOD = (
    "A gateway with `max_engines = 2` and models A and B, both loaded before anything is measured. (a) single: small "
    "non-streamed requests to A only; (b) alternating: the same requests to A, B, A, B...; the two blocks alternate "
    "(order flipped between repeats). Each gateway request is paired with the same request straight to the engine "
    "process that serves it. Added = gateway median - direct median per block; figures over repeats.\n"
)


def targets(results: Results) -> list[Target]:
    rows = []
    for engine in ("fake", "real"):
        al = results.get(f"alternate_{engine}")
        if al:
            value = mid(al["difference_ms"])
            same = al["within_spread"] or (value is not None and value <= 0)
            rows.append(
                target(
                    f"7. alternation ({engine} engine)",
                    "added latency, alternating 2 loaded models = "
                    "single model (difference within the spread), no engine start",
                    value,
                    value is not None and same and al["all_ok"] and al["engine_starts_during_measurement"] == 0,
                    _alternate_shown(al),
                )
            )
    for engine in ("fake", "real"):
        sg = results.get(f"starting_{engine}")
        if sg:
            value = mid(sg["gateway_more_ms"])
            rows.append(
                target(
                    f"8. while another starts ({engine} engine)",
                    "request to a loaded model while another "
                    "model starts: median <= 5 ms more than with nothing starting",
                    value,
                    value is not None and value <= 5 and sg["all_ok"],
                    f"{fmt(sg['gateway_more_ms'], 2)} ms (gateway's own part: {fmt(sg['added_more_ms'], 2)} ms)",
                )
            )
    return rows


def _alternate_shown(al: dict[str, Any]) -> str:
    diff = mid(al["difference_ms"]) or 0.0
    verdict = (
        "within the spread"
        if al["within_spread"]
        else ("lower, outside the spread" if diff <= 0 else "higher, outside the spread")
    )
    return (
        f"(a) {fmt(al['single']['added_ms']['median'], 2)}, (b) {fmt(al['alternating']['added_ms']['median'], 2)}"
        f" ms; (b) - (a) {fmt(al['difference_ms'], 2)} ms, {verdict}; "
        f"engine starts during: {al['engine_starts_during_measurement']}"
    )


def section(results: Results) -> str:
    md = []
    alternates = [results[k] for k in ("alternate_fake", "alternate_real") if k in results]
    if alternates:
        md += ["## 7. Alternating between two loaded models\n", ALTERNATE_METHOD, *map(_alternate_md, alternates)]
    startings = [results[k] for k in ("starting_fake", "starting_real") if k in results]
    if startings:
        md += ["## 8. A loaded model while another starts\n", STARTING_METHOD, *map(_starting_md, startings)]
    return "\n".join(md)


def _alternate_md(al: dict[str, Any]) -> str:
    rows = []
    for mode, label in (("single", "(a) single model (A only)"), ("alternating", "(b) alternating A, B, A, B...")):
        m = al[mode]
        rows.append(
            [
                label,
                fmt(m["direct_ms"], 3),
                fmt(m["gateway_ms"], 3),
                f"**{fmt(m['added_ms']['median'], 3)}**",
                fmt(m["added_ms"]["p99"], 3),
            ]
        )
    verdict = "within" if al["within_spread"] else "outside"
    starts = al["engine_starts"]
    fake = f", fake engines' event files {starts['fake_events']}" if starts.get("fake_events") else ""
    return (
        f"### {al['engine']} engine\n\n{al['requests_per_block']} gateway requests (and as many direct) per block, "
        f"{al['repeats']} repeats, `max_tokens` {al['max_tokens']}.\n\n"
        + table(["requests", "direct median ms", "gateway median ms", "added median ms", "added p99 ms"], rows)
        + f"\n(b) - (a), per repeat: **{fmt(al['difference_ms'], 3)} ms**, {verdict} the spread of the two "
        f"(the min-max ranges of (a) and (b) {'overlap' if al['within_spread'] else 'do not overlap'}). "
        f"Engine starts: gateway log {starts['gateway_log']}{fake} (the loads before measuring, nothing else); "
        f"/running read {al['checks']} times (after loading, after the warm-up, after every block): the same pids "
        f"{al['pids']}, both `ready`, nothing queued.\n"
    )


def _starting_md(sg: dict[str, Any]) -> str:
    pool = sg["pooled"]
    rows = []
    for phase, label in (("idle", "nothing starting"), ("starting", "while B starts")):
        gw, direct = pool[phase]["gateway"], pool[phase]["direct"]
        rows.append([label, gw["n"], fmt(direct, 3), fmt(gw, 3), f"{gw['p99']:.3f}", fmt(sg[f"{phase}_added_ms"], 3)])
    how = (
        f"fake engine, B with `--fake-load-delay {sg['load_delay_s']:g}`"
        if sg["engine"] == "fake"
        else "real llama-server, B's real load"
    )
    samples = sg["samples"]
    return (
        f"### {sg['engine']} engine\n\n{how}; {sg['rounds']} rounds; B's start as the benchmark saw it (load "
        f"sent to load answered): {fmt(sg['b_start_s'], 3)} s. Pairs kept: {samples['idle']} idle, "
        f"{samples['starting']} while B started (dropped: {samples['dropped_idle']} idle, "
        f"{samples['dropped_starting']} during which B's start ended).\n\n"
        + table(
            [
                "A's small request",
                "pairs",
                "direct ms (all pairs)",
                "gateway ms (all pairs)",
                "gateway p99 ms",
                "added ms (per round)",
            ],
            rows,
        )
        + f"\nPer round, starting - idle: gateway **{fmt(sg['gateway_more_ms'], 3)} ms** (the target's figure); "
        f"direct {fmt(sg['direct_more_ms'], 3)} ms (the engine itself, sharing the machine with B's start); "
        f"gateway's own part (added while starting - added idle) {fmt(sg['added_more_ms'], 3)} ms.\n"
        + _starting_cpu(sg)
    )


def _starting_cpu(sg: dict[str, Any]) -> str:
    cpu = sg.get("gateway_cpu_ms_per_pair")
    if not cpu:
        return ""
    text = (
        f"\nGateway CPU time over a phase per pair sent (psutil; its request work plus whatever else it does "
        f"meanwhile): idle {fmt(cpu['idle'], 3)} ms, while B starts {fmt(cpu['starting'], 3)} ms"
    )
    if sg.get("readiness_probes_per_start") is not None:
        text += f"; the gateway probed B's `/health` {sg['readiness_probes_per_start']:g} times per start"
    return text + ".\n"


def headlines(results: Results) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for engine in ("fake", "real"):
        al = results.get(f"alternate_{engine}")
        if al:
            for mode in ("single", "alternating"):
                out[f"alternate_{engine}.{mode}.added_ms"] = al[mode]["added_ms"]["median"]["median"]
            out[f"alternate_{engine}.difference_ms"] = al["difference_ms"]["median"]
        sg = results.get(f"starting_{engine}")
        if sg:
            for key in ("gateway_more_ms", "direct_more_ms", "added_more_ms"):
                out[f"starting_{engine}.{key}"] = sg[key]["median"]
    return out


def plot(results: Results, path: Path) -> bool:
    """7: added latency single vs alternating; 8: what B's start adds, gateway and direct."""
    import matplotlib.pyplot as plt

    alternates = [results[k] for k in ("alternate_fake", "alternate_real") if k in results]
    startings = [results[k] for k in ("starting_fake", "starting_real") if k in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    if alternates:
        _bars(
            ax1,
            [
                (
                    f"{al['engine']} engine",
                    [
                        ("(a) single model", al["single"]["added_ms"]["median"]),
                        ("(b) alternating A, B", al["alternating"]["added_ms"]["median"]),
                    ],
                )
                for al in alternates
            ],
        )
    ax1.set_ylabel("gateway - direct, ms (median per block)", fontsize=7)
    ax1.set_title("7. added latency, two loaded models", fontsize=9)
    if startings:
        _bars(
            ax2,
            [
                (
                    f"{sg['engine']} engine",
                    [
                        ("gateway (target)", sg["gateway_more_ms"]),
                        ("direct (the engine)", sg["direct_more_ms"]),
                        ("gateway's own part", sg["added_more_ms"]),
                    ],
                )
                for sg in startings
            ],
        )
        ax2.axhline(5, ls="--", color="gray", lw=1)
    ax2.set_ylabel("while B starts - idle, ms (per round)", fontsize=7)
    ax2.set_title("8. request to A while B starts", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def _bars(ax: Any, groups: list[tuple[str, list[tuple[str, dict[str, Any]]]]]) -> None:
    """Grouped bars of spreads (median, min-max error bars), one group per engine."""
    width = 0.8 / max(len(series) for _, series in groups)
    for g, (_, series) in enumerate(groups):
        for i, (label, sp) in enumerate(series):
            med = sp["median"]
            ax.bar(
                g + i * width,
                med,
                width,
                yerr=[[med - sp["min"]], [sp["max"] - med]],
                capsize=3,
                color=f"C{i}",
                label=label if g == 0 else None,
            )
    ax.set_xticks(
        [g + width * (len(s) - 1) / 2 for g, (_, s) in enumerate(groups)], [name for name, _ in groups], fontsize=8
    )
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(fontsize=7)


def blockers(results: Results, row: Target) -> str:
    engine = "real" if "real" in row["benchmark"] else "fake"
    if row["benchmark"].startswith("7."):
        al = results[f"alternate_{engine}"]
        return (
            f" Gateway medians: single {fmt(al['single']['gateway_ms'], 3)} ms, alternating "
            f"{fmt(al['alternating']['gateway_ms'], 3)} ms; direct: {fmt(al['single']['direct_ms'], 3)} and "
            f"{fmt(al['alternating']['direct_ms'], 3)} ms. Engine starts in the gateway log: "
            f"{al['engine_starts']['gateway_log']}."
        )
    sg = results[f"starting_{engine}"]
    return (
        f" Of that, the engine itself (direct requests to the same process, same moments) is "
        f"{fmt(sg['direct_more_ms'], 2)} ms slower while the other engine starts; the gateway's own part "
        f"(added while starting - added idle) is {fmt(sg['added_more_ms'], 2)} ms."
    )
