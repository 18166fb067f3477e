"""What every route shares: the loading state, the hang knobs, llama-server's error bodies and
headers, JSON bodies, and knowing when the client went away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from typing import Any

import tornado.web

from .. import shapes
from ..errors import ApiError, bad_request, server_error
from ..state import Engine

__all__ = ["BaseHandler", "DisabledHandler", "NotFoundHandler"]


class BaseHandler(tornado.web.RequestHandler):
    """Loading state, hang knobs, llama-server's error bodies, and client-gone tracking."""

    engine: Engine
    # Whether --fake-hang-requests stops this handler from answering (generation and count routes).
    hangs_with_requests = False

    def initialize(self, engine: Engine) -> None:
        self.engine = engine
        self._closed = asyncio.Event()

    def set_default_headers(self) -> None:
        self.set_header("Server", "llama.cpp")

    def on_connection_close(self) -> None:
        self._closed.set()

    async def prepare(self) -> None:
        if self.engine.loading():
            raise ApiError(503, "Loading model", "unavailable_error")
        options = self.engine.options
        if options.fake_hang_health or (options.fake_hang_requests and self.hangs_with_requests):
            await self._hang()

    async def _hang(self) -> None:
        """Read the request, never answer; drop the connection when the client goes away."""
        self.engine.events.emit("hung", path=self.request.path)
        await self._closed.wait()  # bounded by the client, or by the process's exit
        self.detach().close()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ApiError):
            body = error.body
        elif status_code in (404, 405):  # llama-server has no 405: a wrong method is an unknown route
            self.set_status(404)
            body = {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}
        else:
            body = {"error": {"code": status_code, "message": self._reason, "type": "server_error"}}
        self.send_json(body)

    def send_json(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(shapes.dumps(data))

    def json_body(self) -> dict[str, Any]:
        """The request's JSON object, read as llama-server reads it, or as ``--fake-strict-json`` says."""
        if self.engine.options.fake_strict_json:
            body = _strict_json(self.request.body)
        else:
            try:
                body = json.loads(self.request.body or b"{}")
            except (ValueError, UnicodeDecodeError) as exc:
                raise server_error(f"[json.exception.parse_error.101] parse error: {exc}") from None
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        return body

    async def wait_or_closed(self, delay: float) -> bool:
        """Sleep ``delay`` seconds (``inf``: until the client goes); return True if it went away.

        Without a delay it still yields to the event loop once: llama-server answers other
        connections (a count, a health probe) while it streams, and so does the fake, even to a
        reader fast enough that no write ever waits."""
        if delay > 0 and not self._closed.is_set():
            timeout = None if math.isinf(delay) else delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), timeout)
        else:
            await asyncio.sleep(0)
        return self._closed.is_set()


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        obj.setdefault(key, value)
    return obj


def _strict_json(raw: bytes) -> Any:
    """``--fake-strict-json``: a body read the way another engine might read it, UTF-8 only (no BOM,
    no UTF-16 or UTF-32) and the *first* of duplicate keys winning, so a test can show the engine
    sees exactly what the gateway parsed and not the raw bytes it was sent."""
    try:
        return json.loads((raw or b"null").decode("utf-8"), object_pairs_hook=_first_wins)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise bad_request(f"invalid JSON body: {exc}") from None


class NotFoundHandler(BaseHandler):
    """Any path llama-server does not serve."""

    async def prepare(self) -> None:
        await super().prepare()
        raise ApiError(404, "File Not Found", "not_found_error")


class DisabledHandler(BaseHandler):
    """``/tools`` and ``/cors-proxy``: features llama-server only has when started for them."""

    async def prepare(self) -> None:
        await super().prepare()
        self.set_status(403)
        self.send_json({"error": {"message": "this feature is disabled", "type": "feature_disabled"}})
