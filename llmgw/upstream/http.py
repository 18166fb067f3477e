"""HTTP to engines: Tornado's AsyncHTTPClient interface on keep-alive connections, and a
pull-style streaming upstream call.

:class:`EngineHTTPClient` is an ``AsyncHTTPClient`` whose exchanges run on :mod:`llmgw.upstream.http1`:
connections to each engine are kept open and reused (count and forward no longer open two new
TCP connections per request), bodies are decoded a socket read at a time, and every exchange can
be aborted at once (closing the connection is the only thing that makes llama-server drop a task;
Tornado has no public way to cancel a fetch, tornado issues #157 and #3289).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Protocol

from tornado import httputil
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from llmgw.upstream.http1 import Connection, ConnectionPool, ExchangeError, Head, exchange, request_bytes, send

logger = logging.getLogger(__name__)

# Chunks buffered between the upstream socket and the client writer; small, so a slow
# client slows the engine down instead of filling the gateway's memory.
_STREAM_QUEUE_CHUNKS = 16
_MAX_BODY = 100 * 1024 * 1024  # a non-streamed answer larger than this is an error (Tornado's default too)


class UpstreamError(Exception):
    """The engine could not be reached, or the connection broke mid-response. ``undelivered``: the
    engine surely never got the request (no connection, or a kept-alive one it had closed)."""

    def __init__(self, message: str, undelivered: bool = False) -> None:
        super().__init__(message)
        self.undelivered = undelivered


class EngineConnectionError(HTTPClientError):
    """No (complete) HTTP answer: refused, reset, timed out, aborted, malformed. Code 599, as Tornado's."""

    def __init__(self, message: str, undelivered: bool = False) -> None:
        super().__init__(599, message)
        self.undelivered = undelivered

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class JsonReply:
    status: int
    data: Any  # the parsed body; None when it is not JSON
    body: bytes
    content_type: str


class CallHooks(Protocol):
    """What an exchange tells the call it serves (UpstreamCall): how to abort it, and its head."""

    def attach(self, abort: Callable[[], None]) -> None: ...

    def head_received(self, status: int, headers: httputil.HTTPHeaders) -> None: ...


