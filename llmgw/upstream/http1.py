"""HTTP/1.1 exchanges with engines on asyncio protocols: keep-alive connections pooled per
address, response bodies decoded one socket read at a time.

Why not Tornado's SimpleAsyncHTTPClient underneath: it opens a TCP connection per request and
decodes a chunked body one chunk at a time (a ``read_until`` plus a ``read_bytes``, with their
futures, per ~150-byte SSE event). Those two were most of the gateway's CPU per request and
per streamed token (benchmarks/findings.md). :class:`~llmgw.upstream.http.EngineHTTPClient` keeps
Tornado's ``AsyncHTTPClient`` interface on top of this module.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

_MAX_HEAD = 64 * 1024  # a response head larger than this is refused
_MAX_CHUNK_LINE = 1024  # a chunk-size line (hex size and extensions) longer than this is refused
_HIGH_WATER = 256 * 1024  # unconsumed bytes past which the socket is no longer read (backpressure)
_DEFAULT_KEEP = 4.0  # seconds an idle connection is kept when the engine announces no keep-alive timeout
_MAX_IDLE_PER_ADDRESS = 32

Address = tuple[str, int]


class ExchangeError(Exception):
    """The exchange failed. ``stale``: a reused connection turned out closed before any byte of the
    answer came, so the request may safely be sent again on a new connection. ``unsent``: no
    connection could be made, so the engine never saw the request."""

    def __init__(self, message: str, stale: bool = False, unsent: bool = False) -> None:
        super().__init__(message)
        self.stale = stale
        self.unsent = unsent


class Connection(asyncio.Protocol):
    """One TCP connection to an engine. Received bytes pile up in ``buffer`` until the exchange
    takes them; past ``_HIGH_WATER`` the socket is no longer read, so a slow reader slows the engine."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False  # EOF, reset or closed by us: never reused
        self.error: BaseException | None = None
        self.uses = 0  # exchanges started on it
        self.expires = 0.0  # while idle in the pool: monotonic time after which it is not reused
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()

    # used by the exchange
    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def more(self) -> None:
        """Wait until some bytes are buffered; raises ExchangeError once the connection is closed
        with nothing left to read."""
        while not self.buffer:
            if self.closed:
                reason = f" ({self.error})" if self.error is not None else ""
                raise ExchangeError(f"the engine closed the connection{reason}")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        if self.transport is None or self.closed or self.transport.is_closing():
            raise ExchangeError("the connection to the engine is closed")
        self.transport.write(data)

    def close(self, abort: bool = False) -> None:
        """``abort``: at once (the engine sees the connection drop now, whatever is left to send)."""
        self.closed = True
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        self._wake()

    @property
    def reusable(self) -> bool:
        return not self.closed and not self.buffer and self.transport is not None and not self.transport.is_closing()


class ConnectionPool:
    """Idle keep-alive connections per engine address, most recently used first (the one most
    surely still open). A connection idle longer than the engine keeps it is not reused."""

    def __init__(self) -> None:
        self._idle: dict[Address, list[Connection]] = {}
        self._closed = False

    def take(self, address: Address) -> Connection | None:
        """An idle connection still open, or None."""
        idle = self._idle.get(address)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.reusable and now < conn.expires:
                return conn
            conn.close()
        return None

    async def acquire(self, address: Address, connect_timeout: float) -> Connection:
        """An idle connection, else a new one."""
        conn = self.take(address)
        if conn is not None:
            return conn
        loop = asyncio.get_running_loop()
        host, port = address
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(address), host, port),
                connect_timeout if connect_timeout > 0 else None,
            )
        except TimeoutError:
            raise ExchangeError(f"timeout while connecting to {host}:{port}", unsent=True) from None
        except OSError as exc:
            raise ExchangeError(f"cannot connect to {host}:{port}: {exc.strerror or exc}", unsent=True) from exc
        assert isinstance(protocol, Connection)
        return protocol

    def release(self, conn: Connection, keep_for: float | None) -> None:
        """Put the connection back for ``keep_for`` seconds (None: close it)."""
        idle = self._idle.setdefault(conn.address, [])
        if keep_for is None or keep_for <= 0 or self._closed or not conn.reusable or len(idle) >= _MAX_IDLE_PER_ADDRESS:
            conn.close()
            return
        conn.expires = time.monotonic() + keep_for
        idle.append(conn)

    def forget(self, address: Address) -> None:
        """Close the idle connections to an address (its engine stopped)."""
        for conn in self._idle.pop(address, []):
            conn.close()

    def idle_count(self, address: Address) -> int:
        return sum(1 for conn in self._idle.get(address, []) if conn.reusable)

    def close(self) -> None:
        self._closed = True
        for address in list(self._idle):
            self.forget(address)


