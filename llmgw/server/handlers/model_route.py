"""POST on every model route (chat, completions, embeddings, messages, responses...): the body
read within its limit, parsed and checked, then handed to the request path (llmgw.proxy) with
a sink on this connection."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

from tornado import web
from tornado.http1connection import HTTP1Connection

from llmgw.api import ROUTES
from llmgw.api.filters import apply_filters
from llmgw.errors import BadRequest, GatewayError, clip, echo
from llmgw.keys import Admission
from llmgw.peers import HOP_HEADER, conversation_key
from llmgw.proxy import ClientGone, PooledRequest, ProxyRequest, forwarded_body
from llmgw.server.activity import RequestRecord
from llmgw.server.handlers.base import GatewayHandler, problem
from llmgw.server.json_body import parse_json_object
from llmgw.server.services import Services
from llmgw.server.tornado_sink import TornadoSink

logger = logging.getLogger(__name__)

_DIGITS = re.compile("[0-9]+")


@web.stream_request_body
class ModelRouteHandler(GatewayHandler):
    def initialize(self, services: Services, route: str) -> None:
        super().initialize(services, route)
        self.proxy = services.proxy
        self.router = services.router
        self.views = services.views
        self.activity = services.activity
        self.sink = TornadoSink(self)
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._record: RequestRecord | None = None  # in the request history once its model is known
        self._admission: Admission | None = None  # the key's limits let it in: given back at the end

    # ------------------------------------------------------------------ the body, within its limit

    def prepare(self) -> None:
        super().prepare()
        if self.answered:
            return
        limit = self.live.current.server.max_body_bytes
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
        limit = self.live.current.server.max_body_bytes
        message = f"request body of {size} bytes is over the limit of {limit} bytes (max_body_size)"
        self.send_gateway_error(problem(413, message))

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._too_large:
            return
        if self._size > self.live.current.server.max_body_bytes:
            self._too_large = True
            self._chunks.clear()
            # Answer now: Tornado then closes the connection instead of reading the rest.
            self._send_too_large(self._size)
        else:
            self._chunks.append(chunk)

    # ------------------------------------------------------------------ the request

    async def post(self) -> None:
        if self._too_large:
            return  # answered by data_received
        body = b"".join(self._chunks)
        self._chunks.clear()
        started = time.monotonic()
        sink = self.sink
        try:
            request = self._proxy_request(body)
            if isinstance(request, PooledRequest):
                await sink.serve(self.router.forward(request, sink))
            else:
                await sink.serve(self.proxy.forward(request, sink))
        except (ClientGone, asyncio.CancelledError):
            if not sink.gone:
                raise
            logger.info(
                "[%s] client left during a %r request after %.3f s",
                self.request_id,
                self.model_name,
                time.monotonic() - started,
            )
            return
        except GatewayError as exc:
            if sink.gone:
                return
            if not sink.started:
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
            logger.warning("[%s] error after the response started: %s", self.request_id, exc.message)
        finally:
            self._admitted_done()
        if not sink.finished and not sink.gone:
            await sink.finish()

    def _proxy_request(self, body: bytes) -> ProxyRequest | PooledRequest:
        """Parse and check the request, find its model, apply the model's filters. On a node with
        peers (and for a request no peer forwarded here), the request is routed: it may go to a
        peer, which gets it as the client sent it."""
        endpoint = ROUTES[self.request.path]
        parsed = parse_json_object(body)
        data = parsed.data
        config = self.live.current
        requested = data.get("model")
        if requested is None or requested == "":
            requested = config.server.default_model
            if requested is None:
                raise BadRequest("'model' is required (this gateway has no server.default_model)")
        elif not isinstance(requested, str):
            raise BadRequest(f"'model' must be a string, got {echo(requested)}")
        key = self.principal
        pooled = self.router.pooled and HOP_HEADER not in self.request.headers
        model = config.model(requested)
        if model is not None and not key.sees(model):
            model = None
        if (
            pooled
            and self.views.peer_model(requested, key)
            and (model is None or not model.serves(endpoint.capability))
        ):
            model = None  # only peers serve it (this route of it, at least)
        elif model is None:
            raise self.views.not_found(requested, key)
        elif not model.serves(endpoint.capability):
            serving = [m.name for m in self.views.models_for(key) if m.serves(endpoint.capability)]
            raise BadRequest(
                f"model {model.name!r} does not serve {endpoint.capability} requests "
                f"({self.request.path}); models that do: {', '.join(serving) or 'none'}"
            )
        self.model_name = model.name if model is not None else requested
        endpoint.check(data)
        forward, conversation = parsed.raw, None
        if pooled:  # before the filters change data: a peer applies its own
            forward = forwarded_body(data, parsed.raw, requested)
            conversation = conversation_key(key.name or "", data)
        self._admission = self.keys.admit(key)  # 429 past a limit, before any engine
        stream = data.get("stream") is True
        record = self._record = self.activity.begin(
            self.request_id, self.request.path, self.model_name, stream, key.name
        )
        local = None
        if model is not None:
            raw = parsed.raw
            if apply_filters(model, endpoint, data):
                raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
            path = self.request.path
            local = ProxyRequest(
                endpoint, path, raw, data, model, requested, self.request_id, record.stats, key.priority
            )
            if not pooled:
                return local
        return PooledRequest(
            requested, endpoint, self.request.path, forward, data, self.request_id, record.stats, conversation, local
        )

    def known_model(self, name: str) -> bool:
        return super().known_model(name) or self.views.peer_model(name)

    def _admitted_done(self) -> None:
        """The key's place back and the engine's token counts on its usage (once, however it ended)."""
        if self._admission is not None:
            if self._record is None:
                self._admission.done()
            else:
                self._admission.done(self._record.stats.prompt_tokens, self._record.stats.generated_tokens)

    def on_finish(self) -> None:
        super().on_finish()
        self._admitted_done()
        self.activity.end(
            self._record,
            request_id=self.request_id,
            route=self.request.path,
            model=self.model_name,
            status=self.get_status(),
            seconds=self.request.request_time(),
            client_left=self.sink.gone,
            key=self.principal.name,
        )

    def on_connection_close(self) -> None:
        # Tornado's own method ends the wait for the body: a body cut short or malformed (which
        # Tornado answers with a bare 400) would otherwise leave this handler pending for ever.
        super().on_connection_close()
        self.sink.left()
