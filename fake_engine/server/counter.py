"""``--fake-count-process``: an HTTP side that counts, beside the process that generates.

llama-server accepts and reads requests on its HTTP threads and answers ``/tokenize`` and the
``input_tokens`` routes there, while its one inference loop generates: a count sent together
with a request costs that request nothing. The fake is Python: a thread of its own would still
share the interpreter lock with the generation (measured: a count and a request sent together
took longer with two threads than with one loop), so its HTTP side is a forked process, and the
two split each *request* between them, not each connection (a gateway's pooled connections carry
counts and generations alike):

* the HTTP process (the forked child) accepts every connection and owns it between requests: it
  peeks at the next request's first line (``MSG_PEEK``, nothing is consumed) and answers a count
  route itself, with the same application; any other request it passes, socket and all, to the
  main process (``SCM_RIGHTS`` over a ``socketpair``);
* the main process serves that one request and passes the socket back, so the next request on
  the connection is routed again.

So a count is answered even while the main process is busy, or frozen, mid-generation. The HTTP
process ignores SIGTERM and SIGINT and exits when the main process goes (end of file on the pair):
stopping the engine means stopping the main process, as with llama-server. If the HTTP process
goes first, the main process accepts and answers everything itself from then on.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import tornado.http1connection
import tornado.iostream
import tornado.netutil
import tornado.web

from .routes.counting import COUNT_PATHS

__all__ = ["Router", "run_http_side", "serve_one"]

logger = logging.getLogger(__name__)

_MAX_PEEK = 8192  # bytes looked at for the request line; a longer line goes to the main process
_PEEK_BACKOFF = (0.001, 0.1)  # wait between looks while a request line arrives in pieces: first, max
_PEEK_PATIENCE = 60.0  # seconds a connection may take to send one request line before it is closed
_HANDOFF = b"c"  # the one byte each descriptor message carries


class _Context:
    """What ``HTTPServerRequest`` reads from a connection's context: the client's address."""

    def __init__(self, address: Any) -> None:
        self.address = address
        self.remote_ip = address[0] if isinstance(address, tuple) and address else "0.0.0.0"
        self.protocol = "http"

    def __str__(self) -> str:
        return str(self.remote_ip)


def _peer(sock: socket.socket) -> Any:
    try:
        return sock.getpeername()
    except OSError:
        return ("0.0.0.0", 0)


async def serve_one(app: tornado.web.Application, sock: socket.socket) -> socket.socket | None:
    """Serve the request waiting on ``sock`` (and any pipelined after it) with ``app``; return the
    connection, now idle, for its next request, or None when it is closed or was taken over by a
    handler (a hang knob, a truncated body)."""
    stream = tornado.iostream.IOStream(sock)
    context = _Context(_peer(sock))
    params = tornado.http1connection.HTTP1ConnectionParameters(decompress=False)
    server_conn = object()
    while True:  # one turn per request already in the stream's buffer; ends when the buffer is empty
        conn = tornado.http1connection.HTTP1Connection(stream, False, params, context)
        try:
            keep = await conn.read_response(app.start_request(server_conn, conn))
        except Exception:  # what Tornado's own server loop would log and survive
            logger.exception("fake engine: error serving a request")
            keep = False
        if conn.stream is None:  # detached: the handler owns the socket now
            return None
        if not keep or stream.closed():
            stream.close()
            return None
        if stream._read_buffer_size == 0:  # nothing read ahead: the socket can change hands
            break
    idle = socket.socket(fileno=os.dup(sock.fileno()))
    stream.close()  # unregisters from the loop and closes the original descriptor, not the copy
    idle.setblocking(False)
    return idle


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def request_path(sock: socket.socket) -> str | None:
    """The path of the next request on ``sock``, read without consuming anything; "" when the
    request line cannot be read (the main process then answers it); None when the client closed."""
    wait, deadline = _PEEK_BACKOFF[0], time.monotonic() + _PEEK_PATIENCE
    while True:  # bounded by _PEEK_PATIENCE
        await _readable(sock)
        try:
            head = sock.recv(_MAX_PEEK, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            return None
        if not head:
            return None
        line, newline, _ = head.partition(b"\n")
        if newline or len(head) >= _MAX_PEEK:
            parts = line.split(b" ")
            return parts[1].split(b"?", 1)[0].decode("latin-1") if len(parts) == 3 else ""
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(wait)  # the start of a line is there, the rest is not yet: look again later
        wait = min(wait * 2, _PEEK_BACKOFF[1])


class _Pair:
    """One end of the ``socketpair`` the two processes pass connections over, one per message."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(True)  # sends of one byte and one descriptor: never waits in practice
        self.alive = True

    def send(self, conn: socket.socket) -> bool:
        """Pass ``conn`` to the other process and close our copy; False (``conn`` kept) when it is gone."""
        if not self.alive:
            return False
        try:
            self.sock.sendmsg([_HANDOFF], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [conn.fileno()]))])
        except OSError:
            return False
        conn.close()
        return True

    def _receive(self) -> tuple[bytes, list[int]]:
        """One message without waiting (``socket.recv_fds`` would block: it drops its flags)."""
        fds = array.array("i")
        data, ancillary, _, _ = self.sock.recvmsg(1, socket.CMSG_LEN(fds.itemsize), socket.MSG_DONTWAIT)
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        return data, list(fds)

    def watch(self, received: Callable[[socket.socket], None], gone: Callable[[], None]) -> None:
        """Call ``received`` with each connection the other process passes, ``gone`` once it exits."""
        loop = asyncio.get_running_loop()

        def drain() -> None:
            while True:  # ends when no message is left (BlockingIOError) or the pair is closed
                try:
                    data, fds = self._receive()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    data, fds = b"", []
                if not data:
                    loop.remove_reader(self.sock.fileno())
                    self.alive = False
                    gone()
                    return
                for fd in fds:
                    conn = socket.socket(fileno=fd)
                    conn.setblocking(False)
                    received(conn)

        loop.add_reader(self.sock.fileno(), drain)


