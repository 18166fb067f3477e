"""ChatProxy: select an engine for a request and relay its answer to the client.

Kept apart from the Tornado handlers so the rules (retry on context overflow, what a
client sees when the engine dies mid-stream) are plain code with one job.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from llmgw.engine import UpstreamCall, UpstreamError, completion_budget, relay_headers
from llmgw.errors import EngineUnavailable, GatewayError
from llmgw.models import ModelSelector
from llmgw.runtime import RunningEngine

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


def sse_error_event(error: GatewayError) -> bytes:
    payload = {"error": {"message": error.message, "type": error.error_type, "code": error.code}}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _engine_failed(model_name: str, exc: UpstreamError, when: str = "") -> EngineUnavailable:
    """``when``: "" or a suffix such as " mid-stream"."""
    return EngineUnavailable(f"engine of model {model_name!r} failed{when}: {exc}")


class ChatProxy:
    def __init__(self, selector: ModelSelector) -> None:
        self.selector = selector
        self.active: set[UpstreamCall] = set()

    async def forward(self, path: str, body: bytes, request_data: dict[str, Any], sink: ClientSink) -> None:
        """Serve one request. Raises GatewayError only while nothing has been sent to the client."""
        model_name: str = request_data["model"]
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}

        def send_upstream(engine: RunningEngine) -> UpstreamCall:
            call = engine.client.forward_request(path, body, headers)
            self.active.add(call)
            call.add_done_callback(self.active.discard)
            sink.watch(call)
            return call

        def send_while_counting(engine: RunningEngine) -> UpstreamCall | None:
            # Speculate only when the request surely fits (text takes at least a byte per token):
            # an aborted request makes llama-server linger ~1 s on the SIGTERM of a switch.
            budget = completion_budget(request_data, engine.client.completion_reserve)
            return send_upstream(engine) if len(body) + budget <= engine.n_ctx else None

        min_ctx = 0
        for attempt in (1, 2):
            async with self.selector.select_variant(
                model_name, request_data, min_ctx, send_while_counting
            ) as selection:
                engine = selection.engine
                call = selection.call or send_upstream(engine)
                try:
                    if sink.gone:
                        return
                    try:
                        status, upstream_headers = await call.head()
                    except UpstreamError as exc:
                        if sink.gone:
                            return
                        raise _engine_failed(model_name, exc) from exc
                    if status == 400 and attempt == 1:
                        error_body = await self._read_all(call, model_name)
                        if _OVERFLOW_MARK in error_body and engine.n_ctx < self.selector.engine_manager.largest_context(
                            engine.model
                        ):
                            logger.warning(
                                "model %r: engine reported a context overflow at %d tokens (counted %d); "
                                "retrying on a larger variant",
                                model_name,
                                engine.n_ctx,
                                selection.tokens_needed,
                            )
                            min_ctx = engine.n_ctx + 1
                            continue
                        sink.start_response(status, relay_headers(upstream_headers))
                        await sink.send(error_body)
                        return
                    await self._relay(call, status, upstream_headers, sink, model_name)
                    return
                finally:
                    sink.watch(None)
                    call.abort()  # no-op when complete; closes the upstream on any early exit

    async def _read_all(self, call: UpstreamCall, model_name: str) -> bytes:
        try:
            return await call.read_body()
        except UpstreamError as exc:
            raise _engine_failed(model_name, exc) from exc

    async def _relay(self, call: UpstreamCall, status: int, headers: Any, sink: ClientSink, model_name: str) -> None:
        streaming = "text/event-stream" in headers.get("Content-Type", "")
        if not streaming:
            # JSON answers are small: read them whole so a failure can still be a clean 502.
            body = await self._read_all(call, model_name)
            sink.start_response(status, relay_headers(headers))
            await sink.send(body)
            return
        sink.start_response(status, relay_headers(headers))
        try:
            async for chunk in call.chunks():
                await sink.send(chunk)
        except UpstreamError as exc:
            if sink.gone:
                return
            logger.warning("model %r: engine stream broke: %s", model_name, exc)
            await sink.send(sse_error_event(_engine_failed(model_name, exc, " mid-stream")))

    def abort_all(self) -> None:
        for call in list(self.active):
            call.abort()
