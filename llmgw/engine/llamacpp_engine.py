"""LlamaCppEngine: EngineClient for llama-server."""

from __future__ import annotations

from typing import Any

from llmgw.engine.engine_client import EngineClient
from llmgw.engine.http import UpstreamCall, UpstreamError
from llmgw.errors import BadRequest, TokenCountError, clip

FORWARDED_PATHS = frozenset({"/v1/chat/completions"})


def _engine_message(data: Any) -> str:
    """The engine's error message, clipped: llama-server quotes the request in some of them."""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return clip(error["message"])
    return "no details"


class LlamaCppEngine(EngineClient):
    """Counting rule: ``POST /v1/chat/completions/input_tokens`` with the whole request body, so the
    chat template, tools and any multimodal parts count exactly as llama-server will count them.
    Builds without that endpoint get ``/apply-template`` (whole body) then ``/tokenize`` with
    special tokens, which gives the same number.
    """

    _has_input_tokens = True

    async def count_prompt_tokens(self, request_data: dict[str, Any]) -> int:
        if self._has_input_tokens:
            status, data = await self._count_call("/v1/chat/completions/input_tokens", request_data)
            if status == 200 and isinstance(data, dict) and isinstance(data.get("input_tokens"), int):
                return int(data["input_tokens"])
            if status not in (404, 405):
                raise self._count_error(status, data)
            self._has_input_tokens = False
            self.logger.info("%s has no input_tokens endpoint; counting via apply-template", self.base_url)
        status, data = await self._count_call("/apply-template", request_data)
        if status != 200 or not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            raise self._count_error(status, data)
        status, data = await self._count_call(
            "/tokenize", {"content": data["prompt"], "add_special": True, "parse_special": True}
        )
        if status != 200 or not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise self._count_error(status, data)
        return len(data["tokens"])

    async def _count_call(self, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
        try:
            return await self.http.json_call(self.base_url + path, payload, timeout=120.0)
        except UpstreamError as exc:
            raise TokenCountError(f"could not count the request's tokens: engine unreachable ({exc})") from exc

    def _count_error(self, status: int, data: Any) -> Exception:
        if 400 <= status < 500:
            return BadRequest(f"the engine rejected the request while counting its tokens: {_engine_message(data)}")
        return TokenCountError(
            f"could not count the request's tokens: engine answered {status} ({_engine_message(data)})"
        )

    async def check_health(self, timeout: float) -> bool:
        try:
            status, _ = await self.http.json_call(self.base_url + "/health", timeout=timeout)
        except UpstreamError:
            return False
        return status == 200

    async def context_size(self) -> int | None:
        try:
            status, data = await self.http.json_call(self.base_url + "/props", timeout=10.0)
        except UpstreamError:
            return None
        if status != 200 or not isinstance(data, dict):
            return None
        settings = data.get("default_generation_settings")
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None

    def forward_request(self, path: str, body: bytes, headers: dict[str, str]) -> UpstreamCall:
        if path not in FORWARDED_PATHS:
            raise BadRequest(f"path {path!r} is not forwarded to llama.cpp engines")
        return UpstreamCall(self.http, self.base_url + path, body, headers)
