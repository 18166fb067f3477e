"""LoadingFeedback: a streaming request that waits for an engine hears about it, once a second.

Without it a client that triggers a cold load waits 30-90 s with nothing on its stream, and
many give up. When the request's reservation has to wait (``Reservation.waiting``), a pump task
starts the response (200, ``text/event-stream``) and writes the request's progress (queue
position, phase, estimated percentage; see StatusTracker.progress) in the dialect's own shape
(llmgw.api.progress) until the reservation is granted. From then on the engine's events follow.
Once the response has begun, a failure can no longer be a status: the stream ends with the
dialect's error event instead, never with a 200 that looks like an answer (llama-swap's
failures look like successes).

Only one task writes to the client at a time: the exchange stops the pump (:meth:`ready`) before
it relays anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from llmgw.api import Dialect, Sizing
from llmgw.api.ollama.progress import OllamaThinking
from llmgw.api.progress import (
    LOAD_PHASES,
    REASONING,
    Progress,
    ProgressStream,
    Rewriter,
    headline,
    progress_stream,
    tick,
)
from llmgw.api.usage import AnswerStats
from llmgw.errors import GatewayError
from llmgw.proxy.sink import ClientSink, ProxyRequest
from llmgw.scheduling.scheduler import Ticket

logger = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between progress writes: "at least once a second"

ProgressOf = Callable[[Ticket], Progress | None]


class LoadingFeedback:
    def __init__(
        self,
        stream: ProgressStream | None,
        sink: ClientSink,
        progress: ProgressOf,
        stats: AnswerStats,
        interval: float = INTERVAL,
    ) -> None:
        """``stream`` None: no feedback (not a stream, or ``loading_feedback = "none"``)."""
        self._stream = stream
        self._sink = sink
        self._progress = progress
        self._stats = stats
        self._interval = interval
        self._ticket: Ticket | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._phase: str | None = None
        self._began: float | None = None
        self.started = False  # the response (200, event stream) has begun

    @classmethod
    def for_request(cls, request: ProxyRequest, sink: ClientSink, mode: str, progress: ProgressOf) -> LoadingFeedback:
        streaming = request.data.get("stream") is True and request.endpoint.sizing is Sizing.GENERATE
        stream: ProgressStream | None = None
        if streaming and request.dialect is Dialect.OLLAMA:
            # Only as thinking lines, and only when asked: any other line would break an Ollama stream.
            if mode == REASONING:
                stream = OllamaThinking(request.endpoint, request.requested, chat=request.path == "/api/chat")
        elif streaming:
            stream = progress_stream(request.endpoint, mode, request.requested)
        return cls(stream, sink, progress, request.stats)

    # ------------------------------------------------------------------ the exchange's calls

    def waiting(self, ticket: Ticket) -> None:
        """The reservation waits: report until it is granted."""
        if self._stream is None:
            return
        self._ticket = ticket
        if self._began is None:
            self._began = asyncio.get_running_loop().time()
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.ensure_future(self._pump())

    async def ready(self) -> None:
        """The lease was granted: stop reporting (the engine's answer comes next)."""
        await self.stop()
        if self.started and self._stream is not None and self._stream.reasoning and self._began is not None:
            waited = asyncio.get_running_loop().time() - self._began
            await self._send(self._stream.text(f"\nReady after {waited:.1f} s.\n\n"))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._stop.set()
            with contextlib.suppress(Exception):
                await task

    async def failed(self, error: GatewayError) -> bool:
        """The wait (or what followed it) failed: the dialect's error event, if the stream began.
        False when it had not: the caller answers with the error's status as usual."""
        await self.stop()
        if not self.started or self._stream is None:
            return False
        logger.warning("error after loading feedback began: %s", error.message)
        self._stats.stream_error = error.status
        await self._send(self._stream.error(error))
        return True

    def engine_error(self, status: int, body: bytes) -> bytes:
        """The engine refused the request after our response began: its error as a stream event."""
        assert self._stream is not None
        self._stats.stream_error = status
        return self._stream.engine_error(status, body)

    def relay(self, rewriter: Rewriter) -> tuple[bytes, Rewriter]:
        """What to send before the engine's events, and the rewriter they then go through."""
        assert self._stream is not None
        return self._stream.close(), self._stream.splice(rewriter, self._stats.feed)

    # ------------------------------------------------------------------ the pump

    async def _pump(self) -> None:
        assert self._stream is not None
        loop = asyncio.get_running_loop()
        due = loop.time()
        try:
            while not self._stop.is_set():
                progress = self._progress(self._ticket) if self._ticket is not None else None
                if progress is None:  # granted or failed meanwhile: the exchange takes over
                    return
                if not self.started:
                    self._sink.start_response(200, [("Content-Type", self._stream.content_type)])
                    self.started = True
                    await self._send(self._stream.open())
                await self._send(self._stream.text(self._render(progress)))
                due += self._interval  # on a fixed beat: a slow write does not stretch the gaps
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), max(due - loop.time(), 0.0))
        except Exception as exc:
            if self._sink.gone:  # the client left (ClientGone): the exchange notices on its own
                return
            logger.warning("loading feedback stopped: %r", exc, exc_info=True)

    def _render(self, progress: Progress) -> str:
        assert self._stream is not None
        if not self._stream.reasoning:
            return headline(progress)
        phase = "load" if progress.phase in LOAD_PHASES else progress.phase  # starting runs into loading
        if phase == self._phase:
            return tick(progress)
        first = self._phase is None
        self._phase = phase
        return ("" if first else "\n") + headline(progress)

    async def _send(self, data: bytes) -> None:
        if data:
            await self._sink.send(data)
