"""A stand-in for a peer gateway, in the test's own event loop: it answers ``/health`` and
``/api/state`` with what the test sets, records every request it gets (headers included), and
answers model requests the way the test says (well, 5xx, a dropped connection, a stream that
breaks after its first event, or not at all)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from tornado import httpserver, web

from fake_engine.configs import free_port


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakePeer:
    name: str
    models: list[str] = field(default_factory=lambda: ["m"])
    port: int = field(default_factory=free_port)
    mode: str = "ok"  # ok | stream_break | status:NNN | drop | hang
    health: int = 200
    key: str | None = None  # the API key it wants on every route but /health
    loaded: bool = True
    seen: list[Seen] = field(default_factory=list)
    server: httpserver.HTTPServer | None = None
    hanging: list[asyncio.Future[None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def state(self) -> dict[str, Any]:
        return {
            "llmgw": "fake",
            "node": self.name,
            "draining": False,
            "engines": 1,
            "max_engines": 1,
            "memory": {},
            "models": [
                {"name": m, "contexts": [4096], "loaded": self.loaded, "slots": 4, "start": "fits"} for m in self.models
            ],
        }

    def requests(self, path: str = "/v1/chat/completions") -> list[Seen]:
        return [seen for seen in self.seen if seen.path == path]

    def start(self) -> None:
        app = web.Application([(r"/.*", _Handler, {"peer": self})])
        self.server = httpserver.HTTPServer(app)
        self.server.listen(self.port, "127.0.0.1")

    async def stop(self) -> None:
        for future in self.hanging:
            if not future.done():
                future.set_result(None)
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()


class _Handler(web.RequestHandler):
    def initialize(self, peer: FakePeer) -> None:
        self.peer = peer

    def _allowed(self) -> bool:
        key = self.peer.key
        if key is None or self.request.path == "/health":
            return True
        if self.request.headers.get("Authorization") == f"Bearer {key}":
            return True
        self.set_status(401)
        self.finish({"error": {"message": "bad key", "type": "invalid_request_error", "code": "invalid_api_key"}})
        return False

    def get(self) -> None:
        peer = self.peer
        peer.seen.append(Seen(self.request.path, dict(self.request.headers), b""))
        if not self._allowed():
            return
        if self.request.path == "/health":
            self.set_status(peer.health)
            self.finish({"status": "ok"})
        elif self.request.path == "/api/state":
            self.finish(peer.state())
        else:
            self.set_status(404)
            self.finish({"error": {"message": "no route", "type": "invalid_request_error", "code": "not_found"}})

    async def post(self) -> None:
        peer = self.peer
        peer.seen.append(Seen(self.request.path, dict(self.request.headers), self.request.body))
        if not self._allowed():
            return
        data = json.loads(self.request.body or b"{}")
        model = data.get("model", "?")
        self.set_header("X-Llmgw-Served-By", peer.name)
        mode = peer.mode
        if mode.startswith("status:"):
            status = int(mode.split(":")[1])
            self.set_status(status)
            self.finish({"error": {"message": f"fake {status}", "type": "server_error", "code": "fake"}})
        elif mode == "drop":
            assert self.request.connection is not None and self.request.connection.stream is not None
            self.request.connection.stream.close()
        elif mode == "hang":
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            peer.hanging.append(future)
            await future
        elif data.get("stream") is True:
            self.set_header("Content-Type", "text/event-stream")
            first = {"object": "chat.completion.chunk", "model": model, "choices": [{"delta": {"content": "hi"}}]}
            self.write(f"data: {json.dumps(first)}\n\n")
            await self.flush()
            if mode == "stream_break":
                await asyncio.sleep(0.05)
                assert self.request.connection is not None and self.request.connection.stream is not None
                self.request.connection.stream.close()
                return
            self.write("data: [DONE]\n\n")
            self.finish()
        else:
            self.finish(
                {
                    "object": "chat.completion",
                    "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": f"from {peer.name}"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                }
            )
