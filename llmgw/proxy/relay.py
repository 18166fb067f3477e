"""Relay an upstream answer to the client: an engine's (llmgw.proxy.exchange) or a peer's
(llmgw.proxy.routed), with one code path.

A JSON answer is read whole (so a failure can still be a clean 502) and sent with its length; a
stream goes chunk by chunk through the rewriter, its usage read on the way, and a stream that
breaks ends with the dialect's error event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from llmgw.api import Endpoint, stream_error_event
from llmgw.api.progress import Rewriter
from llmgw.api.usage import AnswerStats, worth_reading
from llmgw.errors import EngineUnavailable
from llmgw.proxy.sink import ClientSink
from llmgw.upstream import UpstreamCall, UpstreamError

logger = logging.getLogger(__name__)

# For a stream only: what goes out before the first chunk instead of the head (loading feedback
# already sent it), and the rewriter that goes on from there.
Opening = Callable[[Rewriter], tuple[bytes, Rewriter]]


async def relay(
    call: UpstreamCall,
    sink: ClientSink,
    status: int,
    content_type: str,
    headers: Sequence[tuple[str, str]],
    *,
    idle: float,
    rewriter: Rewriter,
    stats: AnswerStats,
    endpoint: Endpoint,
    source: str,
    opening: Opening | None = None,
) -> None:
    """``headers``: those the client gets; ``source``: what answers, for messages ("engine of
    model 'm'", "peer 'gpu-box'")."""
    if "text/event-stream" not in content_type:
        body = await read_all(call, source)
        stats.feed(body)
        sink.start_response(status, list(headers))
        await sink.send_whole(rewriter.body(body))
        return
    if opening is not None:  # our progress came first: the headers are out
        first, rewriter = opening(rewriter)
        await sink.send(first)
    else:
        sink.start_response(status, list(headers))
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
        logger.warning("%s: stream broke: %s", source, exc)
        error = failed(source, exc, " mid-stream")
        stats.stream_error = error.status
        await sink.send(rewriter.flush() + stream_error_event(endpoint, error))


def failed(source: str, exc: UpstreamError, when: str = "") -> EngineUnavailable:
    """``when``: "" or a suffix such as " mid-stream"."""
    return EngineUnavailable(f"{source} failed{when}: {exc}")


async def read_all(call: UpstreamCall, source: str) -> bytes:
    try:
        return await call.read_body()
    except UpstreamError as exc:
        raise failed(source, exc) from exc


class PassThrough:
    """The rewriter for an answer whose model names are already the client's (another llmgw's)."""

    def body(self, data: bytes) -> bytes:
        return data

    def chunk(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""
