"""GatewayServer: owns the listeners, the engine manager and the upstream HTTP client."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from tornado import httpserver, netutil, web

from llmgw.config import Config
from llmgw.engine import EngineHTTPClient
from llmgw.models import ModelSelector
from llmgw.runtime import ProcessGuard, ProcessRuntime
from llmgw.scheduling import EngineManager
from llmgw.scheduling.scheduler import Slot
from llmgw.server import ops_handlers
from llmgw.server.metrics import GatewayMetrics
from llmgw.server.proxy import ChatProxy
from llmgw.server.request_handler import (
    ChatCompletionsHandler,
    HealthHandler,
    ModelsHandler,
    NotFoundHandler,
)
from llmgw.state import StateStore, default_state_dir

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
        routes: list[tuple[str, type[web.RequestHandler]]] = [
            ("/v1/chat/completions", ChatCompletionsHandler),
            ("/v1/models", ModelsHandler),
            ("/health", HealthHandler),
            ("/running", ops_handlers.RunningHandler),
            ("/unload", ops_handlers.UnloadHandler),
            ("/load", ops_handlers.LoadHandler),
            ("/metrics", ops_handlers.MetricsHandler),
        ]
        self.known_routes = frozenset(path for path, _ in routes)
        self.app = web.Application(
            [(path, handler, {"gateway": self}) for path, handler in routes],
            default_handler_class=NotFoundHandler,
            default_handler_args={"gateway": self},
            compress_response=False,
        )

    # Built in start(), inside the running loop (Tornado clients must not be made at import time).
    manager: EngineManager
    selector: ModelSelector
    proxy: ChatProxy

    async def start(self) -> None:
        self.http = EngineHTTPClient.create()
        self.guard.start()
        state = StateStore(self.config.server.state_dir or default_state_dir())
        self.manager = EngineManager(self.config, ProcessRuntime(self.http, self.guard), state)
        self.manager.on_engine_started = self.metrics.observe_start
        self.manager.on_engine_stopped = self.metrics.observe_stop
        self.selector = ModelSelector(self.manager, self.config)
        self.selector.on_counted = self.metrics.observe_count
        self.proxy = ChatProxy(self.selector)
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
        await self.manager.adopt_config(config)
        logger.info("reload: configuration %s applied (%d models)", config.path, len(config.models))

    # ----------------------------------------------------------- views

    def models_list(self) -> dict[str, Any]:
        data = []
        for model in self.config.models:
            contexts = [self.manager.effective_context(model, v) for v in model.variants]
            data.append(
                {
                    "id": model.name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "llmgw",
                    "context_length": max(contexts),
                    "meta": {"n_ctx": max(contexts), "variants": sorted(contexts)},
                }
            )
        return {"object": "list", "data": data}

    def running(self) -> dict[str, Any]:
        """What runs and what waits: GET /running."""
        now = asyncio.get_running_loop().time()
        queue = [
            {
                "model": ticket.model.name,
                "min_context": ticket.min_ctx,
                "waiting": round(now - ticket.arrived, 3),
                "phase": ticket.phase.value,
                **({"blocked_by": ticket.blocked_by} if ticket.blocked_by else {}),
            }
            for ticket in self.manager.waiting
        ]
        return {
            "engines": [self.engine_view(slot, now) for slot in self.manager.engines],
            "queue": queue,
            "in_flight": self.manager.in_flight,
            "queued": self.manager.queued,
        }

    def engine_view(self, slot: Slot, now: float) -> dict[str, Any]:
        handle = slot.handle
        memory, source = self.manager.memory_of(slot)
        return {
            "model": slot.model.name,
            "variant": slot.variant.index,
            "context": slot.n_ctx if slot.n_ctx is not None else slot.variant.context,
            "pid": handle.process.pid if handle is not None else None,
            "state": slot.state.value,
            "memory_mib": {pool: round(mib, 1) for pool, mib in memory.items()},
            "memory_source": source,
            "in_flight": slot.in_flight,
            "last_used": round(time.time() - (now - slot.last_used), 3) if slot.last_used else None,
            "uptime": round(handle.process.uptime, 3) if handle is not None else 0.0,
            "pinned": slot.model.pinned,
            **({"stopping_because": slot.stop_reason} if slot.stop_reason else {}),
        }

    def health(self) -> dict[str, Any]:
        ready = sum(1 for slot in self.manager.engines if slot.ready)
        return {"status": "ok", "engines": ready, "in_flight": self.manager.in_flight, "queued": self.manager.queued}

    def refresh_gauges(self) -> None:
        self.metrics.refresh(self.config.model_names(), self.manager.engines, self.manager.waiting)


def _format_addr(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
