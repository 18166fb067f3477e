"""What a node says of itself: its models, which are loaded and how busy, its memory, whether it
drains. The same shape for this node (built from the scheduler, llmgw.proxy.node) and for a
peer (read from its ``GET /api/state``, or from a plain server's ``GET /v1/models``).

A peer's answer is untrusted input: :func:`parse_state` takes what it recognises, bounds every
figure and string, and raises :class:`StateError` for anything that is not a node's state, so a
confused or hostile peer can cost a failed refresh, never a crash or unbounded memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

MAX_MODELS = 4096  # models taken from one peer's answer; the rest are ignored
MAX_NAME = 256  # longest model name or alias kept
MAX_ALIASES = 64
MAX_COUNT = 1_000_000  # in-flight, queued, slots: a larger figure is clamped

LLMGW = "llmgw"  # a peer that answers GET /api/state
OPENAI = "openai"  # any other OpenAI-compatible server: its /v1/models and /health only


class StateError(Exception):
    """The answer is not a node's state."""


class Start(StrEnum):
    """Could the node start the model's engine now (placement, as the node itself judges it)?"""

    FITS = "fits"  # beside what runs, nothing stops
    EVICTS = "evicts"  # idle engines would be stopped to make room
    WAITS = "waits"  # busy or pinned engines are in the way: it would queue


@dataclass(frozen=True)
class ModelState:
    name: str
    aliases: tuple[str, ...] = ()
    capabilities: tuple[str, ...] | None = None  # route families it serves (None: all)
    contexts: tuple[int, ...] = ()  # its variants' contexts, smallest first
    loaded: bool = False  # an engine is ready and takes new requests
    loading: bool = False  # an engine is starting
    context: int | None = None  # the loaded (or loading) engine's context
    slots: int = 1  # requests the loaded engine serves at once
    in_flight: int = 0  # requests it serves now
    queued: int = 0  # requests waiting for an engine of it
    start: Start = Start.WAITS

    def answers_to(self, name: str) -> bool:
        return name == self.name or name in self.aliases

    def serves(self, capability: str | None) -> bool:
        return capability is None or self.capabilities is None or capability in self.capabilities

    @property
    def room(self) -> bool:
        """Loaded with a free slot and nobody waiting: a request starts at once."""
        return self.loaded and self.queued == 0 and self.in_flight < self.slots

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "capabilities": list(self.capabilities) if self.capabilities is not None else None,
            "contexts": list(self.contexts),
            "loaded": self.loaded,
            "loading": self.loading,
            "context": self.context,
            "slots": self.slots,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "start": self.start.value,
        }


@dataclass(frozen=True)
class Pool:
    """One memory pool of a node: its budget and what its engines use, in MiB."""

    budget: float
    used: float

    @property
    def free(self) -> float:
        return max(self.budget - self.used, 0.0)


@dataclass(frozen=True)
class NodeState:
    node: str
    kind: str = LLMGW
    version: str = ""
    draining: bool = False  # shutting down: send it nothing new
    models: tuple[ModelState, ...] = ()
    engines: int = 0  # engines running (any state)
    max_engines: int = 0
    memory: dict[str, Pool] = field(default_factory=dict)

    def model(self, name: str) -> ModelState | None:
        """The model called (or aliased) ``name``."""
        return self._by_name.get(name)

    @cached_property
    def _by_name(self) -> dict[str, ModelState]:
        """Names and aliases, the first model to claim a name keeping it (as a scan in order would)."""
        index: dict[str, ModelState] = {}
        for model in self.models:
            for name in (model.name, *model.aliases):
                index.setdefault(name, model)
        return index

    @property
    def in_flight(self) -> int:
        return sum(model.in_flight for model in self.models)

    @property
    def queued(self) -> int:
        return sum(model.queued for model in self.models)

    def names(self) -> list[str]:
        """Every name it answers to: model names and aliases."""
        return [name for model in self.models for name in (model.name, *model.aliases)]

    def to_json(self) -> dict[str, Any]:
        return {
            "llmgw": self.version,
            "node": self.node,
            "draining": self.draining,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "engines": self.engines,
            "max_engines": self.max_engines,
            "memory": {
                pool: {"budget_mib": round(p.budget, 1), "used_mib": round(p.used, 1), "free_mib": round(p.free, 1)}
                for pool, p in self.memory.items()
            },
            "models": [model.to_json() for model in self.models],
        }