class EngineRequest(HTTPRequest):
    """An ``HTTPRequest`` with what only the engine client reads.

    ``hooks``: the call that is handed the exchange's abort function and, in place of
    ``header_callback``, the parsed head. ``retry_stale``: a request that met a pooled connection
    the engine had closed is sent again once, on a new one (only for requests that are safe to
    repeat, such as counting).
    """

    def __init__(self, url: str, *, hooks: CallHooks | None = None, retry_stale: bool = False, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.hooks = hooks
        self.retry_stale = retry_stale


class _Exchange:
    """What an abort needs to reach: the connection of the exchange in progress, if any yet."""

    __slots__ = ("aborted", "conn")

    def __init__(self) -> None:
        self.aborted = False
        self.conn: Any = None

    def abort(self) -> None:
        self.aborted = True
        if self.conn is not None:
            self.conn.close(abort=True)


class _Plan:
    """A request made ready to send: where, the bytes, and how it may be aborted or retried."""

    __slots__ = ("address", "current", "data", "hook", "method", "request", "retry")

    def __init__(self, request: HTTPRequest) -> None:
        url = urllib.parse.urlsplit(request.url)
        if url.scheme != "http" or not url.hostname:
            raise EngineConnectionError(f"unsupported URL for an engine: {request.url}")
        self.request = request
        self.address = (url.hostname, url.port or 80)
        self.method = request.method
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self.data = request_bytes(self.method, target, url.netloc, list(request.headers.get_all()), request.body)
        self.current = _Exchange()
        # fetch() hands over its own wrapper (which applies the client's defaults); ours is inside.
        own = getattr(request, "request", request)
        own = own if isinstance(own, EngineRequest) else None
        self.hook = hook = own.hooks if own is not None else None
        if hook is not None:
            hook.attach(self.current.abort)
        self.retry = own is not None and own.retry_stale


class EngineHTTPClient(AsyncHTTPClient):
    r"""One per gateway: keep-alive connections pooled per engine address, no request timeout, no
    redirects, no decompression, no cap on concurrent requests. Takes plain ``HTTPRequest``\ s
    and :class:`EngineRequest`\ s; ``header_callback`` is not supported (nothing needs it: an
    EngineRequest's hooks get the parsed head).
    """

    def initialize(self, defaults: dict[str, Any] | None = None) -> None:
        super().initialize(defaults)
        self.pool = ConnectionPool()
        self._running: set[asyncio.Task[None]] = set()

    @classmethod
    def create(cls) -> EngineHTTPClient:
        client = cls(
            force_instance=True,
            defaults={
                "connect_timeout": 10.0,
                "request_timeout": 0.0,
                "follow_redirects": False,
                "decompress_response": False,
            },
        )
        assert isinstance(client, EngineHTTPClient)
        return client

    def close(self) -> None:
        self.pool.close()
        super().close()

    def forget(self, base_url: str) -> None:
        """Close the pooled connections to an engine that stopped (connections go away with it)."""
        url = urllib.parse.urlsplit(base_url)
        self.pool.forget((url.hostname or "127.0.0.1", url.port or 80))

    def fetch_impl(self, request: HTTPRequest, callback: Callable[[HTTPResponse], None]) -> None:
        started = time.monotonic()
        try:
            plan = _Plan(request)
        except HTTPClientError as exc:
            callback(HTTPResponse(request, 599, error=exc, request_time=0.0))
            return
        # With a pooled connection at hand the request is written now, not a loop turn later.
        conn = None if plan.current.aborted else self.pool.take(plan.address)
        if conn is not None:
            try:
                send(conn, plan.data)
            except ExchangeError:
                conn = None
        task = asyncio.ensure_future(self._fetch(plan, conn, callback, started))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _fetch(
        self, plan: _Plan, conn: Connection | None, callback: Callable[[HTTPResponse], None], started: float
    ) -> None:
        request = plan.request
        try:
            response = await self._exchange(plan, conn, started)
        except HTTPClientError as exc:
            response = HTTPResponse(request, 599, error=exc, request_time=time.monotonic() - started)
        except Exception as exc:  # a streaming callback's own error ends the exchange, as in Tornado
            error = EngineConnectionError(f"{type(exc).__name__}: {exc}")
            response = HTTPResponse(request, 599, error=error, request_time=time.monotonic() - started)
        callback(response)

    async def _exchange(self, plan: _Plan, sent: Connection | None, started: float) -> HTTPResponse:
        request, current = plan.request, plan.current
        streaming_callback = request.streaming_callback
        headers = httputil.HTTPHeaders()
        hook = plan.hook

        def on_head(head: Head) -> None:
            for name, value in head.headers:
                headers.add(name, value)
            if hook is not None:
                hook.head_received(head.status, headers)

        timeout = request.request_timeout or None
        try:
            async with asyncio.timeout(timeout):
                for attempt in (1, 2):
                    conn = sent
                    sent = None
                    try:
                        if conn is None:
                            conn = await self.pool.acquire(plan.address, request.connect_timeout or 0.0)
                            current.conn = conn
                            if current.aborted:
                                conn.close(abort=True)
                                raise EngineConnectionError("aborted by gateway")
                            send(conn, plan.data)
                        current.conn = conn
                        head, body, keep = await exchange(conn, plan.method, on_head, streaming_callback, _MAX_BODY)
                    except ExchangeError as exc:
                        if current.aborted:
                            raise EngineConnectionError("aborted by gateway") from None
                        if exc.stale and plan.retry and attempt == 1:
                            logger.debug("%s: pooled connection was closed by the engine; retrying", request.url)
                            headers = httputil.HTTPHeaders()
                            continue
                        raise EngineConnectionError(str(exc), undelivered=exc.stale or exc.unsent) from None
                    current.conn = None  # complete: a late abort must not close it in the pool
                    if current.aborted:  # aborted as the answer ended: the caller wants no more of it
                        keep = None
                    self.pool.release(conn, keep)
                    break
        except TimeoutError:
            raise EngineConnectionError("Timeout during request") from None
        return HTTPResponse(
            request,
            head.status,
            headers=headers,
            buffer=BytesIO(body),
            effective_url=request.url,
            reason=head.reason,
            request_time=time.monotonic() - started,
        )

    async def json_call(self, url: str, payload: Any | None = None, timeout: float = 60.0) -> tuple[int, Any]:
        """Small JSON request/response (health, props, counting). Raises UpstreamError if unreachable."""
        reply = await self.json_exchange(url, payload, timeout)
        return reply.status, reply.data

    async def json_exchange(
        self, url: str, payload: Any | None = None, timeout: float = 60.0, headers: dict[str, str] | None = None
    ) -> JsonReply:
        """Like :meth:`json_call`, keeping the raw body and content type (to relay an engine's error as it is).

        These requests are safe to repeat: one that meets a pooled connection the engine closed
        meanwhile is sent again, once, on a new connection. ``headers``: more to send (a peer's key).
        """
        body = None if payload is None else json.dumps(payload).encode()
        sent = {"Content-Type": "application/json"} if body is not None else {}
        request = EngineRequest(
            url,
            retry_stale=True,
            method="GET" if body is None else "POST",
            body=body,
            headers={**sent, **(headers or {})} or None,
            request_timeout=timeout,
            connect_timeout=min(timeout, 10.0),
        )
        try:
            response: HTTPResponse = await self.fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as exc:
            raise UpstreamError(f"{url}: {exc}") from exc
        if response.code == 599:
            raise UpstreamError(f"{url}: {response.error}")
        raw = response.body or b""
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        return JsonReply(response.code, data, raw, response.headers.get("Content-Type", ""))


_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
        "Content-Encoding",
        "Server",
        "Date",
    )
)


