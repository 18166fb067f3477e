"""GatewayServer: owns the listeners, the engine manager and the upstream HTTP client."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from tornado import httpserver, netutil, web

from llmgw.api import ROUTES
from llmgw.config import Config
from llmgw.errors import BadRequest, EngineNotRunning
from llmgw.events import EventBus
from llmgw.models import ModelSelector
from llmgw.runtime import ProcessGuard, ProcessRuntime, RunningEngine
from llmgw.scheduling import EngineManager
from llmgw.scheduling.scheduler import EngineRecord
from llmgw.server import ops_handlers, views, watch_handlers
from llmgw.server.activity import EngineLogs, RequestLog
from llmgw.server.feedback import LoadingFeedback
from llmgw.server.metrics import GatewayMetrics
from llmgw.server.proxy import ClientSink, Proxy, ProxyRequest
from llmgw.server.request_handler import (
    EngineInfoHandler,
    HealthHandler,
    ModelHandler,
    ModelRouteHandler,
    ModelsHandler,
    NotFoundHandler,
)
from llmgw.server.status import StatusTracker
from llmgw.slotcache import SlotCache
from llmgw.state import StateStore, default_state_dir
from llmgw.upstream import EngineHTTPClient

logger = logging.getLogger(__name__)


class GatewayServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.created = int(time.time())
        self._servers: list[httpserver.HTTPServer] = []
        self._stopped = asyncio.Event()
        self.http: EngineHTTPClient | None = None
        self.guard = ProcessGuard()
        self.bus = EventBus()
        self.activity = RequestLog(self.bus, self.metrics.observe_answer)
        self.engine_logs = EngineLogs(self.bus)
        self._ticker: asyncio.Task[None] | None = None
        routes: list[tuple[str, type[web.RequestHandler]]] = [
            *((path, ModelRouteHandler) for path in ROUTES),
            ("/v1/models", ModelsHandler),
            ("/models", ModelsHandler),
            ("/v1/models/(.+)", ModelHandler),
            ("/props", EngineInfoHandler),
            ("/slots", EngineInfoHandler),
            ("/health", HealthHandler),
            ("/v1/health", HealthHandler),
            ("/running", ops_handlers.RunningHandler),
            ("/unload", ops_handlers.UnloadHandler),
            ("/load", ops_handlers.LoadHandler),
            ("/metrics", ops_handlers.MetricsHandler),
            ("/events", watch_handlers.EventsHandler),
            ("/api/requests", watch_handlers.RequestsHandler),
            ("/api/logs", watch_handlers.EngineLogsHandler),
        ]
        self.known_routes = frozenset(path for path, _ in routes)
        ui: list[Any] = [
            (r"/ui", web.RedirectHandler, {"url": "/ui/"}),
            (
                r"/ui/(.*)",
                watch_handlers.UIHandler,
                {"path": str(watch_handlers.UI_DIR), "default_filename": "index.html"},
            ),
        ]
        self.app = web.Application(
            [(path, handler, {"gateway": self}) for path, handler in routes] + ui,
            default_handler_class=NotFoundHandler,
            default_handler_args={"gateway": self},
            compress_response=False,
        )

    # Built in start(), inside the running loop (Tornado clients must not be made at import time).
    manager: EngineManager
    selector: ModelSelector
    proxy: Proxy
    watch: StatusTracker
    slot_cache: SlotCache

    async def start(self) -> None:
        self.http = EngineHTTPClient.create()
        self.guard.start()
        state = StateStore(self.config.server.state_dir or default_state_dir())
        self.slot_cache = SlotCache(self.config)
        self.metrics.watch_slot_cache(self.slot_cache)
        runtime = ProcessRuntime(self.http, self.guard, slot_cache=self.slot_cache)
        self.manager = EngineManager(self.config, runtime, state)
        self.manager.on_engine_started = self.metrics.observe_start
        self.manager.on_engine_stopped = self.metrics.observe_stop
        self.watch = StatusTracker(self.manager, self.bus)
        self.manager.on_change = self.watch.changed
        runtime.on_spawned = self.watch.spawned
        runtime.on_output = self.engine_logs.add
        self.selector = ModelSelector(self.manager, self.config)
        self.selector.on_counted = self.metrics.observe_count
        self.selector.slot_cache = self.slot_cache
        self.proxy = Proxy(self.selector)
        self.proxy.feedback = self._feedback
        self._ticker = asyncio.ensure_future(self._tick())
        for host, port in self.config.server.listen:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sockets = netutil.bind_sockets(port, address=host, family=family)
            server = httpserver.HTTPServer(
                self.app,
                max_body_size=self.config.server.max_body_bytes,
                idle_connection_timeout=3600,
                xheaders=False,
            )
            server.add_sockets(sockets)
            self._servers.append(server)
            for sock in sockets:
                logger.info("listening on %s", _format_addr(sock.getsockname()))

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish for ``grace`` seconds, stop the engine."""
        grace = self.config.server.shutdown_grace if grace is None else grace
        for server in self._servers:
            server.stop()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self.bus.close()
        if hasattr(self, "manager"):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            while self.manager.in_flight and loop.time() < deadline:
                await asyncio.sleep(0.02)
            if self.manager.in_flight:
                logger.warning("shutdown: aborting %d request(s) still in flight", self.manager.in_flight)
                self.proxy.abort_all()
            await self.manager.shutdown()
        for server in self._servers:
            await server.close_all_connections()
        self._servers.clear()
        if self.http is not None:
            self.http.close()
            self.http = None
        self.guard.stop()
        self._stopped.set()

    async def run(self) -> None:
        await self.start()
        await self._stopped.wait()

    async def reload(self, config: Config) -> None:
        """Apply a new, already validated config (SIGHUP)."""
        if config.server.listen != self.config.server.listen:
            logger.warning("reload: listen addresses changed; restart the gateway to apply them")
        self.config = config
        self.selector.cfg = config
        self.slot_cache.configure(config)
        await self.manager.adopt_config(config)
        logger.info("reload: configuration %s applied (%d models)", config.path, len(config.models))

    def _feedback(self, request: ProxyRequest, sink: ClientSink) -> LoadingFeedback:
        mode = self.config.feedback(request.model)
        return LoadingFeedback.for_request(request, sink, mode, self.watch.progress)

    async def _tick(self) -> None:
        """Load progress once a second for watchers, while engines load."""
        while True:
            await asyncio.sleep(1.0)
            if self.bus.watched:
                self.watch.tick()

    # ----------------------------------------------------------- what handlers ask

    def models_list(self) -> dict[str, Any]:
        return views.models_list(self.config, self.manager, self.created, self.watch)

    def model_view(self, name: str) -> dict[str, Any]:
        return views.model_view(self.config, self.manager, name, self.created, self.watch)

    def running(self) -> dict[str, Any]:
        return views.running(self.manager, self.watch)

    def health(self) -> dict[str, Any]:
        return views.health(self.manager)

    def engine_view(self, record: EngineRecord[RunningEngine]) -> dict[str, Any]:
        return views.engine_view(self.manager, record, asyncio.get_running_loop().time(), self.watch)

    def http_client(self) -> EngineHTTPClient:
        assert self.http is not None
        return self.http

    def running_engine_for(self, name: str | None) -> str:
        """Base URL of the running engine of ``name`` (default: server.default_model, else the only
        engine running); never starts one."""
        engines = [record for record in self.manager.engines if record.ready]
        if name is None:
            name = self.config.server.default_model
        if name is None:
            if len(engines) == 1:
                return str(engines[0].variant.connect)
            running = ", ".join(sorted(record.model.name for record in engines)) or "none"
            raise BadRequest(f"say which model with ?model= (running: {running})")
        model = self.selector.model(name)
        for record in engines:
            if record.model.name == model.name:
                return str(record.variant.connect)
        raise EngineNotRunning(
            f"model {model.name!r} is not running (it is not started just to answer this; "
            "send it a request or POST /load first)"
        )

    def refresh_gauges(self) -> None:
        self.metrics.refresh(self.config.model_names(), self.manager.engines, self.manager.waiting)


def _format_addr(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
