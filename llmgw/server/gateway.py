"""GatewayServer: a gateway's life: start (services, listeners), reload, stop."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from typing import Any

from tornado import httpserver, iostream

from llmgw import listen
from llmgw.config import Config
from llmgw.server.app import make_app
from llmgw.server.services import Services, build

logger = logging.getLogger(__name__)


class _NoDelayHTTPServer(httpserver.HTTPServer):
    """Client connections with Nagle's algorithm off for good. Tornado turns it off at the end of
    each response and back on after (two setsockopt calls per response, 0.1-0.2 ms of a small
    request where system calls are slow); a proxy writes whole messages and flushes stream events
    at once, so there is nothing for Nagle to coalesce."""

    def handle_stream(self, stream: iostream.IOStream, address: tuple[Any, ...]) -> None:
        stream.set_nodelay(True)
        stream.set_nodelay = _keep_nodelay  # type: ignore[method-assign]
        super().handle_stream(stream, address)


def _keep_nodelay(value: bool) -> None:
    """IOStream.set_nodelay for a connection that keeps TCP_NODELAY on."""


class GatewayServer:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._services: Services | None = None
        self._servers: list[httpserver.HTTPServer] = []
        self._stopped = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> Config:
        return self._services.live.current if self._services is not None else self._config

    @property
    def services(self) -> Services:
        """The gateway's services (once started)."""
        assert self._services is not None, "the gateway is not started"
        return self._services

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve on ``sockets`` (opened early by ``python -m llmgw``), else on the configured addresses."""
        config = self._config
        sockets = listen.bind(config.server.listen) if sockets is None else sockets
        services = self._services = build(config)
        services.guard.start()
        services.pool.start()
        app = make_app(services)
        self._ticker = asyncio.ensure_future(self._tick())
        self._in_background(services.manager.learn_estimates())
        for sock in sockets:
            server = _NoDelayHTTPServer(
                app,
                max_body_size=config.server.max_body_bytes,
                idle_connection_timeout=3600,
                xheaders=False,
            )
            server.add_sockets([sock])
            self._servers.append(server)
            logger.info("listening on %s", _format_addr(sock.getsockname()))

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish for ``grace`` seconds, stop the engines."""
        grace = self.config.server.shutdown_grace if grace is None else grace
        for server in self._servers:
            server.stop()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for task in list(self._background):
            task.cancel()
        services = self._services
        if services is not None:
            # Peers that follow /events hear it before the stream ends, and stop sending requests.
            services.node.draining = True
            services.bus.publish("node", draining=True)
            await asyncio.sleep(0)
            services.bus.close()
            await services.pool.stop()
            manager = services.manager
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            # Requests forwarded to peers hold no engine here: their upstream calls are counted too.
            active = services.proxy.active
            while (manager.in_flight or active) and loop.time() < deadline:
                await asyncio.sleep(0.02)
            if manager.in_flight or active:
                logger.warning("shutdown: aborting %d request(s) still in flight", max(manager.in_flight, len(active)))
                services.proxy.abort_all()
            await manager.shutdown()
        for server in self._servers:
            await server.close_all_connections()
        self._servers.clear()
        if services is not None:
            services.keys.save()  # today's tokens, for the next start
            services.http.close()
            services.guard.stop()
        self._stopped.set()

    async def run(self) -> None:
        await self.start()
        await self._stopped.wait()

    async def reload(self, config: Config) -> None:
        """Apply a new, already validated config (SIGHUP)."""
        services = self.services
        if config.server.listen != services.live.current.server.listen:
            logger.warning("reload: listen addresses changed; restart the gateway to apply them")
        services.live.current = config
        services.slot_cache.configure(config)
        services.pool.configure(config.server.peering, config.server.node_name)
        await services.manager.adopt_config(config)
        self._in_background(services.manager.learn_estimates())
        logger.info("reload: configuration %s applied (%d models)", config.path, len(config.models))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Work the gateway does not wait for (reading model files for the memory estimate)."""
        task = asyncio.ensure_future(_logged(work))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _tick(self) -> None:
        """Once a second: load progress for watchers, while engines load; the keys' usage to the
        state file, when it changed (never a disk write on a request's way)."""
        services = self.services
        while True:
            await asyncio.sleep(1.0)
            if services.bus.watched:
                services.status.tick()
            services.keys.save()


async def _logged(work: Coroutine[Any, Any, None]) -> None:
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("background work failed")


def _format_addr(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
