"""This node as its peers see it: the state ``GET /api/state`` shows, and the local side of every
routing decision, read from the scheduler (never asked of an engine)."""

from __future__ import annotations

from collections.abc import Callable

from llmgw import __version__
from llmgw.config import LiveConfig, ModelConfig
from llmgw.peers import ModelState, NodeState, Pool, Start
from llmgw.scheduling import EngineManager
from llmgw.scheduling.scheduler import EngineState

# llama-server's slots when its arguments do not set -np: 4 (0.10068: "n_parallel is set to auto").
AUTO_SLOTS = 4


class LocalNode:
    def __init__(self, live: LiveConfig, manager: EngineManager) -> None:
        self.live = live
        self.manager = manager
        self.draining = False  # set once the gateway begins to shut down

    @property
    def name(self) -> str:
        return self.live.current.server.node_name

    def model_state(self, model: ModelConfig, capability: str | None = None) -> ModelState:
        """What this node can do for ``model`` now."""
        scheduler = self.manager.scheduler
        records = [r for r in scheduler.records if r.model.name == model.name]
        serving = [r for r in records if r.ready and not r.draining]
        starting = [r for r in records if r.state is EngineState.STARTING]
        shown = serving[0] if serving else starting[0] if starting else None
        context = None
        slots = 1
        if shown is not None:
            context = shown.n_ctx if shown.n_ctx is not None else shown.variant.slot_context
            slots = shown.variant.parallel or AUTO_SLOTS
        endpoints = [variant.endpoints for variant in model.variants]
        capabilities = (
            None if any(e is None for e in endpoints) else tuple(dict.fromkeys(c for e in endpoints for c in e or ()))
        )
        return ModelState(
            name=model.name,
            aliases=model.aliases,
            capabilities=capabilities,
            contexts=tuple(sorted(scheduler.effective_context(model, v) for v in model.variants)),
            loaded=bool(serving),
            loading=bool(starting),
            context=context,
            slots=slots,
            in_flight=sum(r.in_flight for r in records),
            queued=sum(1 for ticket in scheduler.queue if ticket.model.name == model.name),
            start=Start(scheduler.could_start(model, capability)),
        )

    def state(self, sees: Callable[[ModelConfig], bool] | None = None) -> NodeState:
        """``sees``: which models to list (those the asking key may use); None: every one."""
        config = self.live.current
        scheduler = self.manager.scheduler
        live = [r for r in scheduler.records if r.state is not EngineState.STOPPING]
        memory = {
            pool: Pool(budget, sum(r.need.get(pool, 0.0) for r in live)) for pool, budget in config.server.memory_budget
        }
        return NodeState(
            node=config.server.node_name,
            version=__version__,
            draining=self.draining,
            models=tuple(self.model_state(model) for model in config.models if sees is None or sees(model)),
            engines=len(scheduler.records),
            max_engines=config.server.max_engines,
            memory=memory,
        )
