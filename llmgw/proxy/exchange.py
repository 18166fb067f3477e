"""Exchange: one model request, from the engine it reserves to the last byte of its answer.

One object per request (as Tornado's own ``_HTTPConnection`` is one per fetch), its steps in order:

1. **reserve** an engine of the model with at least the context known to be needed so far
   (first: the standalone tokenizer's estimate, else any variant); while the reservation waits,
   the loading feedback tells a streaming client where it stands;
2. **count** the request exactly on that engine (its own template and tools); a generation that
   surely fits is sent meanwhile, so the count costs no round trip of its own;
3. **fit**: sizing says whether the engine holds the request, else the context to switch to;
4. **forward** it; an engine that still reports a context overflow sends the exchange round
   once more, on a bigger variant;
5. **relay** the answer: the model name the client asked for, SSE chunk by chunk.

Steps 1-4 are one loop: every "needs a bigger variant" goes round it. Every outcome leaves
through one door: :meth:`Exchange.run` returns once the answer is relayed (or the client left),
or raises a GatewayError while nothing was sent, which the handler answers in the route's
dialect; once a stream has begun, an error ends it with the dialect's error event instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Protocol

from llmgw.api import ModelRewriter, Sizing, engine_error_body, engine_error_status
from llmgw.api.endpoints import CHAT
from llmgw.config import LiveConfig
from llmgw.errors import ContextTooLarge, EngineUnavailable, GatewayError, TokenCountError
from llmgw.proxy.counting import TokenCounter, prompt_source
from llmgw.proxy.feedback import LoadingFeedback, ProgressOf
from llmgw.proxy.relay import failed, read_all, relay
from llmgw.proxy.sink import ClientSink, ProxyRequest
from llmgw.proxy.sizing import CountBounds, Fit, Need, surely_fits
from llmgw.runtime import RunningEngine
from llmgw.scheduling import EngineManager
from llmgw.slotcache import Restored, SlotCache
from llmgw.upstream import UpstreamCall, UpstreamError, relay_headers

logger = logging.getLogger(__name__)

_OVERFLOW_MARK = b"exceed_context_size_error"


class CountObserver(Protocol):
    """Told every exact count, and every count a learned bound made needless (the metrics)."""

    def observe_count(self, model: str, tokens: int) -> None: ...

    def observe_skipped_count(self, model: str) -> None: ...


class Proxy:
    """What every exchange shares: the engines, the counter, the slot cache; and the upstream calls
    in flight, which a shutdown past its grace aborts."""

    def __init__(
        self,
        live: LiveConfig,
        manager: EngineManager,
        counter: TokenCounter,
        slot_cache: SlotCache | None = None,
        progress: ProgressOf | None = None,
        counts: CountObserver | None = None,
        bounds: CountBounds | None = None,
    ) -> None:
        self.live = live
        self.manager = manager
        self.counter = counter
        self.slot_cache = slot_cache
        self.progress = progress  # where a waiting request stands (loading feedback); None: no feedback
        self.counts = counts
        self.bounds = bounds or CountBounds()
        self.active: set[UpstreamCall] = set()

    async def forward(self, request: ProxyRequest, sink: ClientSink) -> None:
        """Serve one request. Raises GatewayError only while nothing has been sent to the client."""
        await Exchange(self, request, sink).run()

    def abort_all(self) -> None:
        for call in list(self.active):
            call.abort()


class Exchange:
    def __init__(self, proxy: Proxy, request: ProxyRequest, sink: ClientSink) -> None:
        self.proxy = proxy
        self.request = request
        self.sink = sink
        config = proxy.live.current
        model, endpoint = request.model, request.endpoint
        self.reserve = config.reserve(model)
        self.fit = Fit(model, endpoint, proxy.manager, config.strict(model), self.reserve)
        self.feedback = (
            LoadingFeedback.for_request(request, sink, config.feedback(model), proxy.progress)
            if proxy.progress is not None
            else None
        )
        self.min_ctx = request.min_ctx  # the context the next reservation asks for
        self.restarted = False  # an engine that died before counting was restarted (once)
        self.overflowed = False  # an engine's own overflow sent the request to a bigger variant (once)
        self.bounded = False  # the engine got the request on a learned bound, without an exact count

    async def run(self) -> None:
        try:
            await self._serve()
        except GatewayError as exc:
            if self.feedback is None or not await self.feedback.failed(exc):
                raise
        finally:
            if self.feedback is not None:
                await self.feedback.stop()

    async def _serve(self) -> None:
        model = self.request.model
        await self._first_guess()
        for _ in range(len(model.variants) + 3):
            again = await self._attempt()
            if again is None:
                return
            self.min_ctx = again
        raise ContextTooLarge(model.name, self.min_ctx, self.fit.largest())

    async def _first_guess(self) -> None:
        """Before any engine: a context no variant gives is refused, and a long chat with a
        standalone tokenizer goes to a big enough variant at once (only a hint: the count decides)."""
        request, model = self.request, self.request.model
        if request.endpoint.sizing is Sizing.ANY:
            return
        largest = self.fit.largest()
        if self.min_ctx > largest:
            raise ContextTooLarge(model.name, self.min_ctx, largest)
        if (
            request.endpoint is CHAT
            and model.tokenization is not None
            and not self.proxy.manager.is_running(model.name)
        ):
            estimate = await self.proxy.counter.estimate(model, request.data)
            estimate += request.endpoint.budget(request.data, self.reserve)
            self.min_ctx = max(self.min_ctx, min(estimate, largest))

    async def _attempt(self) -> int | None:
        """One reservation: None when the request is answered (or its client left), else the
        context to go round again with."""
        request, endpoint = self.request, self.request.endpoint
        manager = self.proxy.manager
        async with manager.reserve(
            request.model, self.min_ctx, endpoint.capability, request.priority, request.keep_alive
        ) as reservation:
            if reservation.waiting and self.feedback is not None:
                self.feedback.waiting(reservation.ticket)
            engine = await reservation.granted()
            if self.feedback is not None:
                await self.feedback.ready()
            if endpoint.sizing is Sizing.ANY:
                return await self._answer(engine, self._send(engine), Need(0))
            restoring = self._restoring(engine)
            bound = None if restoring else self._bounded(engine)
            if bound is not None:
                self.bounded = True
                if self.proxy.counts is not None:
                    self.proxy.counts.observe_skipped_count(request.model.name)
                return await self._answer(engine, self._send(engine), bound)
            early = _AfterCount(self, engine) if not restoring and self._speculate(engine) else None
            try:
                need = await self.proxy.counter.measure(endpoint, engine, request.data, self.reserve)
                bigger = self.fit.bigger(need, engine.n_ctx, engine.variant)
            except TokenCountError:
                _abort(early)
                if await self._restart_dead(engine):
                    return self.min_ctx
                raise
            except BaseException:
                _abort(early)
                raise
            call = early.take() if early is not None else None
            if endpoint.sizing is Sizing.GENERATE:
                self.proxy.bounds.learn(self._bound_key(engine), len(request.body), need.prompt)
            if self.proxy.counts is not None:
                self.proxy.counts.observe_count(request.model.name, need.prompt + min(need.budget, engine.n_ctx))
            if bigger is not None:
                _abort(call)
                logger.info(
                    "model %r: the %s request needs a context of %d, more than the running %d: switching",
                    request.model.name,
                    endpoint.name,
                    bigger,
                    engine.n_ctx,
                )
                return bigger
            logger.debug(
                "model %r: %d tokens fit variant %d (context %d)",
                request.model.name,
                need.total,
                engine.variant.index,
                engine.n_ctx,
            )
            restored = await self._restore(engine, need.prompt) if restoring else None
            call = call or self._send(engine)
            if restored is not None:
                call.observe(restored.observe)
            return await self._answer(engine, call, need)

    async def _restart_dead(self, engine: RunningEngine) -> bool:
        """The engine failed before it saw the request (or counted it): if it died (a crash is
        noticed a moment after its sockets close), the next reservation restarts it, once, instead
        of failing the request; nothing reached the client yet, so the request can go again."""
        if self.restarted or not await _has_exited(engine):
            return False
        logger.warning("model %r: engine died before answering; restarting it", engine.model.name)
        self.restarted = True
        return True

    # ------------------------------------------------------------------ the count, when a bound decides

    def _bound_key(self, engine: RunningEngine) -> tuple[str, str, str]:
        return (engine.model.name, engine.variant.fingerprint, self.request.endpoint.name)

    def _bounded(self, engine: RunningEngine) -> Need | None:
        """The request's need by the learned bound, when that proves this engine holds it; None:
        count exactly (nothing learned yet, the bound does not fit, or a bound already failed)."""
        request, endpoint = self.request, self.request.endpoint
        if endpoint.sizing is not Sizing.GENERATE or self.bounded:
            return None
        prompt = self.proxy.bounds.bound(self._bound_key(engine), len(request.body))
        if prompt is None:
            return None
        need = Need(prompt, endpoint.budget(request.data, self.reserve))
        try:
            fits = self.fit.bigger(need, engine.n_ctx, engine.variant) is None
        except GatewayError:  # the bound is too loose to decide: the exact count will
            return None
        return need if fits else None

    # ------------------------------------------------------------------ forward

    def _send(self, engine: RunningEngine) -> UpstreamCall:
        request = self.request
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "X-Request-Id": request.request_id,
        }
        call = engine.client.forward_request(request.upstream_path, request.body, headers)
        active = self.proxy.active
        active.add(call)
        call.add_done_callback(active.discard)
        self.sink.tie(call)
        return call

    def _speculate(self, engine: RunningEngine) -> bool:
        """Send while counting only when the request surely fits: an aborted request makes
        llama-server linger ~1 s on the SIGTERM of a switch."""
        endpoint, data = self.request.endpoint, self.request.data
        if endpoint.sizing is not Sizing.GENERATE:
            return False
        return surely_fits(len(self.request.body), endpoint.budget(data, self.reserve), engine.n_ctx)

    async def _answer(self, engine: RunningEngine, call: UpstreamCall, need: Need) -> int | None:
        """Forward and relay; the context to go round again with if the engine overflowed."""
        request, sink = self.request, self.sink
        model, endpoint = request.model, request.endpoint
        try:
            if sink.gone:
                return None
            # A stream's head comes at once (llama-server sends it before the prompt is processed),
            # and so does any answer but a generation's: those are bounded; a non-streamed
            # generation may take minutes, and a frozen engine is caught by its health probes.
            streamed = request.data.get("stream") is True or endpoint.sizing is not Sizing.GENERATE
            try:
                status, headers = await call.head(engine.variant.timeouts.stream_idle if streamed else 0)
            except UpstreamError as exc:
                if sink.gone:
                    return None
                if exc.undelivered and await self._restart_dead(engine):
                    return self.min_ctx
                raise _engine_failed(model.name, exc) from exc
            if status < 400:
                await self._relay(call, status, headers, engine.variant.timeouts.stream_idle)
                return None
            body = await _read_all(call, model.name)
            if self.bounded:
                self._learn_from_overflow(body, engine)
            if self._overflowed(status, body, engine):
                logger.warning(
                    "model %r: engine reported a context overflow at %d tokens (counted %d); "
                    "retrying on a larger variant",
                    model.name,
                    engine.n_ctx,
                    need.total,
                )
                self.overflowed = True
                return engine.n_ctx + 1
            if self.feedback is not None and self.feedback.started:
                await sink.send(self.feedback.engine_error(status, body))
                return None
            sink.start_response(engine_error_status(request.answer_dialect, status), relay_headers(headers))
            await sink.send_whole(engine_error_body(request.answer_dialect, status, body))
            return None
        finally:
            sink.tie(None)
            call.abort()  # no-op when complete; closes the upstream on any early exit

    def _learn_from_overflow(self, body: bytes, engine: RunningEngine) -> None:
        """A bound that let too long a prompt through: the engine's own count raises it."""
        try:
            error = json.loads(body).get("error", {})
        except (ValueError, AttributeError):
            return
        n_prompt = error.get("n_prompt_tokens") if isinstance(error, dict) else None
        if isinstance(n_prompt, int) and not isinstance(n_prompt, bool):
            self.proxy.bounds.learn(self._bound_key(engine), len(self.request.body), n_prompt)

    def _overflowed(self, status: int, body: bytes, engine: RunningEngine) -> bool:
        """The engine refused the prompt as too long for its context, and a bigger variant exists."""
        return status == 400 and not self.overflowed and _OVERFLOW_MARK in body and engine.n_ctx < self.fit.largest()

    # ------------------------------------------------------------------ relay

    async def _relay(self, call: UpstreamCall, status: int, headers: Any, idle: float) -> None:
        request, feedback = self.request, self.feedback
        translator = request.translate(request.stats) if request.translate is not None else None
        head = relay_headers(headers)
        if translator is not None:  # another API's answer (the Ollama routes): its own content type
            head = [(k, v) for k, v in head if k.lower() != "content-type"]
            head.append(("Content-Type", translator.content_type))
        await relay(
            call,
            self.sink,
            status,
            headers.get("Content-Type", ""),
            head,
            idle=idle,
            rewriter=translator or ModelRewriter(request.requested),
            stats=request.stats,
            endpoint=request.endpoint,
            source=_engine_of(request.model.name),
            opening=feedback.relay if feedback is not None and feedback.started else None,
            dialect=request.dialect,
        )

    # ------------------------------------------------------------------ the slot cache

    def _restoring(self, engine: RunningEngine) -> bool:
        """A new engine of a model with saved slots: offer it the prompt before the request goes."""
        cache = self.proxy.slot_cache
        return (
            cache is not None
            and self.request.endpoint.sizing is Sizing.GENERATE
            and cache.pending(engine.model, engine.variant, engine.client)
        )

    async def _restore(self, engine: RunningEngine, n_prompt: int) -> Restored | None:
        """The saved slot that best matches the prompt, restored into the engine. Its tokens are
        asked of the engine (template, then tokenizer) only here; routes whose template only the
        engine applies go without them."""
        cache, client = self.proxy.slot_cache, engine.client
        assert cache is not None
        chat, prompt = prompt_source(self.request.endpoint, self.request.data)
        try:
            ids = await client.prompt_ids(prompt, chat) if chat is not None or prompt is not None else None
            timeout = engine.variant.timeouts.engine_stop
            return await cache.restore(engine.model, engine.variant, client, engine.n_ctx, ids, n_prompt, timeout)
        except Exception:  # the cache never fails a request
            logger.exception("model %r: restoring a saved slot failed; going on without it", engine.model.name)
            return None


class _AfterCount:
    """The request, sent to the engine while it counts: one loop turn after the count is written,
    so an engine that answers in order (the fake, one thread) answers the count first and the
    gateway has it by the time the answer comes, not after."""

    def __init__(self, exchange: Exchange, engine: RunningEngine) -> None:
        self.call: UpstreamCall | None = None
        self._handle = asyncio.get_running_loop().call_soon(self._send, exchange, engine)

    def _send(self, exchange: Exchange, engine: RunningEngine) -> None:
        self.call = exchange._send(engine)

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


def _engine_of(model_name: str) -> str:
    return f"engine of model {model_name!r}"


def _engine_failed(model_name: str, exc: UpstreamError) -> EngineUnavailable:
    return failed(_engine_of(model_name), exc)


async def _read_all(call: UpstreamCall, model_name: str) -> bytes:
    return await read_all(call, _engine_of(model_name))


async def _has_exited(engine: RunningEngine, grace: float = 1.0) -> bool:
    """True when the engine's process is gone (waiting ``grace`` s for its exit to be noticed)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(engine.process.exited.wait(), grace)
    return engine.process.exited.is_set()
