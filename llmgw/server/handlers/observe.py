"""Routes for observing the gateway: the event stream, the request history, engine output, the web page.

``GET /events`` is a server-sent event stream (one ``event:`` name and one JSON ``data:`` line
per event; see llmgw.events). Browsers' EventSource cannot send an API key, so the page reads
it with fetch() and the usual ``Authorization`` header; no key is ever taken from a URL.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tornado import iostream, web

from llmgw.events import Event, Subscription
from llmgw.server.handlers.base import GatewayHandler, problem
from llmgw.server.services import Services

logger = logging.getLogger(__name__)

UI_DIR = Path(__file__).resolve().parents[2] / "ui"
KEEPALIVE = 15.0  # seconds between comment lines on a quiet event stream (proxies drop idle ones)
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def sse(event: Event) -> bytes:
    return b"event: " + event.kind.encode() + b"\ndata: " + json.dumps(event.payload()).encode() + b"\n\n"


class EventsHandler(GatewayHandler):
    """``GET /events``: engine changes (with load progress), queue changes, request start and end;
    engine output lines with ``?logs=1`` (every model) or ``?logs=a,b`` (those models); only some
    kinds with ``?only=engine,queue`` (what a peer follows)."""

    admin_only = True

    _subscription: Subscription | None = None
    _streaming = False  # the event stream began: an error can no longer be an answer of its own

    def initialize(self, services: Services, route: str) -> None:
        super().initialize(services, route)
        self.bus = services.bus
        self.views = services.views

    async def get(self) -> None:
        only = self.get_query_argument("only", "")
        kinds = [kind.strip() for kind in only.split(",") if kind.strip()][:32] if only else None
        subscription = self.bus.subscribe(self._logs_wanted(), kinds=kinds)
        self._subscription = subscription
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        try:
            hello = {"running": self.views.running(), "logs": _shown(subscription.logs)}
            await self._send(b"event: hello\ndata: " + json.dumps(hello).encode() + b"\n\n")
            while not subscription.closed:
                events = await subscription.next(KEEPALIVE)
                if events:
                    await self._send(b"".join(sse(event) for event in events))
                elif not subscription.closed:
                    await self._send(b": keep-alive\n\n")
        except iostream.StreamClosedError:
            pass
        finally:
            subscription.close()

    def _logs_wanted(self) -> str | frozenset[str] | None:
        value = self.get_query_argument("logs", "")
        if value in ("", "0", "false", "no"):
            return None
        if value in ("1", "true", "yes", "all", "*"):
            return "*"
        names = frozenset(name.strip() for name in value.split(",") if name.strip())
        models = {self.views.model(name, self.principal).name for name in names}  # 404 for an unknown one
        return frozenset(models)

    async def _send(self, data: bytes) -> None:
        self.write(data)
        self._streaming = True
        await self.flush()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self._subscription is not None:
            self._subscription.close()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if not self._streaming:
            super().write_error(status_code, **kwargs)


class RequestsHandler(GatewayHandler):
    """``GET /api/requests[?limit=N]``: requests in flight, and the last ones answered (newest first),
    each with its key's name; ``keys``: each key's usage and limits."""

    admin_only = True

    def initialize(self, services: Services, route: str) -> None:
        super().initialize(services, route)
        self.activity = services.activity

    def get(self) -> None:
        limit = _limit(self.get_query_argument("limit", None))
        log = self.activity
        self.write_json({"in_flight": log.in_flight(), "requests": log.recent(limit), "keys": self.keys.view()})


class EngineLogsHandler(GatewayHandler):
    """``GET /api/logs?model=m[&limit=N]``: the last lines that model's engines printed; without
    ``model``: the models that printed any."""

    admin_only = True

    def initialize(self, services: Services, route: str) -> None:
        super().initialize(services, route)
        self.engine_logs = services.engine_logs
        self.views = services.views

    def get(self) -> None:
        name = self.get_query_argument("model", None)
        logs = self.engine_logs
        if name is None:
            self.write_json({"models": logs.models()})
            return
        model = self.views.model(name, self.principal).name
        self.write_json({"model": model, "lines": logs.tail(model, _limit(self.get_query_argument("limit", None)))})


class UIHandler(web.StaticFileHandler):
    """The web page's files, shipped inside the package (no CDN, no build step). Public: they hold
    no data; the page asks for the API key when the gateway wants one."""

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", _CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")


def _limit(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not 0 < int(text) <= 100_000:
        raise problem(400, "'limit' must be a positive integer")
    return int(text)


def _shown(logs: str | frozenset[str] | None) -> Any:
    return sorted(logs) if isinstance(logs, frozenset) else logs
