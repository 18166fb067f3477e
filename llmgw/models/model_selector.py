"""ModelSelector: from a request to a leased engine whose context holds it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from llmgw.config import Config, ModelConfig
from llmgw.engine import StandaloneTokenizer, UpstreamCall, completion_budget
from llmgw.errors import ContextTooLarge, ModelNotFound, TokenCountError, echo
from llmgw.runtime import RunningEngine
from llmgw.scheduling import EngineManager

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    engine: RunningEngine
    tokens_needed: int  # prompt tokens (exact) + completion budget
    call: UpstreamCall | None = None  # the request, already sent while counting (see ``prefetch``)


Prefetch = Callable[[RunningEngine], UpstreamCall | None]


class ModelSelector:
    def __init__(self, engine_manager: EngineManager, cfg: Config) -> None:
        self.engine_manager = engine_manager
        self.cfg = cfg
        self._tokenizers: dict[str, StandaloneTokenizer] = {}
        self.on_counted: Any = None  # metrics observer: callable(model_name, tokens)

    def list_models(self) -> list[str]:
        return self.cfg.model_names()

    def model(self, name: str) -> ModelConfig:
        model = self.cfg.model(name)
        if model is None:
            raise ModelNotFound(f"model {echo(name)} does not exist; available: {', '.join(self.list_models())}")
        return model

    @contextlib.asynccontextmanager
    async def select_variant(
        self, model_name: str, request_data: dict[str, Any], min_ctx: int = 0, prefetch: Prefetch | None = None
    ) -> AsyncIterator[Selection]:
        """Lease the smallest engine of the model that holds the request, for the whole block.

        Counting needs a tokenizer with the model's vocabulary and template. If the model runs,
        its engine counts. If not, a configured standalone tokenizer gives a first estimate;
        otherwise the smallest variant starts (same tokenizer as the big ones). Then the
        engine's exact count decides, and only a count that does not fit moves to a bigger
        variant: the big one is never loaded just to count.

        ``prefetch`` sends the request to the leased engine while it counts, so the count costs
        no round trip of its own; the engine's answer is only relayed once the count says it
        fits, and a request that does not fit is aborted (the engine drops it at once).
        """
        model = self.model(model_name)
        manager = self.engine_manager
        largest = manager.largest_context(model)
        if min_ctx > largest:
            raise ContextTooLarge(model.name, min_ctx, largest)
        if model.tokenization is not None and not manager.is_running(model.name):
            estimate = await self._standalone(model).count(request_data)
            estimate += completion_budget(request_data, self._reserve(model))
            # Only a hint: the exact count below has the last word.
            min_ctx = max(min_ctx, min(estimate, largest))
        restarted = False
        for _ in range(len(model.variants) + 2):
            async with manager.lease(model, min_ctx) as engine:
                call = prefetch(engine) if prefetch is not None else None
                try:
                    needed = await engine.client.estimate_tokens(request_data)
                except TokenCountError:
                    _abort(call)
                    # The engine may have just died (a crash is noticed a moment after its socket
                    # closes): then the next lease restarts it, once, instead of failing the request.
                    if restarted or not await _has_exited(engine):
                        raise
                    logger.warning("model %r: engine died before counting; restarting it", model.name)
                    restarted = True
                    continue
                except BaseException:
                    _abort(call)
                    raise
                if self.on_counted is not None:
                    self.on_counted(model.name, needed)
                if needed <= engine.n_ctx:
                    logger.debug(
                        "model %r: %d tokens fit variant %d (context %d)",
                        model.name,
                        needed,
                        engine.variant.index,
                        engine.n_ctx,
                    )
                    yield Selection(engine, needed, call)
                    return
                _abort(call)
            largest = manager.largest_context(model)
            if needed > largest:
                raise ContextTooLarge(model.name, needed, largest)
            logger.info(
                "model %r: request needs %d tokens, more than the running context %d: switching",
                model.name,
                needed,
                engine.n_ctx,
            )
            min_ctx = max(needed, engine.n_ctx + 1)
        raise ContextTooLarge(model.name, min_ctx, manager.largest_context(model))

    def _reserve(self, model: ModelConfig) -> int:
        return model.completion_reserve or self.cfg.server.completion_reserve

    def _standalone(self, model: ModelConfig) -> StandaloneTokenizer:
        assert model.tokenization is not None
        if model.name not in self._tokenizers:
            self._tokenizers[model.name] = StandaloneTokenizer(model.tokenization)
        return self._tokenizers[model.name]


def _abort(call: UpstreamCall | None) -> None:
    if call is not None:
        call.abort()


async def _has_exited(engine: RunningEngine, grace: float = 1.0) -> bool:
    """True when the engine's process is gone (waiting ``grace`` s for its exit to be noticed)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(engine.process.exited.wait(), grace)
    return engine.process.exited.is_set()
