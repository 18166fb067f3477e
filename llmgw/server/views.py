"""What the read-only routes show: the model list, one model, the engines and the queue, health.

Plain functions of the config and the engine manager, so the handlers stay thin.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from llmgw.config import Config, ModelConfig
from llmgw.errors import ModelNotFound, echo
from llmgw.runtime import RunningEngine
from llmgw.scheduling import EngineManager
from llmgw.scheduling.scheduler import EngineRecord, EngineState
from llmgw.server.status import StatusTracker


def model_entry(
    config: Config,
    manager: EngineManager,
    model: ModelConfig,
    name: str,
    created: int,
    watch: StatusTracker | None = None,
) -> dict[str, Any]:
    """One model as OpenAI lists it, with its context (largest variant) and variants; ``name`` is the
    name or the alias it is listed under. ``status`` is llama.cpp router's (``value``: unloaded,
    loading, loaded or stopping), so clients written for the router (Open WebUI) show it."""
    contexts = sorted(manager.effective_context(model, v) for v in model.variants)
    entry: dict[str, Any] = {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "llmgw",
        "context_length": contexts[-1],
        "aliases": list(model.aliases),
        "meta": {"n_ctx": contexts[-1], "variants": contexts},
    }
    if name != model.name:
        entry["alias_of"] = model.name
    if watch is not None:
        entry["status"] = watch.status(model)
    return entry


def models_list(
    config: Config, manager: EngineManager, created: int, watch: StatusTracker | None = None
) -> dict[str, Any]:
    data = []
    for model in config.models:
        data.append(model_entry(config, manager, model, model.name, created, watch))
        if config.server.list_aliases:
            data.extend(model_entry(config, manager, model, alias, created, watch) for alias in model.aliases)
    return {"object": "list", "data": data}


def model_view(
    config: Config, manager: EngineManager, name: str, created: int, watch: StatusTracker | None = None
) -> dict[str, Any]:
    model = config.model(name)
    if model is None:
        raise ModelNotFound(f"model {echo(name)} does not exist")
    return model_entry(config, manager, model, name, created, watch)


def engine_view(
    manager: EngineManager, record: EngineRecord[RunningEngine], now: float, watch: StatusTracker | None = None
) -> dict[str, Any]:
    handle = record.handle
    memory, source = manager.memory_of(record)
    return {
        "model": record.model.name,
        "variant": record.variant.index,
        "context": record.n_ctx if record.n_ctx is not None else record.variant.context,
        "pid": handle.process.pid if handle is not None else None,
        "state": record.state.value,
        "memory_mib": {pool: round(mib, 1) for pool, mib in memory.items()},
        "memory_source": source,
        "in_flight": record.in_flight,
        "last_used": round(time.time() - (now - record.last_used), 3) if record.last_used else None,
        "uptime": round(handle.process.uptime, 3) if handle is not None else 0.0,
        "pinned": record.model.pinned,
        "idle_unload_in": _idle_unload_in(record, now),
        **({"stopping_because": record.stop_reason} if record.stop_reason else {}),
        **(
            {"load": watch.load_progress(record, now)}
            if watch is not None and record.state is EngineState.STARTING
            else {}
        ),
    }


def _idle_unload_in(record: EngineRecord[RunningEngine], now: float) -> float | None:
    """Seconds until the idle timeout stops this engine; None when it never will from here (no
    timeout, busy, starting or already stopping)."""
    idle = record.variant.timeouts.engine_idle
    if idle <= 0 or not record.ready or record.busy or record.draining:
        return None
    return round(max(record.last_used + idle - now, 0.0), 1)


def running(manager: EngineManager, watch: StatusTracker | None = None) -> dict[str, Any]:
    """What runs and what waits: GET /running."""
    now = asyncio.get_running_loop().time()
    queue = [
        {
            "model": ticket.model.name,
            "min_context": ticket.min_ctx,
            "waiting": round(now - ticket.arrived, 3),
            "phase": ticket.phase.value,
            **({"blocked_by": ticket.blocked_by} if ticket.blocked_by else {}),
        }
        for ticket in manager.waiting
    ]
    return {
        "engines": [engine_view(manager, record, now, watch) for record in manager.engines],
        "queue": queue,
        "in_flight": manager.in_flight,
        "queued": manager.queued,
    }


def health(manager: EngineManager) -> dict[str, Any]:
    ready = sum(1 for record in manager.engines if record.ready)
    return {"status": "ok", "engines": ready, "in_flight": manager.in_flight, "queued": manager.queued}
