"""A minimal HTTP/1.1 client on raw asyncio sockets, with per-event timing of SSE streams (and of
NDJSON streams, Ollama's: one JSON object per line, the last with ``"done":true``).

The same client talks to the gateway and to the engines, so its own (small) cost is the
same on both sides of every comparison. One :class:`Connection` is one keep-alive TCP
connection, used for one request at a time (like one connection of a client pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

# A streamed chat chunk that carries text (fake engine: '"content": "tok0"', llama-server: '"content":"x"').
_CONTENT = re.compile(rb'"content": ?"[^"]')

now = time.perf_counter


class HTTPError(Exception):
    """The connection broke or the response was malformed."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    t_send: float
    t_head: float = 0.0
    t_end: float = 0.0
    # SSE and NDJSON streams only
    events: int = 0  # data events other than [DONE] (NDJSON: lines)
    done: bool = False  # saw "data: [DONE]" (NDJSON: a line with "done":true)
    t_first_event: float | None = None
    t_first_content: float | None = None  # first event carrying generated text
    event_times: list[float] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.t_end - self.t_send

    @property
    def ttft(self) -> float | None:
        """Time to the first generated text (streams), else None."""
        return None if self.t_first_content is None else self.t_first_content - self.t_send

    def json(self) -> Any:
        return json.loads(self.body)


class _SSE:
    __slots__ = ("keep", "parts", "pending", "resp")

    def __init__(self, resp: Response, keep: bool) -> None:
        self.resp = resp
        self.pending = b""
        self.keep = keep
        self.parts: list[bytes] = []

    def feed(self, data: bytes, t: float) -> None:
        if self.keep:
            self.parts.append(data)
        pending = self.pending + data if self.pending else data
        resp = self.resp
        start = 0
        while True:
            i = pending.find(b"\n\n", start)
            if i < 0:
                break
            event = pending[start:i]
            start = i + 2
            if not event.startswith(b"data:"):
                continue
            if event.startswith(b"data: [DONE]"):
                resp.done = True
                continue
            resp.events += 1
            resp.event_times.append(t)
            if resp.t_first_event is None:
                resp.t_first_event = t
            if resp.t_first_content is None and _CONTENT.search(event):
                resp.t_first_content = t
        self.pending = pending[start:]


class _NDJSON(_SSE):
    """Ollama's streams: one object per line; the last says ``"done":true``."""

    __slots__ = ()

    def feed(self, data: bytes, t: float) -> None:
        if self.keep:
            self.parts.append(data)
        pending = self.pending + data if self.pending else data
        resp = self.resp
        *lines, self.pending = pending.split(b"\n")
        for line in lines:
            if not line:
                continue
            resp.events += 1
            resp.event_times.append(t)
            if resp.t_first_event is None:
                resp.t_first_event = t
            if resp.t_first_content is None and _CONTENT.search(line):
                resp.t_first_content = t
            if b'"done":true' in line:
                resp.done = True