@dataclass
class Head:
    """A response's status line and headers, in order."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def values(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]


def parse_head(raw: bytes) -> Head:
    """Status line and header lines (without the final blank line); raises ExchangeError if malformed."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise ExchangeError(f"malformed status line from the engine: {lines[0][:80]!r}")
    head = Head(parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "")
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and head.headers:  # obsolete line folding
            name, value = head.headers[-1]
            head.headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise ExchangeError(f"malformed header line from the engine: {line[:80]!r}")
        head.headers.append((name, value.strip()))
    return head


def _keep_alive(head: Head) -> float | None:
    """Seconds the engine keeps this connection open after the answer; None: it closes it."""
    connection = ",".join(head.values("Connection")).lower()
    tokens = {token.strip() for token in connection.split(",")}
    if "close" in tokens or (head.version == "HTTP/1.0" and "keep-alive" not in tokens):
        return None
    for value in head.values("Keep-Alive"):
        for param in value.split(","):
            key, _, number = param.strip().partition("=")
            if key.strip().lower() == "timeout" and number.strip().isdigit():
                # Give the connection back a second before the engine closes it, so a request
                # never races the engine's own close.
                return max(float(number) - 1.0, 0.5)
    return _DEFAULT_KEEP


OnHead = Callable[[Head], None]
OnData = Callable[[bytes], Awaitable[None] | None]


class _Body:
    """How a response body is delimited, decoded incrementally (chunked, by length, or to the close)."""

    def __init__(self, head: Head, method: str) -> None:
        self.done = False
        self.to_close = False
        self._length = -1  # remaining bytes of a Content-Length body
        self._chunked = False
        self._chunk_left = 0  # payload bytes left in the current chunk
        self._crlf = False  # the CRLF after a chunk's payload is due
        self._trailers = False  # after the last chunk: trailer lines until a blank one
        self._pending = b""
        if method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
            self.done = True
            return
        encodings = [e.strip().lower() for v in head.values("Transfer-Encoding") for e in v.split(",") if e.strip()]
        if encodings:
            if encodings != ["chunked"]:
                raise ExchangeError(f"unsupported Transfer-Encoding from the engine: {', '.join(encodings)}")
            self._chunked = True
            return
        lengths = {v.strip() for v in head.values("Content-Length")}
        if lengths:
            value = lengths.pop()
            if lengths or not value.isdigit() or len(value) > 18:
                raise ExchangeError("malformed Content-Length from the engine")
            self._length = int(value)
            self.done = self._length == 0
            return
        self.to_close = True

    def feed(self, data: bytes) -> list[bytes | memoryview]:
        """The payload bytes in ``data`` (in order); sets ``done`` at the body's end."""
        if self.to_close:
            return [data]
        if not self._chunked:
            if len(data) > self._length:
                raise ExchangeError("the engine sent more than its Content-Length")
            self._length -= len(data)
            self.done = self._length == 0
            return [data]
        if self._pending:
            data = self._pending + data
            self._pending = b""
        out: list[bytes | memoryview] = []
        pos, end = 0, len(data)
        view = memoryview(data)
        bulk = True  # one try per read, at the first chunk boundary (a read usually ends mid-chunk)
        while pos < end and not self.done:
            if bulk and not (self._chunk_left or self._crlf or self._trailers):
                bulk = False
                pos += self._whole_chunks(data[pos:] if pos else data, out)
                continue
            if self._chunk_left:
                take = min(self._chunk_left, end - pos)
                out.append(view[pos : pos + take])
                pos += take
                self._chunk_left -= take
                if self._chunk_left:
                    break
                self._crlf = True
            if self._crlf:
                if end - pos < 2:
                    break
                if data[pos : pos + 2] != b"\r\n":
                    raise ExchangeError("malformed chunked body from the engine (no CRLF after a chunk)")
                pos += 2
                self._crlf = False
                continue
            newline = data.find(b"\r\n", pos)
            if newline < 0:
                if end - pos > _MAX_CHUNK_LINE:
                    raise ExchangeError("malformed chunked body from the engine (chunk-size line too long)")
                break
            line = data[pos:newline]
            pos = newline + 2
            if self._trailers:
                self.done = not line
                continue
            size = line.split(b";", 1)[0].strip()
            if not size or len(size) > 15 or size.strip(b"0123456789abcdefABCDEF"):
                raise ExchangeError(f"malformed chunk size from the engine: {bytes(line[:40])!r}")
            self._chunk_left = int(size, 16)
            self._trailers = self._chunk_left == 0
        if pos < end:
            if self.done:
                raise ExchangeError("the engine sent bytes after the end of its answer")
            self._pending = data[pos:]
        return out

    def _whole_chunks(self, data: bytes, out: list[bytes | memoryview]) -> int:
        """Fast path for many small chunks (an SSE stream, a chunk per event): split the buffer on
        CRLF and take the leading (size line, payload) pairs whose sizes match their payloads;
        returns where they end. The first pair that does not match (a chunk cut by the end of the
        buffer, a payload holding a CRLF, an extension, trailers) is left to the exact parser: a
        payload with a CRLF inside always looks shorter than its size, so no pair is taken wrongly.
        All C but one ``int()`` per chunk."""
        parts = data.split(b"\r\n")
        pairs = (len(parts) - 1) // 2
        if pairs < 2:
            return 0
        sizes, payloads = parts[0 : 2 * pairs : 2], parts[1 : 2 * pairs : 2]
        lengths = list(map(len, payloads))
        try:
            announced = [int(size, 16) for size in sizes]
        except ValueError:
            announced = []
            for size in sizes:
                try:
                    announced.append(int(size, 16))
                except ValueError:
                    break
        if announced != lengths:
            pairs = next(
                (i for i, (a, b) in enumerate(zip(announced, lengths, strict=False)) if a != b), len(announced)
            )
        try:
            last = announced.index(0, 0, pairs)  # the last chunk (without trailers): the body ends there
        except ValueError:
            pass
        else:
            pairs = last + 1
            self.done = True
        out.extend(payloads[: pairs - 1] if self.done else payloads[:pairs])
        return sum(map(len, sizes[:pairs])) + sum(lengths[:pairs]) + 4 * pairs


