"""The route table: every path the gateway answers, and the handler (with its services) for it."""

from __future__ import annotations

from typing import Any

from tornado import web

from llmgw.api import ROUTES
from llmgw.server.handlers import info, observe, ops
from llmgw.server.handlers.base import NotFoundHandler
from llmgw.server.handlers.model_route import ModelRouteHandler
from llmgw.server.services import Services

# (path, handler, label in the metrics)
_ROUTES: list[tuple[str, type[web.RequestHandler], str]] = [
    *((path, ModelRouteHandler, path) for path in ROUTES),
    ("/v1/models", info.ModelsHandler, "/v1/models"),
    ("/models", info.ModelsHandler, "/models"),
    ("/v1/models/(.+)", info.ModelHandler, "/v1/models/{id}"),
    ("/props", info.EngineInfoHandler, "/props"),
    ("/slots", info.SlotsHandler, "/slots"),
    ("/health", info.HealthHandler, "/health"),
    ("/v1/health", info.HealthHandler, "/v1/health"),
    ("/running", ops.RunningHandler, "/running"),
    ("/unload", ops.UnloadHandler, "/unload"),
    ("/load", ops.LoadHandler, "/load"),
    ("/metrics", ops.MetricsHandler, "/metrics"),
    ("/events", observe.EventsHandler, "/events"),
    ("/api/requests", observe.RequestsHandler, "/api/requests"),
    ("/api/state", info.StateHandler, "/api/state"),
    ("/api/logs", observe.EngineLogsHandler, "/api/logs"),
]


def make_app(services: Services) -> web.Application:
    rules: list[Any] = [(path, handler, {"services": services, "route": label}) for path, handler, label in _ROUTES]
    rules += [
        (r"/ui", web.RedirectHandler, {"url": "/ui/"}),
        (r"/ui/(.*)", observe.UIHandler, {"path": str(observe.UI_DIR), "default_filename": "index.html"}),
    ]
    return web.Application(
        rules,
        default_handler_class=NotFoundHandler,
        default_handler_args={"services": services, "route": "other"},
        compress_response=False,
    )
