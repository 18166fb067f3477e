"""Tornado handlers: parse, validate, call the plain classes, shape errors the OpenAI way."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from tornado import iostream, web
from tornado.http1connection import HTTP1Connection

from llmgw.engine import UpstreamCall, completion_budget
from llmgw.errors import BadRequest, GatewayError, clip
from llmgw.server.json_body import JsonBody, parse_json_object
from llmgw.server.proxy import ClientGone

if TYPE_CHECKING:
    from llmgw.server.gateway_server import GatewayServer

logger = logging.getLogger(__name__)

_DIGITS = re.compile("[0-9]+")

_STATUS_ERRORS = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


class RequestHandler(web.RequestHandler):
    """Base of every gateway route: API keys, JSON errors, no tracebacks to clients."""

    gateway: GatewayServer
    public = False  # True: no API key needed (health)

    def initialize(self, gateway: GatewayServer) -> None:
        self.gateway = gateway

    def prepare(self) -> None:
        keys = self.gateway.config.server.api_keys
        if keys and not self.public and not self._key_ok(keys):
            self.send_json_error(401, "missing or invalid API key (use 'Authorization: Bearer KEY' or 'x-api-key')")
            return

    def _key_ok(self, keys: tuple[str, ...]) -> bool:
        auth = self.request.headers.get("Authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else self.request.headers.get("x-api-key", "")
        given_b = given.encode()
        # Compare against every key, constant time each, so timing tells nothing about which matched.
        return sum(hmac.compare_digest(given_b, key.encode()) for key in keys) > 0

    def send_json_error(
        self,
        status: int,
        message: str,
        error_type: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        default_type, default_code = _STATUS_ERRORS.get(status, ("server_error", "internal_error"))
        self.clear()
        self.set_status(status)
        if retry_after is not None:
            self.set_header("Retry-After", str(max(1, round(retry_after))))
        self.set_header("Content-Type", "application/json")
        self.finish(
            json.dumps(
                {
                    "error": {
                        "message": message,
                        "type": error_type or default_type,
                        "code": code or default_code,
                    }
                }
            )
        )

    def send_gateway_error(self, exc: GatewayError) -> None:
        self.send_json_error(exc.status, exc.message, exc.error_type, exc.code, exc.retry_after)

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
            message = "internal gateway error (see the gateway log)"
        else:
            message = self._reason
        self.send_json_error(status_code, message)

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
        return self.request.path if self.request.path in self.gateway.known_routes else "other"


class NotFoundHandler(RequestHandler):
    def prepare(self) -> None:
        self.send_json_error(404, f"no route {clip(str(self.request.method))} {clip(self.request.path)}")


class HealthHandler(RequestHandler):
    public = True

    def get(self) -> None:
        self.write_json(self.gateway.health())


class ModelsHandler(RequestHandler):
    def get(self) -> None:
        self.write_json(self.gateway.models_list())


def parse_chat_request(body: bytes) -> JsonBody:
    """Validate what the gateway itself reads (and what llama-server answers with a 500 when
    malformed); the engine validates the rest."""
    request = parse_json_object(body)
    data = request.data
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' is required and must be a non-empty array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string 'role'")
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise BadRequest(f"messages[{i}].content[{j}] must be an object with a string 'type'")
        elif content is not None and not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string, an array of parts or null")
    if "stream" in data and not isinstance(data["stream"], bool):
        raise BadRequest("'stream' must be a boolean")
    if data.get("stream_options") is not None and not isinstance(data["stream_options"], dict):
        raise BadRequest("'stream_options' must be an object or null")
    _check_tools(data.get("tools"))
    # Checked here too (not only when counting) so a bad limit is refused before any engine starts.
    completion_budget(data, 0)
    return request


def _check_tools(tools: Any) -> None:
    """Tools shaped as OpenAI defines them: llama-server answers others with a 500 ("Failed to parse tools")."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be an array")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise BadRequest(f"tools[{i}] must be an object with a string 'type'")
        function = tool.get("function")
        if tool["type"] == "function" and not (isinstance(function, dict) and isinstance(function.get("name"), str)):
            raise BadRequest(f"tools[{i}].function must be an object with a string 'name'")


@web.stream_request_body
class ChatCompletionsHandler(RequestHandler):
    """POST /v1/chat/completions, relayed to the engine chosen for it. Implements ClientSink."""

    def initialize(self, gateway: GatewayServer) -> None:
        super().initialize(gateway)
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._gone = False
        self._call: UpstreamCall | None = None
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
        self.send_json_error(413, f"request body of {size} bytes is over the limit of {limit} bytes (max_body_size)")

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
            request = parse_chat_request(body)
            self.model_name = request.data["model"]
            await self.gateway.proxy.forward(self.request.path, request.raw, request.data, self)
        except ClientGone:
            logger.info("client left during a %r request after %.3f s", self.model_name, time.monotonic() - started)
            return
        except GatewayError as exc:
            if self._gone:
                return
            if self._headers_written:
                logger.warning("error after the response started: %s", exc.message)
            else:
                level = logging.WARNING if exc.status >= 500 else logging.INFO
                logger.log(level, "%s %s -> %d %s", self.request.method, self.request.path, exc.status, exc.message)
                self.send_gateway_error(exc)
                return
        if not self._finished and not self._gone:
            await self._finish_relayed()

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

    def on_connection_close(self) -> None:
        # Tornado's own method ends the wait for the body: a body cut short or malformed (which
        # Tornado answers with a bare 400) would otherwise leave this handler pending for ever.
        super().on_connection_close()
        self._client_left()

    def _client_left(self) -> None:
        self._gone = True
        if self._call is not None:
            self._call.abort()