def send(conn: Connection, request: bytes) -> None:
    """Write a request (head and body) on the connection; :func:`exchange` then reads its answer.
    Raises ExchangeError (``stale`` on a reused connection) if the connection is closed."""
    conn.uses += 1
    try:
        conn.write(request)
    except ExchangeError as exc:
        conn.close(abort=True)
        raise ExchangeError(str(exc), stale=conn.uses > 1) from None


async def exchange(
    conn: Connection,
    method: str,
    on_head: OnHead,
    on_data: OnData | None,
    max_body: int,
) -> tuple[Head, bytes, float | None]:
    """Read the answer to the request just sent: the head, the body (empty when ``on_data``
    streamed it) and how long the connection may be kept (None: close it).

    ``on_data`` gets the payload of each socket read in one piece; when it returns an awaitable
    the connection is not read further until it completes.
    """
    reused = conn.uses > 1
    got_bytes = False
    try:
        while True:  # 1xx interim answers come before the real one
            raw = b""
            while True:
                await conn.more()
                got_bytes = True
                raw += conn.take()
                end = raw.find(b"\r\n\r\n")
                if end >= 0:
                    break
                if len(raw) > _MAX_HEAD:
                    raise ExchangeError("the engine's response head is too large")
            head = parse_head(raw[:end])
            rest = raw[end + 4 :]
            if not 100 <= head.status < 200:
                break
            conn.buffer[:0] = rest
        on_head(head)
        body = _Body(head, method)
        parts: list[bytes] = []
        size = 0
        data = rest
        while True:
            if data:
                pieces = body.feed(data)
                if pieces:
                    chunk = pieces[0] if len(pieces) == 1 and isinstance(pieces[0], bytes) else b"".join(pieces)
                    if on_data is None:
                        size += len(chunk)
                        if size > max_body:
                            raise ExchangeError(f"the engine's answer is over {max_body} bytes")
                        parts.append(chunk)
                    elif chunk:
                        result = on_data(chunk)
                        if inspect.isawaitable(result):
                            await result
            if body.done:
                break
            try:
                await conn.more()
            except ExchangeError:
                if body.to_close:
                    break
                raise ExchangeError("the engine closed the connection before the end of its answer") from None
            data = conn.take()
        keep = None if body.to_close or conn.buffer else _keep_alive(head)
        return head, b"".join(parts), keep
    except ExchangeError as exc:
        conn.close(abort=True)
        if reused and not got_bytes and not exc.stale:
            raise ExchangeError(str(exc), stale=True) from exc
        raise
    except BaseException:
        conn.close(abort=True)
        raise


def request_bytes(method: str, target: str, host: str, headers: list[tuple[str, str]], body: bytes | None) -> bytes:
    """The request head (and body) as one buffer: one write, one segment for small requests."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers if name.lower() not in ("host", "content-length")]
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head
