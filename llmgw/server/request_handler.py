"""Tornado handlers: parse, validate, call the plain classes, answer in the route's own dialect.

Every answer carries an ``X-Request-Id`` (the client's own when it sent a sane one) and, for
allowed origins, the CORS headers llama-server sends; preflights are answered on any path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from tornado import iostream, web
from tornado.http1connection import HTTP1Connection

from llmgw.api import ROUTES, dialect_of, engine_error_body, error_body
from llmgw.api.filters import apply_filters
from llmgw.errors import BadRequest, EngineAnswered, GatewayError, clip, echo
from llmgw.server.json_body import parse_json_object
from llmgw.server.proxy import ClientGone, ProxyRequest
from llmgw.upstream import UpstreamCall

if TYPE_CHECKING:
    from llmgw.server.activity import RequestRecord
    from llmgw.server.gateway_server import GatewayServer

logger = logging.getLogger(__name__)

_DIGITS = re.compile("[0-9]+")
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/=+-]{1,128}")

_STATUS_ERRORS = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


def problem(status: int, message: str, error_type: str | None = None, code: str | None = None) -> GatewayError:
    """A GatewayError for a status the handlers decide themselves (401, 404, 405, 413...)."""
    default_type, default_code = _STATUS_ERRORS.get(status, ("server_error", "internal_error"))
    error = GatewayError(message)
    error.status, error.error_type, error.code = status, error_type or default_type, code or default_code
    return error


class RequestHandler(web.RequestHandler):
    """Base of every gateway route: API keys, request ids, CORS, errors in the route's dialect,
    no tracebacks to clients."""

    gateway: GatewayServer
    public = False  # True: no API key needed (health)
    _request_id: str | None = None

    def initialize(self, gateway: GatewayServer) -> None:
        self.gateway = gateway
        self.set_default_headers()  # Tornado called it once already, before the gateway was known

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            given = self.request.headers.get("X-Request-Id", "")
            self._request_id = given if _SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        return self._request_id

    def set_default_headers(self) -> None:
        """Also re-applied by every ``clear()``: errors carry them too."""
        if getattr(self, "gateway", None) is None:
            return
        self.set_header("X-Request-Id", self.request_id)
        origin = self._allowed_origin()
        if origin is not None:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Expose-Headers", "X-Request-Id, Retry-After")
            self.set_header("Vary", "Origin")

    def _allowed_origin(self) -> str | None:
        origin = self.request.headers.get("Origin")
        allowed = self.gateway.config.server.cors_origins
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
        keys = self.gateway.config.server.api_keys
        if keys and not self.public and self.request.method != "OPTIONS" and not self._key_ok(keys):
            self.send_gateway_error(
                problem(401, "missing or invalid API key (use 'Authorization: Bearer KEY' or 'x-api-key')")
            )
            return

    def _key_ok(self, keys: tuple[str, ...]) -> bool:
        auth = self.request.headers.get("Authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else self.request.headers.get("x-api-key", "")
        given_b = given.encode()
        # Compare against every key, constant time each, so timing tells nothing about which matched.
        return sum(hmac.compare_digest(given_b, key.encode()) for key in keys) > 0

    def send_gateway_error(self, exc: GatewayError) -> None:
        """The error in the route's dialect; an engine's own error answer as the engine gave it."""
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
            message = self._reason
        self.send_gateway_error(problem(status_code, message))

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    def on_finish(self) -> None:
        model = getattr(self, "model_name", "")
        if model and self.gateway.config.model(model) is None:
            model = "unknown"  # keep label cardinality bounded whatever clients send
        self.gateway.metrics.observe_request(self._route(), model, self.get_status(), self.request.request_time())

    def _route(self) -> str:
        path = self.request.path
        if path in self.gateway.known_routes:
            return path
        return "/v1/models/{id}" if path.startswith("/v1/models/") else "other"


class NotFoundHandler(RequestHandler):
    def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return
        super().prepare()
        if self._finished:
            return
        message = f"no route {clip(str(self.request.method))} {clip(self.request.path)}"
        self.send_gateway_error(problem(404, message))


class HealthHandler(RequestHandler):
    public = True

    def get(self) -> None:
        self.write_json(self.gateway.health())


class ModelsHandler(RequestHandler):
    def get(self) -> None:
        self.write_json(self.gateway.models_list())


class ModelHandler(RequestHandler):
    """GET /v1/models/{id}: one model, by name or alias."""

    def get(self, name: str) -> None:
        try:
            self.write_json(self.gateway.model_view(name))
        except GatewayError as exc:
            self.send_gateway_error(exc)


class EngineInfoHandler(RequestHandler):
    """GET /props and /slots: asked of the running engine of ``?model=`` (never started for this)."""

    async def get(self) -> None:
        try:
            name = self.get_query_argument("model", None)
            await self._relay(self.gateway.running_engine_for(name))
        except GatewayError as exc:
            self.send_gateway_error(exc)

    async def _relay(self, base_url: str) -> None:
        reply = await self.gateway.http_client().json_exchange(base_url + self.request.path, timeout=30.0)
        self.set_status(reply.status)
        self.set_header("Content-Type", reply.content_type or "application/json")
        self.finish(reply.body)


@web.stream_request_body
class ModelRouteHandler(RequestHandler):
    """POST on every model route (chat, completions, embeddings, messages, responses...), relayed to
    the engine chosen for it. Implements ClientSink."""

    def initialize(self, gateway: GatewayServer) -> None:
        super().initialize(gateway)
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._gone = False
        self._call: UpstreamCall | None = None
        self._waiting: asyncio.Task[Any] | None = None  # this request, while nothing went to an engine
        self._record: RequestRecord | None = None  # in the request history once its model is known
        self.model_name = ""

    def prepare(self) -> None:
        super().prepare()
        if self._finished:
            return
        limit = self.gateway.config.server.max_body_bytes
        length = self.request.headers.get("Content-Length")
        # ASCII digits only, and no int() of a huge header: str.isdigit() takes "²", int() refuses
        # past 4300 digits, and both were 500s. Other malformed lengths are Tornado's (a bare 400).
        if length is not None and _DIGITS.fullmatch(length) and (len(length.lstrip("0")) > 18 or int(length) > limit):
            self._send_too_large(clip(length, 40))
        elif length is None and isinstance(self.request.connection, HTTP1Connection):
            # A chunked body is measured in data_received, which answers 413 itself; the
            # connection's own cap (same limit) would cut it first with a bare "400 Bad Request".
            self.request.connection.set_max_body_size(2**62)

    def _send_too_large(self, size: int | str) -> None:
        limit = self.gateway.config.server.max_body_bytes
        message = f"request body of {size} bytes is over the limit of {limit} bytes (max_body_size)"
        self.send_gateway_error(problem(413, message))

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._too_large:
            return
        if self._size > self.gateway.config.server.max_body_bytes:
            self._too_large = True
            self._chunks.clear()
            # Answer now: Tornado then closes the connection instead of reading the rest.
            self._send_too_large(self._size)
        else:
            self._chunks.append(chunk)

    async def post(self) -> None:
        if self._too_large:
            return  # answered by data_received
        body = b"".join(self._chunks)
        self._chunks.clear()
        started = time.monotonic()
        try:
            request = self._proxy_request(body)
            self._waiting = asyncio.current_task()
            try:
                await self.gateway.proxy.forward(request, self)
            finally:
                self._waiting = None
        except (ClientGone, asyncio.CancelledError):
            if not self._gone:
                raise
            logger.info(
                "[%s] client left during a %r request after %.3f s",
                self.request_id,
                self.model_name,
                time.monotonic() - started,
            )
            return
        except GatewayError as exc:
            if self._gone:
                return
            if self._headers_written:
                logger.warning("[%s] error after the response started: %s", self.request_id, exc.message)
            else:
                level = logging.WARNING if exc.status >= 500 else logging.INFO
                logger.log(
                    level,
                    "[%s] %s %s -> %d %s",
                    self.request_id,
                    self.request.method,
                    self.request.path,
                    exc.status,
                    exc.message,
                )
                self.send_gateway_error(exc)
                return
        if not self._finished and not self._gone:
            await self._finish_relayed()

    def _proxy_request(self, body: bytes) -> ProxyRequest:
        """Parse and check the request, find its model, apply the model's filters."""
        endpoint = ROUTES[self.request.path]
        parsed = parse_json_object(body)
        data = parsed.data
        requested = data.get("model")
        if requested is None or requested == "":
            requested = self.gateway.config.server.default_model
            if requested is None:
                raise BadRequest("'model' is required (this gateway has no server.default_model)")
        elif not isinstance(requested, str):
            raise BadRequest(f"'model' must be a string, got {echo(requested)}")
        model = self.gateway.selector.model(requested)
        self.model_name = model.name
        if not model.serves(endpoint.capability):
            serving = [m.name for m in self.gateway.config.models if m.serves(endpoint.capability)]
            raise BadRequest(
                f"model {model.name!r} does not serve {endpoint.capability} requests "
                f"({self.request.path}); models that do: {', '.join(serving) or 'none'}"
            )
        endpoint.check(data)
        raw = parsed.raw
        if apply_filters(model, endpoint, data):
            raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        self._record = self.gateway.activity.begin(
            self.request_id, self.request.path, model.name, data.get("stream") is True
        )
        return ProxyRequest(
            endpoint, self.request.path, raw, data, model, requested, self.request_id, self._record.stats
        )

    async def _finish_relayed(self) -> None:
        """Finish a relayed answer, whose length was unknown when its headers went out.

        HTTP/1.1 clients get it chunked. An HTTP/1.0 client can only see its end as the close,
        but Tornado keeps an HTTP/1.0 keep-alive connection open (announcing "Keep-Alive", with
        no length), so that client would wait for ever: close once the answer is written.
        """
        finished = self.finish()
        if self.request.version != "HTTP/1.0" or not isinstance(self.request.connection, HTTP1Connection):
            return
        with contextlib.suppress(iostream.StreamClosedError):
            await finished
        self.request.connection.close()

    def on_finish(self) -> None:
        super().on_finish()
        self.gateway.activity.end(
            self._record,
            request_id=self.request_id,
            route=self.request.path,
            model=self.model_name,
            status=self.get_status(),
            seconds=self.request.request_time(),
            client_left=self._gone,
        )

    # ClientSink
    @property
    def gone(self) -> bool:
        return self._gone

    def watch(self, call: UpstreamCall | None) -> None:
        self._call = call

    def start_response(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.set_status(status)
        for name, value in headers:
            self.set_header(name, value)
        if "text/event-stream" in self._headers.get("Content-Type", ""):
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")

    async def send(self, chunk: bytes) -> None:
        if self._gone:
            raise ClientGone()
        self.write(chunk)
        try:
            await self.flush()
        except iostream.StreamClosedError:
            self._client_left()
            raise ClientGone() from None

    async def send_whole(self, body: bytes) -> None:
        if self._gone:
            raise ClientGone()
        # finish() without an earlier flush sends the head with a Content-Length, and the body,
        # in one write (a flushed answer goes out chunked, its end in a write of its own).
        try:
            await self.finish(body)
        except iostream.StreamClosedError:
            self._client_left()
            raise ClientGone() from None
        if self.request.version == "HTTP/1.0" and isinstance(self.request.connection, HTTP1Connection):
            self.request.connection.close()  # as every relayed answer to an HTTP/1.0 client ends

    def on_connection_close(self) -> None:
        # Tornado's own method ends the wait for the body: a body cut short or malformed (which
        # Tornado answers with a bare 400) would otherwise leave this handler pending for ever.
        super().on_connection_close()
        self._client_left()

    def _client_left(self) -> None:
        self._gone = True
        if self._call is not None:
            self._call.abort()
        elif self._waiting is not None:
            # Still waiting for an engine (queued, or its start): stop waiting, so the queue moves
            # on and no engine starts for a client that is gone.
            self._waiting.cancel()
