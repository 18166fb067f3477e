"""The runtime seam: how an engine is started, stopped and measured, whatever runs it.

The scheduler decides *what* runs; a :class:`Runtime` makes it so. The gateway uses
:class:`~llmgw.runtime.local.ProcessRuntime` (local ``llama-server`` processes); tests drive
the scheduler with a fake runtime, without processes or sockets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from llmgw.config import ModelConfig, Variant
from llmgw.upstream.client import EngineClient


@dataclass(frozen=True)
class Usage:
    """Memory an engine was seen using: RSS of its process tree, GPU memory per device index (MiB),
    and what each RPC worker it uses holds for it (the worker's RSS plus GPU, as its agent reports)."""

    rss_mib: float
    gpu_mib: Mapping[int, float] = field(default_factory=dict)
    remote: Mapping[str, float] = field(default_factory=dict)  # worker name -> MiB


class ProcessView(Protocol):
    """What the layers above read of an engine's process (EngineProcess, or a test double)."""

    @property
    def pid(self) -> int | None: ...

    @property
    def is_running(self) -> bool: ...

    @property
    def exited(self) -> asyncio.Event: ...

    @property
    def uptime(self) -> float: ...

    def get_status(self) -> str: ...


@dataclass(eq=False)
class RunningEngine:
    """A ready engine: its process, the HTTP client that talks to it, and the context it gives."""

    model: ModelConfig
    variant: Variant
    process: ProcessView
    client: EngineClient
    n_ctx: int  # context per request as the engine reports it (may differ from variant.context)
    started_at: float = field(default_factory=time.time)
    workers: Mapping[str, int | None] = field(default_factory=dict)  # RPC worker -> its pid at the start


class Runtime(Protocol):
    async def start(self, model: ModelConfig, variant: Variant, on_crash: Callable[[], None]) -> RunningEngine:
        """Start the engine and return once it answers requests.

        Raises EngineStartError / EngineStartTimeout (and ShuttingDown after :meth:`close`);
        whatever was started is stopped again before the error is raised. ``on_crash`` is
        called if the engine later exits without being stopped.
        """

    async def stop(self, engine: RunningEngine, kill: bool = False, hung: bool = False) -> None:
        """Stop the engine; returns once it is gone. ``kill``: SIGKILL at once, without a grace
        period (after its slots are saved); ``hung``: it no longer answers, so nothing is asked of
        it first either."""

    async def responsive(self, engine: RunningEngine, timeout: float) -> bool:
        """True when the engine answers HTTP at all within ``timeout`` (any status: a busy or flapping
        engine is alive; a stopped process or a stuck GPU is not)."""

    async def measure(self, engine: RunningEngine) -> Usage | None:
        """Memory the engine uses now; None if it cannot be measured."""

    def close(self) -> None:
        """Shutting down: engines still loading stop waiting and fail with ShuttingDown."""
