"""The base of every gateway route: API keys, request ids, CORS, errors in the route's dialect,
no tracebacks to clients.

Every answer carries an ``X-Request-Id`` (the client's own when it sent a sane one) and, for
allowed origins, the CORS headers llama-server sends; preflights are answered on any path.
"""

from __future__ import annotations

import http.client
import json
import re
import uuid
from typing import Any

from tornado import web

from llmgw.api import dialect_of, engine_error_body, error_body
from llmgw.errors import EngineAnswered, GatewayError, clip
from llmgw.keys import OPEN, Principal
from llmgw.peers import SERVED_BY_HEADER
from llmgw.server.services import Services

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/=+-]{1,128}")

_STATUS_ERRORS = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


def problem(status: int, message: str, error_type: str | None = None, code: str | None = None) -> GatewayError:
    """A GatewayError for a status the handlers decide themselves (401, 403, 404, 405, 413...)."""
    default_type, default_code = _STATUS_ERRORS.get(status, ("server_error", "internal_error"))
    error = GatewayError(message)
    error.status, error.error_type, error.code = status, error_type or default_type, code or default_code
    return error


class GatewayHandler(web.RequestHandler):
    public = False  # True: no API key needed (health)
    admin_only = False  # True: only admin keys (operations: load, unload, what runs, metrics, history, logs)
    principal: Principal = OPEN  # the request's key, once prepare() knows it
    model_name = ""  # the model a request named, once known (the metrics' label)
    answered = False  # the handler already answered (an error from prepare(), say)
    _request_id: str | None = None

    def initialize(self, services: Services, route: str) -> None:
        """``route``: this route's label in the metrics (its path, or its pattern)."""
        self.live = services.live
        self.keys = services.keys
        self.metrics = services.metrics
        self.route = route
        self.set_default_headers()  # Tornado called it once already, before the configuration was known

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            given = self.request.headers.get("X-Request-Id", "")
            self._request_id = given if _SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        return self._request_id

    def set_default_headers(self) -> None:
        """Also re-applied by every ``clear()``: errors carry them too."""
        if getattr(self, "live", None) is None:
            return
        self.set_header("X-Request-Id", self.request_id)
        self.set_header(SERVED_BY_HEADER, self.live.current.server.node_name)
        origin = self._allowed_origin()
        if origin is not None:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Expose-Headers", f"X-Request-Id, Retry-After, {SERVED_BY_HEADER}")
            self.set_header("Vary", "Origin")

    def _allowed_origin(self) -> str | None:
        origin = self.request.headers.get("Origin")
        allowed = self.live.current.server.cors_origins
        if origin is None or not ("*" in allowed or origin in allowed):
            return None
        return origin

    def options(self, *args: Any) -> None:
        """CORS preflight, on any path, without an API key (browsers send none), as llama-server."""
        if self._allowed_origin() is not None:
            requested = self.request.headers.get("Access-Control-Request-Headers", "*")
            self.set_header("Access-Control-Allow-Credentials", "true")
            self.set_header("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS")
            self.set_header("Access-Control-Allow-Headers", requested)
            self.set_header("Access-Control-Max-Age", "600")
        self.set_status(200)
        self.finish()

    def prepare(self) -> None:
        """Who the request is (401 without a known key), before anything else is read."""
        if self.public or self.request.method == "OPTIONS":
            return
        headers = self.request.headers
        principal = self.keys.identify(headers.get("Authorization"), headers.get("x-api-key"))
        if principal is None:
            self.send_gateway_error(
                problem(401, "missing or invalid API key (use 'Authorization: Bearer KEY' or 'x-api-key')")
            )
            return
        self.principal = principal
        if self.admin_only and not principal.admin:
            path = clip(self.request.path)
            message = f"key {principal.name!r} may not use {path}: it needs an admin key (admin = true)"
            self.send_gateway_error(problem(403, message))

    def send_gateway_error(self, exc: GatewayError) -> None:
        """The error in the route's dialect; an engine's own error answer as the engine gave it."""
        self.answered = True
        self.clear()
        self.set_status(exc.status)
        if exc.retry_after is not None:
            self.set_header("Retry-After", str(max(1, round(exc.retry_after))))
        self.set_header("Content-Type", "application/json")
        dialect = dialect_of(self.request.path)
        if isinstance(exc, EngineAnswered):
            self.finish(engine_error_body(dialect, exc.status, exc.body))
        else:
            self.finish(error_body(dialect, exc))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Reached for Tornado's own errors (405, malformed requests) and unexpected exceptions.
        exc_info = kwargs.get("exc_info")
        exc = exc_info[1] if exc_info else None
        if isinstance(exc, GatewayError):
            self.send_gateway_error(exc)
            return
        if isinstance(exc, web.HTTPError) and exc.log_message and status_code < 500:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code == 405:
            message = f"method {clip(str(self.request.method))} is not allowed on {clip(self.request.path)}"
        elif status_code >= 500:
            message = f"internal gateway error (see the gateway log, request {self.request_id})"
        else:
            message = http.client.responses.get(status_code, "Unknown")
        self.send_gateway_error(problem(status_code, message))

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.answered = True
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    def known_model(self, name: str) -> bool:
        """A name the metrics may carry as a label (a configured model's)."""
        return self.live.current.model(name) is not None

    def on_finish(self) -> None:
        model = self.model_name
        if model and not self.known_model(model):
            model = "unknown"  # keep label cardinality bounded whatever clients send
        self.metrics.observe_request(self.route, model, self.get_status(), self.request.request_time())


class NotFoundHandler(GatewayHandler):
    def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return
        super().prepare()
        if self.answered:
            return
        message = f"no route {clip(str(self.request.method))} {clip(self.request.path)}"
        self.send_gateway_error(problem(404, message))
