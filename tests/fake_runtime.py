"""A Runtime for EngineManager tests: no processes, starts and stops the test controls.

It checks what a real machine would punish: two engines on one address, more engines than
allowed, an engine stopped while requests still use it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from llmgw.config import ModelConfig, Variant
from llmgw.errors import EngineStartError, ShuttingDown
from llmgw.runtime import RunningEngine, Usage
from llmgw.upstream.client import EngineClient

_pids = itertools.count(50_000)


@dataclass
class FakeProcess:
    pid: int | None = field(default_factory=lambda: next(_pids))
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    uptime: float = 0.0

    @property
    def is_running(self) -> bool:
        return not self.exited.is_set()

    def get_status(self) -> str:
        return "stopped" if self.exited.is_set() else "running"


class FakeRuntime:
    def __init__(self, max_engines: int | None = None) -> None:
        self.max_engines = max_engines
        self.running: dict[str, RunningEngine] = {}  # address -> engine
        self.starts: list[str] = []
        self.stops: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}  # model name -> start completes when set
        self.fail: set[str] = set()  # model names whose starts fail
        self.usage: dict[str, Usage] = {}  # model name -> what measure() reports
        self.in_use: dict[int, int] = {}  # id(engine) -> leases the test holds on it
        self.crash_hooks: dict[int, Callable[[], None]] = {}
        self.violations: list[str] = []
        self.closed = False
        self.frozen: set[str] = set()  # models whose engines stop answering
        self.killed: list[str] = []

    def gate(self, name: str) -> asyncio.Event:
        """Starts of ``name`` now wait until the returned event is set."""
        self.gates[name] = asyncio.Event()
        return self.gates[name]

    async def start(self, model: ModelConfig, variant: Variant, on_crash: Callable[[], None]) -> RunningEngine:
        if self.closed:
            raise ShuttingDown("closed")
        if variant.address in self.running:
            self.violations.append(f"{model.name}: {variant.address} already in use")
        self.starts.append(model.name)
        gate = self.gates.get(model.name)
        if gate is not None:
            await gate.wait()
        if model.name in self.fail:
            raise EngineStartError(f"model {model.name!r}: fake start failure")
        if self.closed:
            raise ShuttingDown("closed")
        engine = RunningEngine(model, variant, FakeProcess(), cast(EngineClient, None), variant.context)
        self.running[variant.address] = engine
        if self.max_engines is not None and len(self.running) > self.max_engines:
            self.violations.append(f"{len(self.running)} engines running: {sorted(self.running)}")
        self.crash_hooks[id(engine)] = on_crash
        return engine

    async def responsive(self, engine: RunningEngine, timeout: float) -> bool:
        return engine.process.is_running and engine.model.name not in self.frozen

    async def stop(self, engine: RunningEngine, kill: bool = False, hung: bool = False) -> None:
        if hung:
            self.killed.append(engine.model.name)
        if self.in_use.get(id(engine)) and engine.process.is_running and not hung:  # only a hung one is killed
            self.violations.append(f"{engine.model.name} stopped with {self.in_use[id(engine)]} request(s) on it")
        self.stops.append(engine.model.name)
        await asyncio.sleep(0)
        cast(FakeProcess, engine.process).exited.set()
        if self.running.get(engine.variant.address) is engine:
            del self.running[engine.variant.address]

    async def measure(self, engine: RunningEngine) -> Usage | None:
        return self.usage.get(engine.model.name)

    def close(self) -> None:
        self.closed = True
        for gate in self.gates.values():
            gate.set()

    def crash(self, name: str) -> None:
        engine = next(e for e in self.running.values() if e.model.name == name)
        cast(FakeProcess, engine.process).exited.set()
        del self.running[engine.variant.address]
        self.crash_hooks[id(engine)]()

    def names(self) -> list[str]:
        return sorted(engine.model.name for engine in self.running.values())

    def use(self, engine: RunningEngine, delta: int) -> None:
        self.in_use[id(engine)] = self.in_use.get(id(engine), 0) + delta


async def settle() -> None:
    """Let every ready callback and task run (bounded)."""
    for _ in range(20):
        await asyncio.sleep(0)


def as_any(value: Any) -> Any:
    return value
