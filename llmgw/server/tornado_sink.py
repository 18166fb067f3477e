"""TornadoSink: the request path's ClientSink on a Tornado handler, through Tornado's public API.

It keeps what the handler must know about the answer (has it begun, is it over, did the client
leave), so nothing reads Tornado's private fields, and it closes the upstream call at once when
the client leaves (closing the connection is what makes llama-server drop the task).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

from tornado import iostream, web
from tornado.http1connection import HTTP1Connection

from llmgw.proxy import ClientGone
from llmgw.upstream import UpstreamCall


class TornadoSink:
    def __init__(self, handler: web.RequestHandler) -> None:
        self._handler = handler
        self._gone = False
        self._call: UpstreamCall | None = None
        self._task: asyncio.Task[object] | None = None  # the request, while it waits for an engine
        self.started = False  # the answer's head went out: its status can no longer change
        self.finished = False

    # ------------------------------------------------------------------ ClientSink

    @property
    def gone(self) -> bool:
        return self._gone

    def tie(self, call: UpstreamCall | None) -> None:
        self._call = call

    def start_response(self, status: int, headers: list[tuple[str, str]]) -> None:
        handler = self._handler
        handler.set_status(status)
        for name, value in headers:
            handler.set_header(name, value)
        if any(name.lower() == "content-type" and "text/event-stream" in value for name, value in headers):
            handler.set_header("Cache-Control", "no-cache")
            handler.set_header("X-Accel-Buffering", "no")

    async def send(self, chunk: bytes) -> None:
        if self._gone:
            raise ClientGone()
        self._handler.write(chunk)
        self.started = True
        try:
            await self._handler.flush()
        except iostream.StreamClosedError:
            self.left()
            raise ClientGone() from None

    async def send_whole(self, body: bytes) -> None:
        if self._gone:
            raise ClientGone()
        # finish() without an earlier flush sends the head with a Content-Length, and the body,
        # in one write (a flushed answer goes out chunked, its end in a write of its own).
        self.started = self.finished = True
        try:
            await self._handler.finish(body)
        except iostream.StreamClosedError:
            self.left()
            raise ClientGone() from None
        if self._http10():
            self._connection().close()  # as every relayed answer to an HTTP/1.0 client ends

    # ------------------------------------------------------------------ the handler's side

    async def serve(self, work: Awaitable[None]) -> None:
        """Run the request path; a client that leaves while it waits for an engine cancels it."""
        self._task = asyncio.current_task()
        try:
            await work
        finally:
            self._task = None

    async def finish(self) -> None:
        """Finish a relayed answer, whose length was unknown when its head went out.

        HTTP/1.1 clients get it chunked. An HTTP/1.0 client can only see its end as the close,
        but Tornado keeps an HTTP/1.0 keep-alive connection open (announcing "Keep-Alive", with
        no length), so that client would wait for ever: close once the answer is written.
        """
        self.finished = True
        finished = self._handler.finish()
        if not self._http10():
            return
        with contextlib.suppress(iostream.StreamClosedError):
            await finished
        self._connection().close()

    def left(self) -> None:
        """The client disconnected."""
        self._gone = True
        if self._call is not None:
            self._call.abort()
        elif self._task is not None:
            # Still waiting for an engine (queued, or its start): stop waiting, so the queue moves
            # on and no engine starts for a client that is gone.
            self._task.cancel()

    def _http10(self) -> bool:
        request = self._handler.request
        return request.version == "HTTP/1.0" and isinstance(request.connection, HTTP1Connection)

    def _connection(self) -> HTTP1Connection:
        connection = self._handler.request.connection
        assert isinstance(connection, HTTP1Connection)
        return connection