class Router:
    """Serves connections for one process: the requests whose path ``here`` accepts with ``app``,
    the others passed over ``pair`` to the other process (while it lives)."""

    def __init__(self, app: tornado.web.Application, pair: socket.socket, here: Callable[[str], bool]) -> None:
        self.app = app
        self.pair = _Pair(pair)
        self.here = here
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop_accepting: list[Callable[[], None]] = []

    def accept(self, listening: list[socket.socket]) -> None:
        """Accept new connections on ``listening`` and route their requests."""
        for sock in listening:
            self._stop_accepting.append(tornado.netutil.add_accept_handler(sock, self._accepted))

    def stop(self) -> None:
        """Stop accepting; connections end with the process."""
        for stop in self._stop_accepting:
            stop()
        self._stop_accepting.clear()

    def follow(self, conn: socket.socket) -> None:
        """Route the requests of ``conn`` (idle, between requests) from now on."""
        self._spawn(self._route(conn))

    def serve_and_return(self, conn: socket.socket) -> None:
        """Serve the one request the other process passed ``conn`` for, then pass it back."""
        self._spawn(self._serve_and_return(conn))

    def _accepted(self, conn: socket.socket, address: Any) -> None:
        conn.setblocking(False)
        self.follow(conn)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _route(self, conn: socket.socket | None) -> None:
        while conn is not None:  # each turn serves one request; ends when the connection closes or leaves
            path = await request_path(conn)
            if path is None:
                conn.close()
                return
            if not self.here(path) and self.pair.send(conn):
                return
            conn = await serve_one(self.app, conn)

    async def _serve_and_return(self, conn: socket.socket) -> None:
        idle = await serve_one(self.app, conn)
        if idle is not None and not self.pair.send(idle):
            await self._route(idle)  # the other process is gone: this one routes it from now on

    async def close(self) -> None:
        """Cancel what is in flight (the process is about to exit)."""
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)


def run_http_side(app: tornado.web.Application, pair: socket.socket, listening: list[socket.socket]) -> None:
    """The HTTP process's whole life (in the forked child): accept, answer the count routes, pass
    every other request to the main process; return when the main process is gone."""
    for signum in (signal.SIGTERM, signal.SIGINT):  # only the main process decides when to stop
        signal.signal(signum, signal.SIG_IGN)

    async def http_side() -> None:
        gone = asyncio.Event()
        router = Router(app, pair, lambda path: path in COUNT_PATHS)
        router.pair.watch(router.follow, gone.set)  # connections coming back after their request
        router.accept(listening)
        await gone.wait()
        router.stop()
        await router.close()

    asyncio.run(http_side())
