"""Where a gateway's launch and an engine switch spend their time (for whoever works on cutting them).

``python -m benchmarks.breakdown launch``: the launch to listening, taken apart:

* the interpreter alone (``python -c pass``), the gateway's imports (``python -c "import llmgw.__main__"``)
  and ``python -m llmgw --check-config`` (imports and the config load), spawn to exit;
* one launch's phases in a fresh interpreter, by its own clock: interpreter start, imports, the Lua
  config load (and the subprocesses python-lua-helper runs for it), building ``GatewayServer``,
  its ``start()`` up to listening; then the top functions of a cProfile of those phases;
* ``python -X importtime``: the imports that take the longest (cumulative, by top-level package);
* the real thing: ``python -m llmgw -c cfg.lua`` from the spawn to its port accepting connections.

``python -m benchmarks.breakdown switch``: a gateway (real llama-server and gemma-3 270M, or
``--engine fake``) switches between models A and B a few times; each switch is laid out on one
clock from the gateway's own log (ms resolution, wall clock) and the client's send and receive
times: request sent, the old engine told to stop and gone, the new one spawned, its first output
line, its ``listening on`` line (and its own load time, by its log clock), ready in the gateway's
eyes, the access line, the answer at the client. Medians over the switches.

Nothing in ``llmgw/`` is changed: the phases call its public entry points (``ConfigLoader``,
``GatewayServer``) the way ``llmgw/__main__.py`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import chat
from benchmarks.harness import (
    PYTHON,
    ROOT,
    GatewayProc,
    ModelSpec,
    bytecode_cache,
    fake_engine,
    free_port,
    kill_all,
    real_engine,
    real_engine_files,
    write_config,
)
from benchmarks.stats import table
from benchmarks.switch import engine_listening_ms

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# Run in a fresh interpreter: the launch's phases by its own clock, as llmgw/__main__.py runs them.
_PHASES = r"""
import time, sys
t_start = time.time()
p0 = time.perf_counter()
import cProfile, json, subprocess
marks = {}
calls = []
_run = subprocess.run
def timed_run(*args, **kwargs):
    t = time.perf_counter()
    try:
        return _run(*args, **kwargs)
    finally:
        argv = args[0] if args else kwargs.get("args")
        calls.append([" ".join(str(a) for a in argv[:2]), (time.perf_counter() - t) * 1000])
subprocess.run = timed_run
t = time.perf_counter()
import asyncio
import llmgw.__main__
from llmgw.config import ConfigLoader
from llmgw.server import GatewayServer
marks["imports (import llmgw.__main__)"] = time.perf_counter() - t
profile = cProfile.Profile()
profile.enable()
t = time.perf_counter()
config = ConfigLoader(sys.argv[1]).load()
marks["config load (ConfigLoader.load, Lua via python-lua-helper)"] = time.perf_counter() - t
t = time.perf_counter()
gateway = GatewayServer(config)
marks["GatewayServer(config): app and routes"] = time.perf_counter() - t
async def start():
    t = time.perf_counter()
    await gateway.start()
    marks["GatewayServer.start() to listening"] = time.perf_counter() - t
    profile.disable()
    await gateway.stop()