def relay_headers(headers: httputil.HTTPHeaders) -> list[tuple[str, str]]:
    """Headers worth passing to the client (the gateway sets framing, CORS and request-id headers itself)."""
    return [
        (k, v)
        for k, v in headers.get_all()
        if k.lower() not in _HOP_BY_HOP and not k.lower().startswith("access-control-") and k.lower() != "x-request-id"
    ]


class UpstreamCall:
    """One proxied request: await :meth:`head`, then iterate the body chunks as they arrive.

    Pull-style so the caller can look at the status before deciding to relay anything
    (the context-overflow retry needs that), and so backpressure is natural: the engine
    is read no faster than the client is written.
    """

    def __init__(
        self,
        http: EngineHTTPClient,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        method: str = "POST",
        connect_timeout: float | None = None,
    ) -> None:
        """``connect_timeout``: the client's default (10 s) unless given (a peer's is its check timeout)."""
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(_STREAM_QUEUE_CHUNKS)
        self._head: asyncio.Future[tuple[int, httputil.HTTPHeaders]] = asyncio.get_running_loop().create_future()
        self._status = 0
        self._headers = httputil.HTTPHeaders()
        self._abort_exchange: Callable[[], None] | None = None
        self._aborted = False
        self._observer: Callable[[bytes | None], None] | None = None
        self.error: UpstreamError | None = None
        request = EngineRequest(
            url,
            hooks=self,
            method=method,
            body=body if method == "POST" else None,
            headers=headers,
            streaming_callback=self._on_chunk,
        )
        if connect_timeout:
            request.connect_timeout = connect_timeout
        self._ended = False  # the exchange is over: once the queue is empty, so is the body
        # fetch() starts the exchange at once (the request is written now when a pooled
        # connection is idle); its future says when it is over.
        try:
            self._fetch: asyncio.Future[HTTPResponse] = http.fetch(request, raise_error=False)
        except Exception as exc:
            self._fetch = asyncio.get_running_loop().create_future()
            self._fetch.set_exception(exc)
        self._fetch.add_done_callback(self._on_done)

    def head_received(self, status: int, headers: httputil.HTTPHeaders) -> None:
        """Called by EngineHTTPClient with the answer's head (interim 1xx answers are skipped there)."""
        self._status, self._headers = status, headers
        if not self._head.done():
            self._head.set_result((status, headers))

    def attach(self, abort: Callable[[], None]) -> None:
        """Called by EngineHTTPClient with the function that aborts the exchange."""
        self._abort_exchange = abort
        if self._aborted:
            abort()  # aborted before the exchange began: it ends as soon as it has a connection

    def observe(self, observer: Callable[[bytes | None], None]) -> None:
        """``observer`` sees every body chunk as it arrives, then None once the exchange is over."""
        self._observer = observer

    async def _on_chunk(self, chunk: bytes) -> None:
        if self._aborted:
            raise EngineConnectionError("aborted by gateway")
        if self._observer is not None:
            self._observer(chunk)
        await self._queue.put(chunk)

    def _on_done(self, fetch: asyncio.Future[HTTPResponse]) -> None:
        try:
            response = fetch.result()
            if response.code == 599:
                undelivered = isinstance(response.error, EngineConnectionError) and response.error.undelivered
                self.error = UpstreamError(str(response.error), undelivered)
        except (OSError, HTTPClientError) as exc:
            self.error = UpstreamError(str(exc), isinstance(exc, EngineConnectionError) and exc.undelivered)
        except Exception as exc:  # anything else is still an upstream failure
            self.error = UpstreamError(f"{type(exc).__name__}: {exc}")
        if not self._head.done():
            if self.error is None:
                self.error = UpstreamError("engine closed the connection without a response")
            self._head.set_exception(self.error)
            self._head.exception()  # mark retrieved: the error is also in self.error, for chunks()
        self._ended = True
        if self._observer is not None:
            self._observer(None)
        if not self._aborted and not self._queue.full():
            self._queue.put_nowait(None)  # wakes a reader waiting on an empty queue

    async def head(self, timeout: float = 0.0) -> tuple[int, httputil.HTTPHeaders]:
        """Status and headers; raises UpstreamError if the engine failed before answering, or
        (``timeout`` > 0) did not answer within that time, after aborting the call."""
        if timeout <= 0:
            return await asyncio.shield(self._head)
        try:
            return await asyncio.wait_for(asyncio.shield(self._head), timeout)
        except TimeoutError:
            self.abort()
            raise UpstreamError(f"the engine did not answer within {timeout:g} s (stream_idle_timeout)") from None

    async def chunks(self, idle_timeout: float = 0.0) -> AsyncIterator[bytes]:
        """Body chunks in order; raises UpstreamError if the body was cut short, or (``idle_timeout``
        > 0) if no byte came for that long, after aborting the call."""
        while True:
            if self._ended and self._queue.empty():
                break
            if idle_timeout > 0 and self._queue.empty():
                try:
                    chunk = await asyncio.wait_for(self._queue.get(), idle_timeout)
                except TimeoutError:
                    self.abort()
                    raise UpstreamError(
                        f"the engine sent nothing for {idle_timeout:g} s (stream_idle_timeout)"
                    ) from None
            else:
                chunk = await self._queue.get()
            if chunk is None:
                break
            yield chunk
        if self.error is not None:
            raise self.error

    async def read_body(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    def abort(self) -> None:
        """Close the upstream connection now; the engine sees the disconnect and drops the task."""
        if self._aborted:
            return
        self._aborted = True
        if self._abort_exchange is not None:
            self._abort_exchange()
        if self.error is None:
            self.error = UpstreamError("aborted by gateway")
        # Unblock a streaming callback waiting on a full queue, and a reader waiting on an empty one.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)
        if not self._head.done():
            self._head.set_exception(UpstreamError("aborted by gateway"))
            self._head.exception()  # mark retrieved: nobody may be waiting any more

    def add_done_callback(self, callback: Callable[[UpstreamCall], None]) -> None:
        """Called once the upstream exchange is over (complete, failed or aborted)."""
        self._fetch.add_done_callback(lambda _: callback(self))
