"""HTTP plumbing to engines: an abortable client and a pull-style streaming upstream call.

Tornado has no public way to cancel a fetch (tornado issues #157, #3289). Closing the
connection's stream is the only thing that makes llama-server drop the task at once, so
:class:`EngineHTTPClient` keeps a handle on each connection it opens. This uses
``SimpleAsyncHTTPClient._connection_class`` and ``_HTTPConnection._handle_exception``
(private API, pinned by ``tornado>=6.6,<6.7`` and covered by the disconnect tests).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from tornado import httputil, netutil
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.simple_httpclient import HTTPStreamClosedError, SimpleAsyncHTTPClient, _HTTPConnection

logger = logging.getLogger(__name__)

# Chunks buffered between the upstream socket and the client writer; small, so a slow
# client slows the engine down instead of filling the gateway's memory.
_STREAM_QUEUE_CHUNKS = 16


class UpstreamError(Exception):
    """The engine could not be reached, or the connection broke mid-response."""


@dataclass(frozen=True)
class JsonReply:
    status: int
    data: Any  # the parsed body; None when it is not JSON
    body: bytes
    content_type: str


class _AbortableConnection(_HTTPConnection):
    def __init__(self, client: SimpleAsyncHTTPClient | None, request: HTTPRequest, *args: Any) -> None:
        call = getattr(request, "llmgw_call", None)
        if call is not None:
            call._connection = self
        super().__init__(client, request, *args)
        if call is not None and call._aborted:
            self.abort()  # aborted before the connection existed: it closes as soon as it connects

    def abort(self) -> None:
        if self.final_callback is not None:
            self._handle_exception(HTTPStreamClosedError, HTTPStreamClosedError("aborted by gateway"), None)


class _LiteralResolver(netutil.DefaultLoopResolver):
    """Engines are usually at an IP literal: answer those at once instead of a thread-pool getaddrinfo."""

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        if netutil.is_valid_ip(host):
            if ":" in host:
                return [(socket.AF_INET6, (host, port, 0, 0))]
            return [(socket.AF_INET, (host, port))]
        return await super().resolve(host, port, family)


class EngineHTTPClient(SimpleAsyncHTTPClient):
    """One per gateway: no request timeout, no redirects, no decompression, no client cap."""

    def initialize(self, max_clients: int = 100_000, **kwargs: Any) -> None:  # type: ignore[override]
        # max_body_size: a generation stream has no natural size bound.
        super().initialize(max_clients=max_clients, max_body_size=2**62, **kwargs)

    def _connection_class(self) -> type:
        return _AbortableConnection

    @classmethod
    def create(cls) -> EngineHTTPClient:
        client = cls(
            force_instance=True,
            resolver=_LiteralResolver(),
            defaults={
                "connect_timeout": 10.0,
                "request_timeout": 0.0,
                "follow_redirects": False,
                "decompress_response": False,
            },
        )
        assert isinstance(client, EngineHTTPClient)
        return client

    async def json_call(self, url: str, payload: Any | None = None, timeout: float = 60.0) -> tuple[int, Any]:
        """Small JSON request/response (health, props, counting). Raises UpstreamError if unreachable."""
        reply = await self.json_exchange(url, payload, timeout)
        return reply.status, reply.data

    async def json_exchange(self, url: str, payload: Any | None = None, timeout: float = 60.0) -> JsonReply:
        """Like :meth:`json_call`, keeping the raw body and content type (to relay an engine's error as it is)."""
        body = None if payload is None else json.dumps(payload).encode()
        request = HTTPRequest(
            url,
            method="GET" if body is None else "POST",
            body=body,
            headers={"Content-Type": "application/json"} if body is not None else None,
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
        self, http: EngineHTTPClient, url: str, body: bytes | None, headers: dict[str, str], method: str = "POST"
    ) -> None:
        self._http = http
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(_STREAM_QUEUE_CHUNKS)
        self._head: asyncio.Future[tuple[int, httputil.HTTPHeaders]] = asyncio.get_running_loop().create_future()
        self._status = 0
        self._headers = httputil.HTTPHeaders()
        self._connection: _AbortableConnection | None = None
        self._aborted = False
        self.error: UpstreamError | None = None
        request = HTTPRequest(
            url,
            method=method,
            body=body if method == "POST" else None,
            headers=headers,
            header_callback=self._on_header_line,
            streaming_callback=self._on_chunk,
        )
        request.llmgw_call = self  # type: ignore[attr-defined]
        self._task = asyncio.ensure_future(self._run(request))

    def _on_header_line(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if not line:
            # End of a header block; 1xx blocks are followed by the real one.
            if self._status >= 200 and not self._head.done():
                self._head.set_result((self._status, self._headers))
            return
        if line.startswith("HTTP/"):
            self._status = httputil.parse_response_start_line(line).code
            self._headers = httputil.HTTPHeaders()
        else:
            self._headers.parse_line(line)

    async def _on_chunk(self, chunk: bytes) -> None:
        if self._aborted:
            raise HTTPStreamClosedError("aborted by gateway")
        await self._queue.put(chunk)

    async def _run(self, request: HTTPRequest) -> None:
        try:
            response = await self._http.fetch(request, raise_error=False)
            if response.code == 599:
                self.error = UpstreamError(str(response.error))
        except (OSError, HTTPClientError) as exc:
            self.error = UpstreamError(str(exc))
        except Exception as exc:  # anything else from tornado is still an upstream failure
            self.error = UpstreamError(f"{type(exc).__name__}: {exc}")
        finally:
            if not self._head.done():
                if self.error is None:
                    self.error = UpstreamError("engine closed the connection without a response")
                self._head.set_exception(self.error)
            if not self._aborted:
                await self._queue.put(None)

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
        if self._connection is not None:
            self._connection.abort()
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
        self._task.add_done_callback(lambda _: callback(self))