class Connection:
    """One keep-alive connection to host:port."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float = 300.0,
        keep_body: bool = True,
    ) -> Response:
        """Send one request and read the whole answer; SSE answers are timed event by event.

        ``body`` may be bytes or a JSON-able object. ``keep_body=False`` drops a stream's
        bytes once counted (long streams). Bounded by ``timeout``.
        """
        payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        fresh = self._writer is None
        try:
            return await asyncio.wait_for(self._request(method, path, payload, keep_body), timeout)
        except TimeoutError:
            await self.close()
            raise
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            if fresh:
                raise HTTPError(f"{method} {path}: {exc!r}") from exc
            # A reused keep-alive connection may have been closed by the server meanwhile: retry once.
            return await asyncio.wait_for(self._request(method, path, payload, keep_body), timeout)

    async def _request(self, method: str, path: str, payload: bytes | None, keep_body: bool) -> Response:
        if self._writer is None:
            await self.connect()
        assert self._reader is not None and self._writer is not None
        reader, writer = self._reader, self._writer
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if payload is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        data = (head + "\r\n").encode() + (payload or b"")
        t_send = now()
        writer.write(data)
        raw_head = await reader.readuntil(b"\r\n\r\n")
        t_head = now()
        lines = raw_head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError) as exc:
            raise HTTPError(f"bad status line {lines[0]!r}") from exc
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        resp = Response(status, headers, b"", t_send, t_head)
        ndjson = "application/x-ndjson" in headers.get("content-type", "")
        sse = ndjson or "text/event-stream" in headers.get("content-type", "")
        stream = _NDJSON if ndjson else _SSE
        if headers.get("transfer-encoding", "").lower() == "chunked":
            sink = stream(resp, keep_body or not sse)
            if sse:
                await self._read_chunked(reader, sink.feed)
            else:
                await self._read_chunked(reader, lambda d, t: sink.parts.append(d))
            resp.body = b"".join(sink.parts)
        elif "content-length" in headers:
            resp.body = await reader.readexactly(int(headers["content-length"]))
            if sse:
                sink = stream(resp, False)
                sink.feed(resp.body, now())
        else:
            resp.body = await reader.read()  # until close
            headers["connection"] = "close"
        resp.t_end = now()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return resp

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader, on_data: Any) -> None:
        """De-chunk the body; ``on_data(bytes, arrival_time)`` per chunk, timed at the socket read."""
        buf = b""
        pos = 0
        t = now()

        async def more() -> None:
            nonlocal buf, pos, t
            block = await reader.read(1 << 16)
            if not block:
                raise asyncio.IncompleteReadError(buf[pos:], None)
            t = now()
            buf = buf[pos:] + block
            pos = 0

        while True:
            idx = buf.find(b"\r\n", pos)
            while idx < 0:
                await more()
                idx = buf.find(b"\r\n", pos)
            size = int(buf[pos:idx].split(b";", 1)[0], 16)
            pos = idx + 2
            if size == 0:
                # Trailers (none expected), then the empty line.
                while True:
                    idx = buf.find(b"\r\n", pos)
                    while idx < 0:
                        await more()
                        idx = buf.find(b"\r\n", pos)
                    line_empty = idx == pos
                    pos = idx + 2
                    if line_empty:
                        return
            while len(buf) - pos < size + 2:
                await more()
            on_data(buf[pos : pos + size], t)
            pos += size + 2


async def fetch(host: str, port: int, method: str, path: str, body: Any = None, **kwargs: Any) -> Response:
    """One request on a connection of its own (connect time included in the timings' caller)."""
    conn = Connection(host, port)
    try:
        return await conn.request(method, path, body, **kwargs)
    finally:
        await conn.close()


async def wait_http_ok(host: str, port: int, path: str, timeout: float, poll: float = 0.005) -> float:
    """Poll ``GET path`` until it answers 200; returns the time it took. Tight poll (5 ms)."""
    t0 = now()
    deadline = t0 + timeout
    while True:
        try:
            resp = await fetch(host, port, "GET", path, timeout=max(0.5, min(5.0, deadline - now())))
            if resp.status == 200:
                return now() - t0
        except (OSError, HTTPError, asyncio.IncompleteReadError, TimeoutError):
            pass
        if now() >= deadline:
            raise TimeoutError(f"http://{host}:{port}{path} not ready after {timeout:.0f} s")
        await asyncio.sleep(poll)


async def wait_accepting(host: str, port: int, timeout: float, poll: float = 0.001) -> float:
    """Try to connect every ``poll`` s until the port accepts; returns when it did (perf_counter).

    A refused connect on loopback costs microseconds, so a 1 ms poll times a launch to about 1 ms
    without taking CPU from the process that is starting."""
    deadline = now() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if now() >= deadline:
                raise TimeoutError(f"{host}:{port} not accepting after {timeout:.0f} s") from None
            await asyncio.sleep(poll)
            continue
        t = now()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return t
