"""Building the Tornado application and running the process: startup (and its fault knobs), the
listening socket, the signals, the ballast and the child, and the exit."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from .. import fake_rpc
from .counter import Router, run_http_side
from .options import Options, UsageError, parse_args
from .routes import NotFoundHandler, route_table
from .state import Engine, log, log_tagged

__all__ = ["main", "make_app", "serve"]

CHILD_COMMAND = [sys.executable, "-c", "import time; time.sleep(600)"]


def log_request(handler: tornado.web.RequestHandler) -> None:
    """llama-server's one line per request, which the gateway relays to its own log."""
    request = handler.request
    status = handler.get_status()
    log_tagged(f"srv  log_server_r: request: {request.method} {request.uri} {request.remote_ip} {status}")


def make_app(engine: Engine) -> tornado.web.Application:
    """The application both processes serve (``--fake-count-process``), over one ``Engine`` each."""
    args: dict[str, Any] = {"engine": engine}
    return tornado.web.Application(
        route_table(engine),
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        log_function=log_request,
    )


def spawn_child() -> subprocess.Popen[bytes]:
    """Start a long sleeper in our process group; only a process-group kill stops it."""
    return subprocess.Popen(
        CHILD_COMMAND, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


class Shutdown:
    """Handles SIGTERM/SIGINT: wait ``--fake-shutdown-delay`` seconds, then stop the loop."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def request(self) -> None:
        if self._task is None:  # later signals change nothing
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        log("srv    operator(): cleaning up before exit...")
        await asyncio.sleep(self.delay)
        self.stopped.set()


@dataclass
class Counter:
    """The HTTP process of ``--fake-count-process`` (accepts, counts): its pid and our end of the pair."""

    pid: int
    pair: socket.socket

    def stop(self) -> None:
        """Close the pair (the process exits at its end of file) and reap it, killing it if it lingers."""
        self.pair.close()
        for _ in range(500):  # up to ~5 s
            if os.waitpid(self.pid, os.WNOHANG) != (0, 0):
                return
            time.sleep(0.01)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def fork_counter(options: Options, sockets: list[socket.socket], started: float) -> Counter:
    """Start the HTTP process of ``--fake-count-process`` before any event loop runs (see
    ``counter``); in the child this never returns."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid:
        theirs.close()
        return Counter(pid, ours)
    code = 0
    try:
        ours.close()
        engine = Engine(options, sockets[0].getsockname()[1], started=started)
        run_http_side(make_app(engine), theirs, sockets)
    except BaseException:  # whatever happens, the forked child must not return into main()
        code = 1
    finally:
        sys.stdout.flush()
        os._exit(code)


async def serve(
    options: Options, sockets: list[socket.socket], counter: Counter | None = None, started: float | None = None
) -> int:
    """Serve on the bound ``sockets`` until SIGTERM/SIGINT (and the shutdown delay); return the exit code."""
    shutdown = Shutdown(options.fake_shutdown_delay)
    loop = asyncio.get_running_loop()
    if not options.fake_ignore_sigterm:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, shutdown.request)
    port = sockets[0].getsockname()[1]
    # Written, not just allocated, so the pages count in the process's RSS like loaded weights.
    ballast = b"\x01" * (max(0, options.fake_memory_mb) << 20)
    engine = Engine(options, port, sockets, started=started, helper=None if counter is None else counter.pid)
    if options.rpc:
        links = fake_rpc.connect(options.rpc, options.device)
        if isinstance(links, str):
            log(links)
            return 1
        engine.rpc = links
    app = make_app(engine)
    server: tornado.httpserver.HTTPServer | None = None
    router: Router | None = None
    if counter is None:
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
    else:
        router = Router(app, counter.pair, lambda path: True)

        def take_over() -> None:
            log("srv  fake: the HTTP process is gone; this process accepts and answers everything now")
            assert router is not None
            router.accept(sockets)

        router.pair.watch(router.serve_and_return, take_over)
    engine.events.emit("start", pid=os.getpid(), port=port, n_ctx=engine.n_ctx)
    if counter is not None:
        engine.events.emit("counter", pid=counter.pid)
    child = spawn_child() if options.fake_spawn_child else None
    if child is not None:
        engine.events.emit("child", pid=child.pid)
    threads = 1 if counter is None else 2
    log(f"main: HTTP server is listening, hostname: {options.host}, port: {port}, http threads: {threads}")
    log(f"main: loading model '{options.model}'")
    if not options.fake_never_healthy:

        def loaded() -> None:
            # As llama-server 0.10068 logs its slots once the model is loaded (the gateway reads the
            # per-slot context there), then that it listens.
            slots, n_ctx = len(engine.slots), engine.reported_n_ctx
            log(f"srv    load_model: initializing, n_slots = {slots}, n_ctx_slot = {n_ctx}, kv_unified = 'false'")
            log(f"main: server is listening on http://{options.host}:{port} - starting the main loop")

        loop.call_later(max(0.0, engine.ready_at - time.monotonic()), loaded)
    await shutdown.stopped.wait()
    del ballast
    if server is not None:
        server.stop()
    if router is not None:
        router.stop()
        for sock in sockets:
            sock.close()
    if counter is not None:
        counter.stop()
    if router is not None:
        await router.close()
    engine.events.emit("exit")
    log("main: exiting")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The fake llama-server's command line (see README.md); returns the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if "--version" in args:  # as llama-server: the build on stderr, then exit
        log(f"version: 1 ({parse_args([a for a in args if a != '--version']).fake_build})")
        log("built with fake_llama_server.py")
        return 0
    try:
        options = parse_args(args)
    except UsageError as exc:
        log(str(exc))
        return 1
    if options.fake_ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("build: fake (fake_llama_server.py)", flush=True)
    if options.fake_exit_at_startup is not None:
        log(f"main: loading model '{options.model}'")
        log("error: fake startup failure")
        log("main: exiting due to model loading error")
        return options.fake_exit_at_startup
    try:
        sockets = tornado.netutil.bind_sockets(options.port, options.host)
    except OSError as exc:
        log(f"error: couldn't bind HTTP server socket, hostname: {options.host}, port: {options.port}: {exc}")
        return 1
    started = time.monotonic()
    counter = fork_counter(options, sockets, started) if options.fake_count_process else None
    return asyncio.run(serve(options, sockets, counter, started))
