"""LlamaCppClient: EngineClient for llama-server."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llmgw.errors import EngineAnswered, TokenCountError, clip
from llmgw.upstream.client import EngineClient
from llmgw.upstream.http import JsonReply, UpstreamCall, UpstreamError

_RELAYED_ERROR_LIMIT = 4096  # an engine error body relayed larger than this has its message clipped


def _engine_message(data: Any) -> str:
    """The engine's error message, clipped: llama-server quotes the request in some of them."""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return clip(error["message"])
    return "no details"


class LlamaCppClient(EngineClient):
    """Counting rule: the engine's own counters with the whole request body
    (``/v1/chat/completions/input_tokens``, ``/v1/messages/count_tokens``,
    ``/v1/responses/input_tokens``), so templates, tools and multimodal parts count exactly as
    llama-server will count them; prompts (completions, infill, embeddings) through ``/tokenize``
    with special tokens, as llama-server tokenizes them. Builds without ``input_tokens`` get
    ``/apply-template`` then ``/tokenize`` for chat, which gives the same number.
    """

    _has_input_tokens = True

    async def count_prompt_tokens(self, request_data: dict[str, Any]) -> int:
        if self._has_input_tokens:
            reply = await self._count_call("/v1/chat/completions/input_tokens", request_data)
            if reply.status not in (404, 405):
                return self._input_tokens(reply)
            self._has_input_tokens = False
            self.logger.info("%s has no input_tokens endpoint; counting via apply-template", self.base_url)
        reply = await self._count_call("/apply-template", request_data)
        data = reply.data
        if reply.status != 200 or not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            raise self._count_error(reply)
        return await self.count_text(data["prompt"])

    async def count_body(self, path: str, request_data: dict[str, Any]) -> int:
        """Prompt tokens by one of the engine's counting routes, which takes the whole body."""
        return self._input_tokens(await self._count_call(path, request_data))

    async def count_text(self, prompt: str | Sequence[int | str]) -> int:
        """Tokens of a prompt (text, token ids, or a mix) as llama-server tokenizes it for generation."""
        if isinstance(prompt, Sequence) and not isinstance(prompt, str) and all(isinstance(t, int) for t in prompt):
            return len(prompt)
        reply = await self._count_call("/tokenize", {"content": prompt, "add_special": True, "parse_special": True})
        data = reply.data
        if reply.status != 200 or not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise self._count_error(reply)
        return len(data["tokens"])

    def _input_tokens(self, reply: JsonReply) -> int:
        data = reply.data
        if reply.status == 200 and isinstance(data, dict) and isinstance(data.get("input_tokens"), int):
            return int(data["input_tokens"])
        raise self._count_error(reply)

    async def _count_call(self, path: str, payload: dict[str, Any]) -> JsonReply:
        try:
            return await self.http.json_exchange(self.base_url + path, payload, timeout=self.count_timeout)
        except UpstreamError as exc:
            raise TokenCountError(f"could not count the request's tokens: engine unreachable ({exc})") from exc

    def _count_error(self, reply: JsonReply) -> Exception:
        """The engine's own error answer is relayed as it is; anything else it says is a failed count."""
        if reply.status >= 400 and isinstance(reply.data, dict) and isinstance(reply.data.get("error"), dict):
            body = reply.body
            if len(body) > _RELAYED_ERROR_LIMIT:  # llama-server quotes the request in some errors: clip that
                error = {**reply.data["error"], "message": _engine_message(reply.data)}
                body = json.dumps({**reply.data, "error": error}).encode()
            return EngineAnswered(reply.status, body, reply.content_type, _engine_message(reply.data))
        return TokenCountError(
            f"could not count the request's tokens: engine answered {reply.status} "
            f"({_engine_message(reply.data) if reply.status >= 400 else 'an unexpected body'})"
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

    def forward_request(self, path: str, body: bytes, headers: dict[str, str], method: str = "POST") -> UpstreamCall:
        return UpstreamCall(self.http, self.base_url + path, body, headers, method)

    # ----------------------------------------------------------------- slots (the slot cache)

    @property
    def saves_slots(self) -> bool:
        return True

    async def slots(self, timeout: float = 10.0) -> list[dict[str, Any]] | None:
        """``GET /slots``: per slot ``id``, and once it ran a task ``id_task`` and ``n_prompt_tokens``;
        None when the engine does not say (``--no-slots``, unreachable)."""
        try:
            status, data = await self.http.json_call(self.base_url + "/slots", timeout=timeout)
        except UpstreamError:
            return None
        if status != 200 or not isinstance(data, list) or not all(isinstance(s, dict) for s in data):
            return None
        return data

    async def slot_action(self, slot_id: int, action: str, filename: str, timeout: float) -> JsonReply:
        """``POST /slots/ID?action=save|restore`` with a file name in the engine's --slot-save-path."""
        return await self.http.json_exchange(
            f"{self.base_url}/slots/{slot_id}?action={action}", {"filename": filename}, timeout=timeout
        )

    async def prompt_ids(
        self, prompt: str | Sequence[int | str] | None, chat: dict[str, Any] | None
    ) -> list[int] | None:
        """The token ids llama-server will process for a prompt (text, or ids and text) or for a chat
        body (its template applied first); None when the engine cannot say."""
        try:
            if chat is not None:
                reply = await self.http.json_exchange(self.base_url + "/apply-template", chat, self.count_timeout)
                if (
                    reply.status != 200
                    or not isinstance(reply.data, dict)
                    or not isinstance(reply.data.get("prompt"), str)
                ):
                    return None
                prompt = reply.data["prompt"]
            if prompt is None:
                return None
            if not isinstance(prompt, str) and all(isinstance(t, int) for t in prompt):
                return [int(t) for t in prompt]
            payload = {"content": prompt, "add_special": True, "parse_special": True}
            reply = await self.http.json_exchange(self.base_url + "/tokenize", payload, self.count_timeout)
        except UpstreamError:
            return None
        tokens = reply.data.get("tokens") if isinstance(reply.data, dict) else None
        if reply.status != 200 or not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
            return None
        return tokens
