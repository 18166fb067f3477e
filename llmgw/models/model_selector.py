"""ModelSelector: from a request to a leased engine whose context holds it.

What must fit depends on the route (llmgw.api.endpoints):

* generation routes need the prompt plus the completion budget. The smallest variant that
  holds both is taken. When none does (clients ask for 32000 or 1e9 tokens they never use),
  the largest variant is taken if it holds the prompt plus ``completion_reserve``, and the
  generation ends when its context is full, as llama-server does on its own; only a prompt
  too long even for that is refused. ``strict_context`` refuses every request whose budget
  does not fit;
* embeddings and rerank need each input to fit the engine's physical batch: the variant that
  holds the longest input is taken;
* counting and tokenizer routes take any variant: the running one, else the smallest.

Counting needs a tokenizer with the model's vocabulary and template. If the model runs, its
engine counts. If not, a configured standalone tokenizer gives a first estimate (chat);
otherwise the smallest variant starts (same tokenizer as the big ones). Then the engine's exact
count decides, and only a count that does not fit moves to a bigger variant: the big one is
never loaded just to count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from llmgw.api import Endpoint, Sizing
from llmgw.api.endpoints import CHAT, Prompt
from llmgw.config import Config, ModelConfig, Variant
from llmgw.errors import BadRequest, ContextTooLarge, ModelNotFound, TokenCountError, echo
from llmgw.runtime import RunningEngine
from llmgw.scheduling import EngineManager
from llmgw.scheduling.scheduler import Ticket
from llmgw.slotcache import Restored, SlotCache
from llmgw.upstream import StandaloneTokenizer, UpstreamCall
from llmgw.upstream.llamacpp import LlamaCppClient, physical_batch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    engine: RunningEngine
    prompt_tokens: int  # exact (the longest input for embeddings and rerank; 0 when not counted)
    tokens_needed: int  # what had to fit the engine's context
    call: UpstreamCall | None = None  # the request, already sent while counting (see ``prefetch``)
    restored: Restored | None = None  # a saved slot restored for this request (the slot cache)


@dataclass(frozen=True)
class _Need:
    prompt: int
    budget: int = 0
    index: int = 0  # which input is the longest (embeddings, rerank)


Prefetch = Callable[[RunningEngine], UpstreamCall | None]


class ModelSelector:
    def __init__(self, engine_manager: EngineManager, cfg: Config) -> None:
        self.engine_manager = engine_manager
        self.cfg = cfg
        self._tokenizers: dict[str, StandaloneTokenizer] = {}
        self.on_counted: Any = None  # metrics observer: callable(model_name, tokens)
        self.slot_cache: SlotCache | None = None  # restores saved slots into new engines

    def list_models(self) -> list[str]:
        return self.cfg.model_names()

    def model(self, name: str) -> ModelConfig:
        """The model called (or aliased) ``name``; 404 otherwise."""
        model = self.cfg.model(name)
        if model is None:
            raise ModelNotFound(f"model {echo(name)} does not exist; available: {', '.join(self.list_models())}")
        return model

    def reserve(self, model: ModelConfig) -> int:
        return model.completion_reserve or self.cfg.server.completion_reserve

    @contextlib.asynccontextmanager
    async def select_variant(
        self,
        model: ModelConfig,
        endpoint: Endpoint,
        request_data: dict[str, Any],
        min_ctx: int = 0,
        prefetch: Prefetch | None = None,
        on_wait: Callable[[Ticket], None] | None = None,
    ) -> AsyncIterator[Selection]:
        """Lease the smallest engine of the model that holds the request, for the whole block.

        ``prefetch`` sends the request to the leased engine while it counts, so the count costs
        no round trip of its own; the engine's answer is only relayed once the count says it
        fits, and a request that does not fit is aborted (the engine drops it at once). Not while
        a new engine may take a saved slot (the slot cache): that restore must come first.
        ``on_wait`` is told the ticket of each wait for an engine (see EngineManager.lease).
        """
        manager = self.engine_manager
        capability = endpoint.capability
        if endpoint.sizing is Sizing.ANY:
            async with manager.lease(model, min_ctx, capability, on_wait) as engine:
                yield Selection(engine, 0, 0)
            return
        largest = manager.largest_context(model, capability)
        if min_ctx > largest:
            raise ContextTooLarge(model.name, min_ctx, largest)
        if endpoint is CHAT and model.tokenization is not None and not manager.is_running(model.name):
            estimate = await self._standalone(model).count(request_data)
            estimate += endpoint.budget(request_data, self.reserve(model))
            # Only a hint: the exact count below has the last word.
            min_ctx = max(min_ctx, min(estimate, largest))
        restarted = False
        for _ in range(len(model.variants) + 2):
            async with manager.lease(model, min_ctx, capability, on_wait) as engine:
                restoring = self._restoring(engine, endpoint)
                sent = _AfterCount(prefetch, engine) if prefetch is not None and not restoring else None
                try:
                    need = await self._measure(endpoint, engine, request_data)
                    bigger = self._bigger(model, endpoint, need, engine)
                except TokenCountError:
                    _abort(sent)
                    # The engine may have just died (a crash is noticed a moment after its socket
                    # closes): then the next lease restarts it, once, instead of failing the request.
                    if restarted or not await _has_exited(engine):
                        raise
                    logger.warning("model %r: engine died before counting; restarting it", model.name)
                    restarted = True
                    continue
                except BaseException:
                    _abort(sent)
                    raise
                call = sent.take() if sent is not None else None
                needed = need.prompt + need.budget
                if self.on_counted is not None:
                    self.on_counted(model.name, need.prompt + min(need.budget, engine.n_ctx))
                if bigger is None:
                    logger.debug(
                        "model %r: %d tokens fit variant %d (context %d)",
                        model.name,
                        needed,
                        engine.variant.index,
                        engine.n_ctx,
                    )
                    restored = await self._restore(engine, endpoint, request_data, need.prompt) if restoring else None
                    yield Selection(engine, need.prompt, needed, call, restored)
                    return
                _abort(call)
            logger.info(
                "model %r: the %s request needs a context of %d, more than the running %d: switching",
                model.name,
                endpoint.name,
                bigger,
                engine.n_ctx,
            )
            min_ctx = bigger
        raise ContextTooLarge(model.name, min_ctx, manager.largest_context(model, capability))

    def _restoring(self, engine: RunningEngine, endpoint: Endpoint) -> bool:
        cache = self.slot_cache
        return (
            cache is not None
            and endpoint.sizing is Sizing.GENERATE
            and cache.pending(engine.model, engine.variant, engine.client)
        )

    async def _restore(
        self, engine: RunningEngine, endpoint: Endpoint, data: dict[str, Any], n_prompt: int
    ) -> Restored | None:
        """Offer the request's prompt to the slot cache before the engine sees it. Its tokens are
        asked of the engine (template, then tokenizer) only here, for a new engine of a model
        with saved slots; routes whose template only the engine applies go without them."""
        cache, client = self.slot_cache, engine.client
        assert cache is not None and isinstance(client, LlamaCppClient)
        chat, prompt = _prompt_source(endpoint, data)
        try:
            ids = await client.prompt_ids(prompt, chat) if chat is not None or prompt is not None else None
            timeout = engine.variant.timeouts.engine_stop
            return await cache.restore(engine.model, engine.variant, client, engine.n_ctx, ids, n_prompt, timeout)
        except Exception:  # the cache never fails a request
            logger.exception("model %r: restoring a saved slot failed; going on without it", engine.model.name)
            return None

    async def _measure(self, endpoint: Endpoint, engine: RunningEngine, data: dict[str, Any]) -> _Need:
        client = engine.client
        assert isinstance(client, LlamaCppClient)
        reserve = self.reserve(engine.model)
        if endpoint is CHAT:
            return _Need(await client.count_prompt_tokens(data), endpoint.budget(data, reserve))
        if endpoint.count_path is not None:
            return _Need(await client.count_body(endpoint.count_path, data), endpoint.budget(data, reserve))
        assert endpoint.prompts is not None
        prompts = endpoint.prompts(data)
        # Inputs that surely fit the batch need no count; a generation prompt always does (its budget adds up).
        limit = _batch_capacity(engine) if endpoint.sizing is Sizing.BATCH else -1
        counts = await asyncio.gather(
            *(self._prompt_tokens(client, pieces, endpoint.overhead, limit) for pieces in prompts)
        )
        longest = max(range(len(counts)), key=counts.__getitem__)
        return _Need(counts[longest], endpoint.budget(data, reserve), longest)

    @staticmethod
    async def _prompt_tokens(client: LlamaCppClient, pieces: list[Prompt], overhead: int, limit: int) -> int:
        """Tokens of one prompt made of ``pieces``. An input whose bytes surely fit (a token is at
        least one byte) is not sent to the tokenizer: embedding batches are mostly such inputs."""
        bound = overhead + sum(len(p.encode()) + 2 if isinstance(p, str) else _pieces_bound(p) for p in pieces)
        if bound <= limit:
            return 0
        counts = await asyncio.gather(*(client.count_text(piece) for piece in pieces))
        return overhead + sum(counts)

    def _bigger(self, model: ModelConfig, endpoint: Endpoint, need: _Need, engine: RunningEngine) -> int | None:
        """None when the leased engine holds the request; else the context to switch to."""
        manager = self.engine_manager
        capability = endpoint.capability
        if endpoint.sizing is Sizing.BATCH:
            if need.prompt <= _batch_capacity(engine):
                return None

            def capacity(variant: Variant) -> int:
                return min(manager.effective_context(model, variant), physical_batch(variant.args))

            serving = [v for v in model.variants if v.serves(capability)]
            fitting = [manager.effective_context(model, v) for v in serving if capacity(v) >= need.prompt]
            if not fitting:
                most = max(capacity(v) for v in serving)
                raise BadRequest(
                    f"input {need.index} has {need.prompt} tokens, more than model {model.name!r} can "
                    f"take in one batch ({most} tokens): split it, or give a variant "
                    "a larger physical batch (-ub)"
                )
            return max(min(fitting), engine.n_ctx + 1)
        full = need.prompt + need.budget
        if full <= engine.n_ctx:
            return None
        largest = manager.largest_context(model, capability)
        if full <= largest:
            return max(full, engine.n_ctx + 1)
        if self.cfg.strict(model):
            raise ContextTooLarge(model.name, full, largest, need.prompt)
        # No variant holds the whole budget: the largest runs, and the answer ends at its context,
        # provided it leaves the answer completion_reserve tokens (at most half of that context:
        # a reserve as big as the model's context would refuse every request without max_tokens).
        minimum = need.prompt + max(1, min(need.budget, self.reserve(model), largest // 2))
        if minimum <= engine.n_ctx and engine.n_ctx >= largest:
            return None
        if minimum <= largest:
            return largest
        raise ContextTooLarge(
            model.name,
            minimum,
            largest,
            need.prompt,
            detail="prompt plus the smaller of its budget and completion_reserve",
        )

    def _standalone(self, model: ModelConfig) -> StandaloneTokenizer:
        assert model.tokenization is not None
        if model.name not in self._tokenizers:
            self._tokenizers[model.name] = StandaloneTokenizer(model.tokenization)
        return self._tokenizers[model.name]


def _prompt_source(endpoint: Endpoint, data: dict[str, Any]) -> tuple[dict[str, Any] | None, Prompt | None]:
    """What gives a request's prompt tokens: a chat body (templated by the engine), or its one
    prompt; (None, None) when neither can (several prompts, infill, Messages, Responses)."""
    if endpoint is CHAT:
        return data, None
    if endpoint.prompts is not None and endpoint.overhead == 0:
        prompts = endpoint.prompts(data)
        if len(prompts) == 1 and len(prompts[0]) == 1:
            return None, prompts[0][0]
    return None, None


def _batch_capacity(engine: RunningEngine) -> int:
    return min(engine.n_ctx, physical_batch(engine.variant.args))


def _pieces_bound(piece: list[int] | list[int | str]) -> int:
    return sum(1 if isinstance(t, int) else len(t.encode()) + 2 for t in piece)


class _AfterCount:
    """The request, sent to the engine while it counts: one loop turn after the count is written,
    so an engine that answers in order (the fake, one thread) answers the count first and the
    gateway has it by the time the answer comes, not after."""

    def __init__(self, prefetch: Prefetch, engine: RunningEngine) -> None:
        self.call: UpstreamCall | None = None
        self._handle = asyncio.get_running_loop().call_soon(self._send, prefetch, engine)

    def _send(self, prefetch: Prefetch, engine: RunningEngine) -> None:
        self.call = prefetch(engine)

    def take(self) -> UpstreamCall | None:
        """The call if it was sent (None: it was not, and now never will be)."""
        self._handle.cancel()
        return self.call

    def abort(self) -> None:
        call = self.take()
        if call is not None:
            call.abort()


def _abort(call: UpstreamCall | _AfterCount | None) -> None:
    if call is not None:
        call.abort()


async def _has_exited(engine: RunningEngine, grace: float = 1.0) -> bool:
    """True when the engine's process is gone (waiting ``grace`` s for its exit to be noticed)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(engine.process.exited.wait(), grace)
    return engine.process.exited.is_set()
