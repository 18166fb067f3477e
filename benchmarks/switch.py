"""1. Switch time: alternate two models, and two variants of one model; cold first requests.

Every round runs the same sequences three ways, one after the other:

* direct: the benchmark itself stops the old engine (SIGTERM, wait for exit), spawns the new one
  with the same binary and args the gateway uses, polls ``/health`` every 5 ms, sends the request;
  each part is timed (stop, spawn-to-healthy, first request);
* gateway: the same requests to ``python -m llmgw`` (which does all that itself);
* router (real engine only): llama-server's own router mode (``--models-preset`` INI with the
  same two models, ``--models-max 1``), models named by their INI section.

Gateway added cost of a switch = switch latency - median direct spawn-to-healthy - median direct
first request (the issue's definition; the old engine's stop time is therefore counted as
gateway cost, and reported on its own too). ``vs_direct`` is latency - median direct end-to-end
switch (stop + spawn + request), the like-for-like comparison.
"""

from __future__ import annotations

import datetime
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.client import Connection, wait_http_ok
from benchmarks.common import Ctx, chat, words
from benchmarks.harness import (
    HOST,
    DirectEngine,
    EngineSpec,
    GatewayProc,
    ModelSpec,
    Proc,
    fake_engine,
    free_port,
    real_engine,
)
from benchmarks.stats import median, ms, spread, summary

PATH = "/v1/chat/completions"
KINDS = ("cold", "model_switch", "variant_switch")


@dataclass
class SwitchParams:
    rounds: int = 3  # each round: 1 cold + 2 model switches, 1 cold + 1 variant switch, per path
    router: bool = True  # real engine only


@dataclass
class Step:
    kind: str  # cold | model_switch | variant_switch
    model: str
    spec: EngineSpec
    body: dict[str, Any]


def _setup(ctx: Ctx, engine: str) -> tuple[list[ModelSpec], list[Step], list[Step], dict[str, Any]]:
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


async def _direct(ctx: Ctx, steps: list[Step], tag: str) -> list[dict[str, Any]]:
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


async def _via(conn: Connection, steps: list[Step], names: dict[str, str] | None = None) -> list[dict[str, Any]]:
    out = []
    for st in steps:
        body = dict(st.body, model=(names or {}).get(st.model, st.model))
        resp = await conn.request("POST", PATH, body, timeout=300)
        out.append({"kind": st.kind, "model": st.model, "status": resp.status, "total_ms": ms(resp.total)})
    return out


async def _router(ctx: Ctx, steps: list[Step], round_no: int) -> list[dict[str, Any]]:
    """llama-server router mode: one INI section per model (the same gguf under two names)."""
    assert ctx.real is not None
    ini = ctx.workdir / "router-models.ini"
    sections = []
    for name in ("A", "B"):
        spec = next(s.spec for s in steps if s.model == name)
        context = spec.args[spec.args.index("-c") + 1]
        sections.append(f"[{name}]\nmodel = {ctx.real.model}\nctx-size = {context}\nparallel = 1\nthreads = 1\n")
    ini.write_text("\n".join(sections))
    port = free_port()
    argv = [ctx.real.binary, "--models-preset", str(ini), "--models-max", "1", "--host", HOST, "--port", str(port),
            "--no-webui"]
    router = Proc(argv, ctx.workdir / f"router-{round_no}.log", ctx.real.env)
    router.start()
    try:
        await wait_http_ok(HOST, port, "/health", 60)
        async with Connection(HOST, port) as conn:
            return await _via(conn, steps)
    finally:
        await router.stop()


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
                row = {"stop_ms": stop, "spawn_to_ready_ms": spawn, "rest_ms": total - stop - spawn,
                       "request_time_ms": total}
                if engine_ready is not None and start is not None:
                    row["engine_ready_ms"] = engine_ready
                out.append(row)
            stop0 = stop1 = start = engine_ready = None
    return out


def _analyse(direct: list[dict[str, Any]], via: list[dict[str, Any]]) -> dict[str, Any]:
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


def _direct_summary(direct: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in KINDS:
        d = [r for r in direct if r["kind"] == kind]
        if d:
            out[kind] = {
                "samples": len(d),
                "all_ok": all(r["status"] == 200 for r in d),
                **{key: spread([r[key] for r in d], 1) for key in ("stop_ms", "spawn_to_healthy_ms", "request_ms",
                                                                   "total_ms")},
            }
    return out


async def _check_variant(gw: GatewayProc, context: int) -> None:
    """The variant sequence must have ended on the large variant, or it measured no switch."""
    async with gw.connection() as conn:
        engines = (await conn.request("GET", "/running", timeout=10)).json().get("engines") or [{}]
        engine = engines[-1]
    if engine.get("context") != context:
        raise RuntimeError(f"expected the large variant (context {context}) to run, /running says {engine}")


async def run_switch(ctx: Ctx, engine: str, params: SwitchParams) -> dict[str, Any]:
    models, alternation, variants, setup = _setup(ctx, engine)
    vl_context = setup["contexts"][1]
    direct: list[dict[str, Any]] = []
    gateway: list[dict[str, Any]] = []
    router: list[dict[str, Any]] = []
    use_router = engine == "real" and params.router
    gw = GatewayProc(ctx.workdir, models, name=f"gw-switch-{engine}", profile=ctx.profile_path(f"switch-{engine}"))
    await gw.start()
    try:
        for r in range(params.rounds):
            ctx.log(f"switch/{engine}: round {r + 1}/{params.rounds}")
            # Direct first: the gateway holds no engine between its sequences (unload), so ports are free.
            direct += await _direct(ctx, alternation, f"{engine}-alt-{r}")
            direct += await _direct(ctx, variants, f"{engine}-var-{r}")
            async with gw.connection() as conn:
                await gw.unload()
                gateway += await _via(conn, alternation)
                await gw.unload()
                gateway += await _via(conn, variants)
                await _check_variant(gw, vl_context)
                await gw.unload()
            if use_router:
                router += await _router(ctx, alternation, r)
    finally:
        await gw.stop()
    breakdown = gateway_log_breakdown(gw.proc.log_path)
    if len(breakdown) == len(gateway):
        for row, logged in zip(gateway, breakdown, strict=True):
            row["log"] = logged
    result: dict[str, Any] = {
        "engine": engine,
        "setup": setup,
        "rounds": params.rounds,
        "direct": _direct_summary(direct),
        "gateway": _analyse(direct, gateway),
        "raw": {"direct": direct, "gateway": gateway},
    }
    if use_router:
        result["router"] = _analyse(direct, router)
        result["raw"]["router"] = router
    return result