asyncio.run(start())
profile.dump_stats(sys.argv[2])
print(json.dumps({"t_start": t_start, "marks": marks, "lua_calls": calls}))
"""


def _spawn_to_exit(argv: list[str], env: dict[str, str]) -> float:
    """ms from spawn to exit of ``argv`` (which must succeed)."""
    t0 = time.perf_counter()
    subprocess.run(argv, env={**ENV, **env}, check=True, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    return (time.perf_counter() - t0) * 1000


def bytecode_modes(work: Path) -> dict[str, dict[str, str]]:
    """Two ways to run Python: compiling every module at each start (PYTHONDONTWRITEBYTECODE, set here and by
    tox), and with a bytecode cache (kept under ``work``, so the tree is not written)."""
    # An empty variable counts as unset: the first mode compiles llmgw at every start, as tox and this machine do.
    no_cache = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": ""}
    return {"no bytecode cache": no_cache, "bytecode cache": bytecode_cache(work)}


def _med(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} [{min(values):.1f}, {max(values):.1f}]"


def _importtime(top: int, env: dict[str, str]) -> tuple[list[list[Any]], list[list[Any]]]:
    """``python -X importtime``: each package by the cumulative time of its first imports (from outside itself),
    llmgw's own modules by their own time, and the single modules that take the longest by themselves (ms)."""
    proc = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", "import llmgw.__main__"],
        env={**ENV, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    entries = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            entries.append((int(m.group(1)) / 1000, int(m.group(2)) / 1000, len(m.group(3)), m.group(4)))
    # Children come before their parent, one indent deeper: walk backwards keeping the chain of parents.
    packages: dict[str, float] = {}
    chain: list[tuple[int, str]] = []
    for _, cumulative, indent, name in reversed(entries):
        while chain and chain[-1][0] >= indent:
            chain.pop()
        root = name.split(".")[0]
        if root != "llmgw" and (not chain or chain[-1][1] != root):
            packages[root] = packages.get(root, 0.0) + cumulative
        chain.append((indent, root))
    packages["llmgw (its own modules, own time)"] = sum(own for own, _, _, name in entries if name.startswith("llmgw"))
    modules = [(own, name) for own, _, _, name in entries]
    by_package = sorted(packages.items(), key=lambda kv: -kv[1])[:top]
    by_module = sorted(modules, reverse=True)[:top]
    return [[name, f"{ms:.1f}"] for name, ms in by_package], [[name, f"{ms:.1f}"] for ms, name in by_module]


def _profile_top(path: Path, top: int) -> list[list[Any]]:
    """The cProfile's top functions by cumulative time, outside the interpreter's import machinery."""
    import pstats

    stats = pstats.Stats(str(path))
    rows = []
    entries = stats.stats  # type: ignore[attr-defined]
    for (file, line, func), (_, calls, _, cumulative, _) in entries.items():
        if "<frozen importlib" in file or func in ("<module>", "exec") or file == "~":
            continue
        short = file.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
        rows.append((cumulative * 1000, f"{short}:{line} {func}", calls))
    rows.sort(reverse=True)
    return [[name, calls, f"{ms:.1f}"] for ms, name, calls in rows[:top]]


async def _launch(work: Path, models: list[ModelSpec], env: dict[str, str], tag: str) -> dict[str, float]:
    """The real thing: ``python -m llmgw -c cfg.lua``, spawn to accepting and to /health (ms)."""
    gw = GatewayProc(work, models, name=f"launch-{tag}")
    gw.proc.env = {**(gw.proc.env or {}), **env}
    try:
        return await gw.launch()
    finally:
        await gw.stop()


def launch(args: argparse.Namespace, work: Path) -> str:
    files, _ = real_engine_files()
    models = [
        ModelSpec(
            name, [real_engine(files, free_port(), 256, "-t", "1") if files else fake_engine(free_port(), 256, name)]
        )
        for name in ("A", "B")
    ]
    config = write_config(work / "launch.lua", models, free_port())
    n = args.repeats
    modes = bytecode_modes(work)
    commands = {
        "`python -c pass`: spawn to exit (the interpreter's floor)": [PYTHON, "-c", "pass"],
        "`python -c 'import llmgw.__main__'`: spawn to exit": [PYTHON, "-c", "import llmgw.__main__"],
        "`python -m llmgw -c cfg.lua --check-config`: spawn to exit": [
            PYTHON,
            "-m",
            "llmgw",
            "-c",
            str(config),
            "--check-config",
        ],
    }
    spans: dict[tuple[str, str], list[float]] = {}
    for env in modes.values():  # warm-up, not kept: fills the bytecode cache
        _spawn_to_exit([PYTHON, "-c", "import llmgw.__main__"], env)
    for i in range(n):  # the two modes interleaved, so load changes hit both
        for mode, env in modes.items():
            for label, argv in commands.items():
                spans.setdefault((label, mode), []).append(_spawn_to_exit(argv, env))
            launched = asyncio.run(_launch(work, models, env, f"{i}-{len(spans)}"))
            spans.setdefault(("`python -m llmgw -c cfg.lua`: spawn to accepting connections", mode), []).append(
                launched["accept_ms"]
            )
            spans.setdefault(("the same: spawn to `GET /health` answering", mode), []).append(launched["ready_ms"])
    phases: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for i in range(n):
        for m, (mode, env) in enumerate(modes.items()):
            t_spawn = time.time()
            argv = [PYTHON, "-c", _PHASES, str(config), str(work / f"phases-{i}-{m}.prof")]
            out = subprocess.run(argv, env={**ENV, **env}, capture_output=True, text=True, timeout=120, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["interpreter"] = row["t_start"] - t_spawn
            phases[mode].append(row)
    packages, modules = _importtime(args.top, modes["bytecode cache"])
    labels = list(dict.fromkeys(label for label, _ in spans))
    lines = [
        f"# Launch to listening, taken apart ({n} runs each, the two modes interleaved; ms, median [min, max])\n",
        table(["what", *modes], [[label, *(_med(spans[(label, mode)]) for mode in modes)] for label in labels]),
        "\n## One launch's phases in a fresh interpreter (its own clock; config load, app and start under cProfile)\n",
    ]

    def column(pick: Any) -> list[str]:
        return [_med([pick(r) for r in phases[mode]]) for mode in modes]

    first = phases["bytecode cache"][0]
    rows = [["spawn to the first statement (interpreter start, site)", *column(lambda r: r["interpreter"] * 1000)]]
    rows += [[key, *column(lambda r, k=key: r["marks"][k] * 1000)] for key in first["marks"]]
    for j, (name, _) in enumerate(first["lua_calls"]):
        rows.append([f"  of the config load: subprocess `{name}`", *column(lambda r, j=j: r["lua_calls"][j][1])])
    lines.append(table(["phase", *modes], rows))
    lines.append("\n## Imports (`python -X importtime -c 'import llmgw.__main__'`, one run, bytecode cache)\n")
    lines.append(table(["package (where another first imports it)", "cumulative ms (with what it imports)"], packages))
    lines.append("\n" + table(["module", "own ms"], modules))
    lines.append("\n## cProfile of the config load, the app and its start (first run; cumulative ms)\n")
    lines.append(table(["function", "calls", "cumulative ms"], _profile_top(work / "phases-0-1.prof", args.top)))
    return "\n".join(lines)


# --------------------------------------------------------------------------- switch

_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+\s+(\S+): (.*)$")
EVENTS: tuple[tuple[str, Callable[[str, str], bool]], ...] = (  # (event, test on (logger, message)), in order
    ("stop asked", lambda lg, msg: msg.startswith("stopping engine of model")),
    ("old engine gone", lambda lg, msg: lg.endswith("engine_process") and "] stopped (exit code" in msg),
    ("start decided", lambda lg, msg: msg.startswith("starting model")),
    ("spawned", lambda lg, msg: lg.endswith("engine_process") and "] started pid" in msg),
    ("first engine line", lambda lg, msg: lg.startswith("llmgw.engine.output.")),
    ("engine says listening", lambda lg, msg: lg.startswith("llmgw.engine.output.") and "listening on" in msg),
    ("ready (gateway)", lambda lg, msg: " ready in " in msg and msg.startswith("model ")),
    ("access line", lambda lg, msg: lg == "tornado.access" and "POST /v1/chat/completions" in msg),
)


def _stamp(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def switch_timelines(log: Path, requests: list[tuple[str, float, float]]) -> list[dict[str, Any]]:
    """Per request (model, client send, client end; wall clock): when each event of its switch happened, in ms
    after the send. Events are looked for in their order, each after the one before, among the lines of the
    request's own span (log stamps are cut to the ms, so the span starts 1 ms early); engine output counts
    only from the new engine (the old one's last lines arrive while it stops)."""
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if m:
            lines.append((_stamp(m.group(1)), m.group(2), m.group(3)))
    out = []
    for model, sent, done in requests:
        mine = [x for x in lines if sent - 0.001 <= x[0] <= done]
        row: dict[str, Any] = {"sent": 0.0, "answer at the client": (done - sent) * 1000}
        at = 0
        for event, test in EVENTS:
            for k in range(at, len(mine)):
                stamp, logger, message = mine[k]
                engine_line = logger.startswith("llmgw.engine.output.")
                if engine_line and not logger.startswith(f"llmgw.engine.output.{model}#"):
                    continue
                if test(logger, message):
                    row[event] = (stamp - sent) * 1000
                    at = k
                    break
        new_engine = [x[2] for x in mine if x[1].startswith(f"llmgw.engine.output.{model}#")]
        row["engine load, own clock"] = next((v for x in new_engine if (v := engine_listening_ms(x)) is not None), None)
        out.append(row)
    return out


SEGMENTS = (  # (label, from event, to event)
    ("request sent → stop asked (queue, count, decision)", "sent", "stop asked"),
    ("old engine's stop (SIGTERM to exit seen)", "stop asked", "old engine gone"),
    ("stop seen → start decided", "old engine gone", "start decided"),
    ("start decided → spawned (fork/exec, pid known)", "start decided", "spawned"),
    ("spawned → engine's first output line relayed", "spawned", "first engine line"),
    ("first line → `listening on` relayed (the model load)", "first engine line", "engine says listening"),
    ("`listening on` → ready in the gateway's eyes (probe, /props)", "engine says listening", "ready (gateway)"),
    ("ready → access line (count, forward, the engine's answer)", "ready (gateway)", "access line"),
    ("access line → answer at the client", "access line", "answer at the client"),
    ("(sum) request sent → spawned: the gateway's part before the new engine runs", "sent", "spawned"),
    ("(sum) spawned → ready: the engine's start as the gateway sees it", "spawned", "ready (gateway)"),
)


async def _switches(gw: GatewayProc, n: int, body: dict[str, Any]) -> list[tuple[str, float, float]]:
    """A (cold), then B, A, B... ``n`` switches; (model, send, end) per request, wall clock."""
    out = []
    async with gw.connection() as conn:
        for i in range(n + 1):
            model = "AB"[i % 2]
            sent = time.time()
            resp = await conn.request("POST", "/v1/chat/completions", dict(body, model=model), timeout=300)
            out.append((model, sent, time.time()))
            if resp.status != 200:
                raise RuntimeError(f"request to {model}: {resp.status} {resp.body[:200]!r}")
    return out


def switch(args: argparse.Namespace, work: Path) -> str:
    files, why = (None, "--engine fake") if args.engine == "fake" else real_engine_files()
    if files is None and args.engine == "real":
        raise SystemExit(f"no real engine: {why} (use --engine fake)")
    pa, pb = free_port(), free_port()
    if files is not None:
        a, b = real_engine(files, pa, 256, "-t", "1"), real_engine(files, pb, 256, "-t", "1")
        body = chat("A", "Say hello.", max_tokens=4, temperature=0)
    else:
        a, b = fake_engine(pa, 1024, "A"), fake_engine(pb, 1024, "B")
        body = chat("A", "Say hello.", max_tokens=8)
    gw = GatewayProc(work, [ModelSpec("A", [a]), ModelSpec("B", [b])], name="gw-breakdown", log_level=args.log_level)

    async def go() -> list[tuple[str, float, float]]:
        await gw.start()
        try:
            return await _switches(gw, args.repeats, body)
        finally:
            await gw.stop()

    requests = asyncio.run(go())
    timelines = switch_timelines(gw.proc.log_path, requests)
    cold, switches = timelines[0], timelines[1:]
    rows = []
    for label, start, end in SEGMENTS:
        values = [t[end] - t[start] for t in switches if start in t and end in t]
        first = f"{cold[end] - cold[start]:.1f}" if start in cold and end in cold else "-"
        rows.append([label, _med(values), first])
    rows.append(
        ["**total**", _med([t["answer at the client"] for t in switches]), f"{cold['answer at the client']:.1f}"]
    )
    own = [t["engine load, own clock"] for t in switches if t["engine load, own clock"] is not None]
    engine = "llama-server (gemma-3 270M, -t 1)" if files else "fake engine"
    return (
        f"# Where a switch's time goes ({engine}, {len(switches)} switches A↔B; ms, median [min, max])\n\n"
        "Times are the gateway's own log (ms, wall clock) against the client's send and receive times. "
        "The cold column is the first request (no engine yet, so no stop).\n\n"
        + table(["segment", "switches", "cold"], rows)
        + f"\nThe engine's own load time by its log clock (spawn to `listening on`): {_med(own)} ms. "
        f"Gateway log: {gw.proc.log_path}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.breakdown", description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["launch", "switch"])
    parser.add_argument("--repeats", type=int, default=5, help="runs (launch) or switches (switch); default 5")
    parser.add_argument("--top", type=int, default=12, help="rows of the import and profile tables")
    parser.add_argument("--engine", choices=["real", "fake"], default="real", help="switch: which engine")
    parser.add_argument("--log-level", default="INFO", help="switch: the gateway's log level (INFO, as users run it)")
    parser.add_argument("--out", type=Path, help="also write the text here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="llmgw-breakdown-"))
    try:
        text = launch(args, work) if args.what == "launch" else switch(args, work)
    finally:
        kill_all()
    print(text)
    if args.out:
        args.out.write_text(text)
    print(f"(work directory: {work})", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