# ---------------------------------------------------------------------------------- parsing


def _count(value: Any, default: int = 0, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    if isinstance(value, float) and not math.isfinite(value):
        return default
    return min(max(int(value), minimum), MAX_COUNT)


def _mib(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return min(max(float(value), 0.0), 1e12)


def _name(value: Any) -> str | None:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        return None
    return value


def _names(value: Any, limit: int) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    names = (_name(item) for item in value[:limit])
    return tuple(dict.fromkeys(name for name in names if name is not None))


_STARTS = frozenset(start.value for start in Start)


def _model(data: Any) -> ModelState | None:
    if not isinstance(data, dict):
        return None
    name = _name(data.get("name"))
    if name is None:
        return None
    capabilities = data.get("capabilities")
    raw_start = data.get("start")
    start = Start(raw_start) if isinstance(raw_start, str) and raw_start in _STARTS else Start.WAITS
    contexts = data.get("contexts")
    context = data.get("context")
    return ModelState(
        name=name,
        aliases=_names(data.get("aliases"), MAX_ALIASES),
        capabilities=_names(capabilities, 64) if isinstance(capabilities, list) else None,
        contexts=tuple(sorted(_count(c) for c in contexts[:64])) if isinstance(contexts, list) else (),
        loaded=data.get("loaded") is True,
        loading=data.get("loading") is True,
        context=_count(context) if context is not None else None,
        slots=_count(data.get("slots"), default=1, minimum=1),
        in_flight=_count(data.get("in_flight")),
        queued=_count(data.get("queued")),
        start=start,
    )


def parse_state(data: Any) -> NodeState:
    """A peer's ``GET /api/state`` answer (parsed JSON)."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), list) or "node" not in data:
        raise StateError("not an llmgw state (an object with 'node' and 'models')")
    node = _name(data.get("node")) or "?"
    models = [model for model in map(_model, data["models"][:MAX_MODELS]) if model is not None]
    memory: dict[str, Pool] = {}
    raw_memory = data.get("memory")
    if isinstance(raw_memory, dict):
        for pool, figures in list(raw_memory.items())[:64]:
            if isinstance(pool, str) and isinstance(figures, dict):
                memory[pool[:MAX_NAME]] = Pool(_mib(figures.get("budget_mib")), _mib(figures.get("used_mib")))
    version = data.get("llmgw")
    return NodeState(
        node=node,
        kind=LLMGW,
        version=version[:64] if isinstance(version, str) else "",
        draining=data.get("draining") is True,
        models=tuple(models),
        engines=_count(data.get("engines")),
        max_engines=_count(data.get("max_engines")),
        memory=memory,
    )


def parse_model_list(name: str, data: Any) -> NodeState:
    """A plain OpenAI-compatible server's ``GET /v1/models``. It says nothing of what is loaded:
    every model it lists counts as loaded, with one slot (what the gateway sends it is the load)."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise StateError("not an OpenAI model list (an object with 'data')")
    models: dict[str, ModelState] = {}
    for entry in data["data"][:MAX_MODELS]:
        model_id = _name(entry.get("id")) if isinstance(entry, dict) else None
        if model_id is not None and model_id not in models:
            models[model_id] = ModelState(name=model_id, loaded=True, slots=1, start=Start.WAITS)
    return NodeState(node=name, kind=OPENAI, models=tuple(models.values()))
