"""What the read-only routes show: the model list, one model, the engines and the queue, health.

A plain class over the configuration, the engine manager and the status tracker, so the
handlers stay thin and the shapes are tested without Tornado.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from llmgw.config import LiveConfig, ModelConfig
from llmgw.errors import BadRequest, EngineNotRunning, ModelNotFound, echo
from llmgw.keys import Principal
from llmgw.peers import ModelState, PeerPool
from llmgw.proxy import LocalNode
from llmgw.runtime import RunningEngine
from llmgw.scheduling import EngineManager
from llmgw.scheduling.scheduler import EngineRecord, EngineState
from llmgw.server.status import StatusTracker


class Views:
    def __init__(
        self,
        live: LiveConfig,
        manager: EngineManager,
        status: StatusTracker,
        created: int,
        node: LocalNode | None = None,
        pool: PeerPool | None = None,
    ) -> None:
        self.live = live
        self.manager = manager
        self.status = status
        self.created = created  # epoch seconds: every model's "created"
        self.node = node
        self.pool = pool

    @property
    def pooled(self) -> bool:
        return self.pool is not None and bool(self.live.current.server.peering.peers)

    def available(self, key: Principal) -> list[str]:
        """Every model name ``key`` may use: this node's, then its peers'."""
        names = [model.name for model in self.models_for(key)]
        if self.pooled:
            assert self.pool is not None
            names += [name for name in sorted(self.pool.serving()) if name not in names and _sees(key, name)]
        return names

    def not_found(self, name: object, key: Principal) -> ModelNotFound:
        return ModelNotFound(f"model {echo(name)} does not exist; available: {', '.join(self.available(key))}")

    def peer_model(self, name: str, key: Principal | None = None) -> bool:
        """A peer lists ``name`` (a request for it is routed, or a 503 while none can take it), and
        ``key`` (if given) may use it."""
        return self.pooled and self.pool is not None and self.pool.knows(name) and (key is None or _sees(key, name))

    def model(self, name: str, key: Principal) -> ModelConfig:
        """The model called (or aliased) ``name``, if ``key`` may use it; 404 otherwise, the same
        for a model that exists but is not the key's (a key learns nothing of other models)."""
        model = self.live.current.model(name)
        if model is None or not key.sees(model):
            raise self.not_found(name, key)
        return model

    def models_for(self, key: Principal) -> list[ModelConfig]:
        """The models ``key`` may use, in the configuration's order: what every listing shows."""
        return [model for model in self.live.current.models if key.sees(model)]

    def model_entry(self, model: ModelConfig, name: str) -> dict[str, Any]:
        """One model as OpenAI lists it, with its context (largest variant) and variants; ``name`` is
        the name or the alias it is listed under. ``status`` is llama.cpp router's (``value``:
        unloaded, loading, loaded or stopping), so clients written for the router (Open WebUI) show it."""
        contexts = sorted(self.manager.effective_context(model, v) for v in model.variants)
        entry: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": "llmgw",
            "context_length": contexts[-1],
            "aliases": list(model.aliases),
            "meta": {"n_ctx": contexts[-1], "variants": contexts},
        }
        if name != model.name:
            entry["alias_of"] = model.name
        entry["status"] = self.status.status(model)
        return entry

    def models_list(self, key: Principal) -> dict[str, Any]:
        config = self.live.current
        data = []
        for model in self.models_for(key):
            data.append(self.model_entry(model, model.name))
            if config.server.list_aliases:
                data.extend(self.model_entry(model, alias) for alias in model.aliases)
        if self.pooled:
            data = self._with_peers(data, key)
        return {"object": "list", "data": data}

    def _with_peers(self, local: list[dict[str, Any]], key: Principal) -> list[dict[str, Any]]:
        """Each entry says where it is served from (this node's name, peers' names); models only
        peers have follow this node's own (those ``key`` may use)."""
        assert self.pool is not None
        serving = self.pool.serving()
        me = self.live.current.server.node_name
        for entry in local:
            entry["served_by"] = [me, *(peer for peer, _ in serving.pop(entry["id"], []))]
        for name, peers in sorted(serving.items()):
            if _sees(key, name):
                local.append(self._peer_entry(name, peers))
        return local

    def _peer_entry(self, name: str, peers: list[tuple[str, ModelState]]) -> dict[str, Any]:
        contexts = sorted({c for _, model in peers for c in model.contexts})
        loaded = any(model.loaded for _, model in peers)
        loading = any(model.loading for _, model in peers)
        entry: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": "llmgw",
            "served_by": [peer for peer, _ in peers],
            "status": {"value": "loaded" if loaded else "loading" if loading else "unloaded"},
        }
        if contexts:
            entry["context_length"] = contexts[-1]
            entry["meta"] = {"n_ctx": contexts[-1], "variants": contexts}
        canonical = {model.name for _, model in peers}
        if canonical != {name}:
            entry["alias_of"] = sorted(canonical)[0]
        return entry

    def model_view(self, name: str, key: Principal) -> dict[str, Any]:
        model = self.live.current.model(name)
        if model is not None and key.sees(model):
            entry = self.model_entry(model, name)
            if self.pooled:
                entry = self._with_peers([entry], key)[0]
            return entry
        if model is None and self.pooled and _sees(key, name):
            assert self.pool is not None
            peers = self.pool.serving().get(name)
            if peers:
                return self._peer_entry(name, peers)
        raise ModelNotFound(f"model {echo(name)} does not exist")

    def api_state(self, key: Principal) -> dict[str, Any]:
        """GET /api/state: this node's models (those ``key`` may use), engines, queue, memory and
        draining flag (what its peers route by), and its own peers' breakers."""
        assert self.node is not None and self.pool is not None
        state = self.node.state(key.sees).to_json()
        state["peers"] = [
            {"name": view["name"], "breaker": view["breaker"]["state"], "draining": view["draining"]}
            for view in self.pool.views()
        ]
        return state

    def engine_view(self, record: EngineRecord[RunningEngine], now: float | None = None) -> dict[str, Any]:
        now = asyncio.get_running_loop().time() if now is None else now
        handle = record.handle
        memory, source = self.manager.memory_of(record)
        view: dict[str, Any] = {
            "model": record.model.name,
            "variant": record.variant.index,
            "context": record.n_ctx if record.n_ctx is not None else record.variant.slot_context,
            "pid": handle.process.pid if handle is not None else None,
            "state": record.state.value,
            "memory_mib": {pool: round(mib, 1) for pool, mib in memory.items()},
            "memory_source": source,
            "memory_estimate_mib": _rounded(self.manager.memory.estimate_of(record.model, record.variant)),
            "memory_measured_mib": _rounded(self.manager.memory.measured_of(record.model, record.variant)),
            "in_flight": record.in_flight,
            "last_used": round(time.time() - (now - record.last_used), 3) if record.last_used else None,
            "uptime": round(handle.process.uptime, 3) if handle is not None else 0.0,
            "pinned": record.model.pinned,
            "idle_unload_in": _idle_unload_in(record, now),
        }
        if record.stop_reason:
            view["stopping_because"] = record.stop_reason
        if record.state is EngineState.STARTING:
            view["load"] = self.status.load_progress(record, now)
        return view

    def running(self) -> dict[str, Any]:
        """What runs and what waits: GET /running."""
        manager = self.manager
        now = asyncio.get_running_loop().time()
        queue = [
            {
                "model": ticket.model.name,
                "min_context": ticket.min_ctx,
                "priority": ticket.priority.value,
                "waiting": round(now - ticket.arrived, 3),
                "phase": ticket.phase.value,
                **({"blocked_by": ticket.blocked_by} if ticket.blocked_by else {}),
            }
            for ticket in manager.waiting
        ]
        running: dict[str, Any] = {
            "engines": [self.engine_view(record, now) for record in manager.engines],
            "queue": queue,
            "in_flight": manager.in_flight,
            "queued": manager.queued,
        }
        if self.pooled:
            assert self.pool is not None
            running["node"] = self.live.current.server.node_name
            running["peers"] = self.pool.views()
        return running

    def health(self) -> dict[str, Any]:
        manager = self.manager
        ready = sum(1 for record in manager.engines if record.ready)
        status = "draining" if self.node is not None and self.node.draining else "ok"
        return {"status": status, "engines": ready, "in_flight": manager.in_flight, "queued": manager.queued}

    def running_engine_for(self, name: str | None, key: Principal) -> str:
        """Base URL of the running engine of ``name`` (default: server.default_model, else the only
        engine running); never starts one."""
        engines = [record for record in self.manager.engines if record.ready and key.sees(record.model)]
        if name is None:
            name = self.live.current.server.default_model
        if name is None:
            if len(engines) == 1:
                return str(engines[0].variant.connect)
            running = ", ".join(sorted(record.model.name for record in engines)) or "none"
            raise BadRequest(f"say which model with ?model= (running: {running})")
        model = self.model(name, key)
        for record in engines:
            if record.model.name == model.name:
                return str(record.variant.connect)
        raise EngineNotRunning(
            f"model {model.name!r} is not running (it is not started just to answer this; "
            "send it a request or POST /load first)"
        )


def _rounded(figures: dict[str, float]) -> dict[str, float] | None:
    """MiB per pool for a view; None when nothing is known."""
    return {pool: round(mib, 1) for pool, mib in figures.items()} or None


def _idle_unload_in(record: EngineRecord[RunningEngine], now: float) -> float | None:
    """Seconds until the idle timeout stops this engine; None when it never will from here (no
    timeout, busy, starting or already stopping)."""
    idle = record.idle_after
    if not idle or not record.ready or record.busy or record.draining:
        return None
    return round(max(record.last_used + idle - now, 0.0), 1)


def _sees(key: Principal, name: str) -> bool:
    """Whether ``key`` may use the model a peer calls ``name`` (a key limited to some models names
    them: a peer's model is the key's only if it is one of those)."""
    return key.models is None or name in key.models
