"""Proxy: select an engine for a request and relay its answer to the client, on any route.

Kept apart from the Tornado handlers so the rules (retry on context overflow, the model name
the client gets back, what a client sees when the engine dies mid-stream, errors in the
route's own dialect) are plain code with one job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmgw.api import Endpoint, ModelRewriter, Sizing, engine_error_body, stream_error_event
from llmgw.api.progress import Rewriter
from llmgw.api.usage import AnswerStats, worth_reading
from llmgw.config import ModelConfig
from llmgw.errors import EngineUnavailable, GatewayError
from llmgw.models import ModelSelector
from llmgw.runtime import RunningEngine
from llmgw.server.feedback import LoadingFeedback
from llmgw.upstream import UpstreamCall, UpstreamError, relay_headers

logger = logging.getLogger(__name__)

_OVERFLOW_MARK = b"exceed_context_size_error"


class ClientGone(Exception):
    """The client disconnected; nothing more can be sent."""


class ClientSink(Protocol):
    """What the proxy needs from the client connection (a Tornado handler implements it)."""

    @property
    def gone(self) -> bool: ...

    def watch(self, call: UpstreamCall | None) -> None:
        """Abort ``call`` as soon as the client disconnects."""

    def start_response(self, status: int, headers: list[tuple[str, str]]) -> None: ...

    async def send(self, chunk: bytes) -> None:
        """Write and flush; raises ClientGone."""

    async def send_whole(self, body: bytes) -> None:
        """The whole answer, its length known: sent in one write, and the response is over."""


@dataclass(frozen=True)
class ProxyRequest:
    endpoint: Endpoint
    path: str  # forwarded as it is: llama-server answers every route the gateway serves
    body: bytes
    data: dict[str, Any]
    model: ModelConfig
    requested: str  # the name the client used (a model name or an alias): answers carry it
    request_id: str
    stats: AnswerStats = field(default_factory=AnswerStats)  # tokens and tokens/s, read from the answer


def _engine_failed(model_name: str, exc: UpstreamError, when: str = "") -> EngineUnavailable:
    """``when``: "" or a suffix such as " mid-stream"."""
    return EngineUnavailable(f"engine of model {model_name!r} failed{when}: {exc}")


class Proxy:
    def __init__(self, selector: ModelSelector) -> None:
        self.selector = selector
        self.active: set[UpstreamCall] = set()
        # Loading feedback for requests that wait for an engine (the gateway sets it; None: none).
        self.feedback: Callable[[ProxyRequest, ClientSink], LoadingFeedback] | None = None

    async def forward(self, request: ProxyRequest, sink: ClientSink) -> None:
        """Serve one request. Raises GatewayError only while nothing has been sent to the client."""
        feedback = self.feedback(request, sink) if self.feedback is not None else None
        try:
            await self._forward(request, sink, feedback)
        except GatewayError as exc:
            if feedback is None or not await feedback.failed(exc):
                raise
        finally:
            if feedback is not None:
                await feedback.stop()

    async def _forward(self, request: ProxyRequest, sink: ClientSink, feedback: LoadingFeedback | None) -> None:
        endpoint, model = request.endpoint, request.model
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "X-Request-Id": request.request_id,
        }

        def send_upstream(engine: RunningEngine) -> UpstreamCall:
            call = engine.client.forward_request(request.path, request.body, headers)
            self.active.add(call)
            call.add_done_callback(self.active.discard)
            sink.watch(call)
            return call

        def send_while_counting(engine: RunningEngine) -> UpstreamCall | None:
            # Speculate only when the request surely fits (text takes at least a byte per token):
            # an aborted request makes llama-server linger ~1 s on the SIGTERM of a switch.
            if endpoint.sizing is not Sizing.GENERATE:
                return None
            budget = endpoint.budget(request.data, self.selector.reserve(model))
            return send_upstream(engine) if len(request.body) + budget <= engine.n_ctx else None

        min_ctx = 0
        for attempt in (1, 2):
            async with self.selector.select_variant(
                model, endpoint, request.data, min_ctx, send_while_counting, feedback.waiting if feedback else None
            ) as selection:
                if feedback is not None:
                    await feedback.ready()
                engine = selection.engine
                call = selection.call or send_upstream(engine)
                if selection.restored is not None:
                    call.observe(selection.restored.observe)
                try:
                    if sink.gone:
                        return
                    # A stream's head comes at once (llama-server sends it before the prompt is processed),
                    # and so does any answer but a generation's: those are bounded; a non-streamed
                    # generation may take minutes, and a frozen engine is caught by its health watch.
                    streamed = request.data.get("stream") is True or endpoint.sizing is not Sizing.GENERATE
                    try:
                        status, upstream_headers = await call.head(
                            engine.variant.timeouts.stream_idle if streamed else 0
                        )
                    except UpstreamError as exc:
                        if sink.gone:
                            return
                        raise _engine_failed(model.name, exc) from exc
                    if status >= 400:
                        error_body = await self._read_all(call, model.name)
                        if (
                            status == 400
                            and attempt == 1
                            and _OVERFLOW_MARK in error_body
                            and engine.n_ctx < self.selector.engine_manager.largest_context(model, endpoint.capability)
                        ):
                            logger.warning(
                                "model %r: engine reported a context overflow at %d tokens (counted %d); "
                                "retrying on a larger variant",
                                model.name,
                                engine.n_ctx,
                                selection.tokens_needed,
                            )
                            min_ctx = engine.n_ctx + 1
                            continue
                        if feedback is not None and feedback.started:
                            await sink.send(feedback.engine_error(status, error_body))
                            return
                        sink.start_response(status, relay_headers(upstream_headers))
                        await sink.send_whole(engine_error_body(endpoint.dialect, status, error_body))
                        return
                    await self._relay(
                        call, status, upstream_headers, sink, request, engine.variant.timeouts.stream_idle, feedback
                    )
                    return
                finally:
                    sink.watch(None)
                    call.abort()  # no-op when complete; closes the upstream on any early exit

    async def _read_all(self, call: UpstreamCall, model_name: str) -> bytes:
        try:
            return await call.read_body()
        except UpstreamError as exc:
            raise _engine_failed(model_name, exc) from exc

    async def _relay(
        self,
        call: UpstreamCall,
        status: int,
        headers: Any,
        sink: ClientSink,
        request: ProxyRequest,
        idle: float,
        feedback: LoadingFeedback | None = None,
    ) -> None:
        rewriter: Rewriter = ModelRewriter(request.requested)
        model_name = request.model.name
        stats = request.stats
        streaming = "text/event-stream" in headers.get("Content-Type", "")
        if not streaming:
            # JSON answers are small: read them whole so a failure can still be a clean 502.
            body = await self._read_all(call, model_name)
            stats.feed(body)
            sink.start_response(status, relay_headers(headers))
            await sink.send_whole(rewriter.body(body))
            return
        if feedback is not None and feedback.started:  # our progress came first: the headers are out
            opening, rewriter = feedback.relay(rewriter)
            await sink.send(opening)
        else:
            sink.start_response(status, relay_headers(headers))
        try:
            async for chunk in call.chunks(idle):
                out = rewriter.chunk(chunk)
                if out:
                    if worth_reading(out):
                        stats.feed(out)
                    await sink.send(out)
            rest = rewriter.flush()
            if rest:
                stats.feed(rest)
                await sink.send(rest)
        except UpstreamError as exc:
            if sink.gone:
                return
            logger.warning("model %r: engine stream broke: %s", model_name, exc)
            error = _engine_failed(model_name, exc, " mid-stream")
            stats.stream_error = error.status
            await sink.send(rewriter.flush() + stream_error_event(request.endpoint, error))

    def abort_all(self) -> None:
        for call in list(self.active):
            call.abort()
