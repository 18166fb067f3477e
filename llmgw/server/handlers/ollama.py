"""Ollama's native routes (/api/...), on the gateway's port: thin handlers over llmgw.server.ollama.

Errors are Ollama's ``{"error": "..."}`` (the dialect of every /api/ path but the gateway's own
/api/requests and /api/logs). Model management (pull, push, create, copy, delete, blobs) is the
Lua configuration's: those answer 501, except a pull of a model the gateway already serves, which
succeeds at once (clients such as Home Assistant "pull" a model before they use it).
"""

from __future__ import annotations

import functools
import time
from typing import Any

from tornado import web

from llmgw.api import Dialect
from llmgw.api.ollama import answers
from llmgw.api.ollama.requests import Action, Kind
from llmgw.api.ollama.wire import document
from llmgw.errors import BadRequest, GatewayError
from llmgw.server.handlers.base import GatewayHandler, problem
from llmgw.server.handlers.model_route import ModelRouteHandler
from llmgw.server.json_body import parse_json_object
from llmgw.server.services import Services

JSON = "application/json; charset=utf-8"


def _body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise BadRequest("missing request body")
    return parse_json_object(raw).data


class OllamaHandler(GatewayHandler):
    def initialize(self, services: Services, route: str) -> None:
        super().initialize(services, route)
        self.ollama = services.ollama

    def answer(self, payload: dict[str, Any]) -> None:
        """One JSON object, compact (Ollama's clients read it as a one-line stream, too)."""
        self.answered = True
        self.set_header("Content-Type", JSON)
        self.finish(b"" if self.request.method == "HEAD" else document(payload))


class RootHandler(GatewayHandler):
    """``GET /``: what Ollama's clients and health checks look for (``HEAD /`` is the ollama CLI's heartbeat)."""

    public = True

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("Ollama is running")

    def head(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish()


class VersionHandler(OllamaHandler):
    """Public, as a liveness probe: Open WebUI's "verify connection" and Copilot's version gate call it."""

    public = True

    def get(self) -> None:
        self.answer(self.ollama.version())

    head = get


class TagsHandler(OllamaHandler):
    async def get(self) -> None:
        self.answer(await self.ollama.tags(self.principal))

    head = get


class PsHandler(OllamaHandler):
    async def get(self) -> None:
        self.answer(await self.ollama.ps(self.principal))


class ShowHandler(OllamaHandler):
    async def post(self) -> None:
        try:
            self.answer(await self.ollama.show(_body(self.request.body), self.principal))
        except GatewayError as exc:
            self.send_gateway_error(exc)


@web.stream_request_body
class UnsupportedHandler(OllamaHandler):
    """Model management: the models are the Lua configuration's. Refused before the body is read
    (a blob upload may be gigabytes); a pull's small body is read within max_body_size."""

    def initialize(self, services: Services, route: str) -> None:
        super().initialize(services, route)
        self._chunks: list[bytes] = []
        self._size = 0

    def prepare(self) -> None:
        super().prepare()
        if not self.answered and not (self.request.path == "/api/pull" and self.request.method == "POST"):
            self._refuse()

    def data_received(self, chunk: bytes) -> None:
        if self.answered:
            return
        self._size += len(chunk)
        if self._size > self.live.current.server.max_body_bytes:
            self.send_gateway_error(problem(413, "request body over the limit (max_body_size)"))
            return
        self._chunks.append(chunk)

    def _refuse(self, *args: Any) -> None:
        path = self.request.path.split("/blobs/")[0] + ("/blobs" if "/blobs/" in self.request.path else "")
        message = (
            f"llmgw does not manage model files: {path} is not supported "
            "(models are configured in the gateway's Lua configuration file)"
        )
        self.send_gateway_error(problem(501, message))

    def post(self, *args: Any) -> None:
        if not self.answered:
            self._pull()

    def delete(self, *args: Any) -> None:
        pass  # refused in prepare()

    head = delete

    def _pull(self) -> None:
        """A pull of a model the gateway serves succeeds at once; of any other, 404."""
        try:
            data = _body(b"".join(self._chunks))
            name = data.get("model") or data.get("name")
            if not isinstance(name, str) or not name:
                raise BadRequest("model is required")
            self.model_name = self.ollama.model(name, self.principal).name
        except GatewayError as exc:
            if exc.status == 404:
                exc.message += (
                    ": llmgw does not download models; add it to the gateway's Lua configuration file and reload"
                )
            self.send_gateway_error(exc)
            return
        self.answer({"status": "success"})


class OllamaModelHandler(ModelRouteHandler):
    """/api/chat, /api/generate, /api/embed, /api/embeddings: translated, then the gateway's own
    request path (counting, variant choice, scheduler), or a load or unload of the model."""

    def initialize(self, services: Services, route: str, kind: str = "chat") -> None:
        super().initialize(services, route)
        self.ollama = services.ollama
        self.kind = Kind(kind)
        self.arrived = time.monotonic_ns()

    async def serve(self, body: bytes) -> None:
        """Served by this node's own engines: peers are not asked (see the README's Ollama section)."""
        prepared = self.ollama.prepare(self.kind, _body(body), self.principal)
        call, model = prepared.call, prepared.model
        self.model_name = model.name
        if call.action is not Action.FORWARD:
            self._admission = self.keys.admit(self.principal)  # a load counts against the key's limits too
            answer = await self.ollama.load(prepared, self.arrived)
            self.set_header("Content-Type", JSON)
            await self.sink.send_whole(document(answer))
            return
        request = self.local_request(
            call.endpoint, model, call.model, call.body, stream=call.stream,
            engine_path=call.engine_path, dialect=Dialect.OLLAMA, min_ctx=prepared.min_ctx,
            keep_alive=call.keep_alive, translate=functools.partial(answers.translator, call, self.arrived),
        )  # fmt: skip
        await self.proxy.forward(request, self.sink)


# The routes: (path, handler, extra initialize arguments)
ROUTES: list[tuple[str, type[web.RequestHandler], dict[str, Any]]] = [
    ("/", RootHandler, {}),
    ("/api/version", VersionHandler, {}),
    ("/api/tags", TagsHandler, {}),
    ("/api/ps", PsHandler, {}),
    ("/api/show", ShowHandler, {}),
    ("/api/chat", OllamaModelHandler, {"kind": "chat"}),
    ("/api/generate", OllamaModelHandler, {"kind": "generate"}),
    ("/api/embed", OllamaModelHandler, {"kind": "embed"}),
    ("/api/embeddings", OllamaModelHandler, {"kind": "embeddings"}),
    ("/api/pull", UnsupportedHandler, {}),
    ("/api/push", UnsupportedHandler, {}),
    ("/api/create", UnsupportedHandler, {}),
    ("/api/copy", UnsupportedHandler, {}),
    ("/api/delete", UnsupportedHandler, {}),
    ("/api/blobs/(.+)", UnsupportedHandler, {}),
]
