"""Runtime layer: engine processes, the process guard, and the Runtime seam the scheduler drives."""

from llmgw.runtime.base import ProcessView, RunningEngine, Runtime, Usage
from llmgw.runtime.engine_process import EngineProcess, EngineStatus
from llmgw.runtime.guard import ProcessGuard
from llmgw.runtime.local import ProcessRuntime

__all__ = [
    "EngineProcess",
    "EngineStatus",
    "ProcessGuard",
    "ProcessRuntime",
    "ProcessView",
    "RunningEngine",
    "Runtime",
    "Usage",
]
