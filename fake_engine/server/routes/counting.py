"""The routes a gateway counts tokens with: ``/tokenize``, ``/detokenize``, ``/apply-template`` and
the ``input_tokens`` / ``count_tokens`` routes of the chat, Messages and Responses APIs."""

from __future__ import annotations

from typing import Any

from ...fake_llama_tokenize import (
    BOS_ID,
    count_messages_tokens,
    count_prompt_tokens,
    count_responses_tokens,
    detokenize,
    render_template,
    tokenize,
)
from .. import shapes
from ..bodies import check_input, check_messages, counted, is_token, mixed_ids
from ..errors import type_error
from .base import BaseHandler

__all__ = [
    "COUNT_PATHS",
    "ApplyTemplateHandler",
    "CountHandler",
    "DetokenizeHandler",
    "InputTokensHandler",
    "MessagesCountHandler",
    "ResponsesInputTokensHandler",
    "TokenizeHandler",
]


# What llama-server answers on its HTTP threads without the inference loop: with
# --fake-count-process these are served by the counting process.
COUNT_PATHS = frozenset(
    {
        "/tokenize",
        "/detokenize",
        "/apply-template",
        "/chat/completions/input_tokens",
        "/v1/chat/completions/input_tokens",
        "/v1/messages/count_tokens",
        "/v1/responses/input_tokens",
    }
)


class CountHandler(BaseHandler):
    """The routes a gateway counts tokens with; ``--fake-count-garbage`` breaks their answers."""

    hangs_with_requests = True

    def send_count(self, data: Any) -> None:
        mode = self.engine.options.fake_count_garbage
        if mode == "truncated":
            text = shapes.dumps(data)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish(text[: max(1, len(text) // 2)])
        elif mode == "content-type":
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish("<html><body><h1>fake engine</h1></body></html>")
        elif mode == "shape":
            self.send_json(["unexpected", {"shape": True}])
        else:
            self.send_json(data)


class TokenizeHandler(CountHandler):
    """``/tokenize``: text, or ids and text mixed, to ids (with their pieces on request)."""

    def post(self) -> None:
        body = self.json_body()
        content = body.get("content")
        add_special = bool(body.get("add_special", False))
        if content is None and "content" not in body:
            ids: list[int] = []
        elif isinstance(content, str):
            ids = tokenize(content, add_special=add_special)
        elif isinstance(content, list) and all(is_token(v) or isinstance(v, str) for v in content):
            ids = [BOS_ID, *mixed_ids(content)] if add_special else mixed_ids(content)
        else:
            raise type_error("string", content)
        if not body.get("with_pieces", False):
            self.send_count({"tokens": ids})
            return
        self.send_count({"tokens": [{"id": i, "piece": detokenize([i])} for i in ids]})


class DetokenizeHandler(BaseHandler):
    """``/detokenize``: ids back to text (only pieces this process has tokenized are known)."""

    hangs_with_requests = True

    def post(self) -> None:
        tokens = self.json_body().get("tokens", [])
        if not isinstance(tokens, list):
            raise type_error("array", tokens)
        for token in tokens:
            if not is_token(token):
                raise type_error("number", token)
        self.send_json({"content": detokenize(tokens)})


class ApplyTemplateHandler(CountHandler):
    """``/apply-template``: the prompt a chat body renders to (older gateways count with it)."""

    def post(self) -> None:
        body = self.json_body()
        check_messages(body)
        self.send_count({"prompt": counted(render_template, body)})


class InputTokensHandler(CountHandler):
    """``/v1/chat/completions/input_tokens``: the exact count the gateway asks before it forwards."""

    def post(self) -> None:
        body = self.json_body()
        check_messages(body)
        self.send_count({"input_tokens": counted(count_prompt_tokens, body), "object": "response.input_tokens"})


class MessagesCountHandler(CountHandler):
    """``/v1/messages/count_tokens``: Anthropic's count, of the equivalent chat body."""

    def post(self) -> None:
        body = self.json_body()
        check_messages(body, status=500)
        self.send_count({"input_tokens": counted(count_messages_tokens, body)})


class ResponsesInputTokensHandler(CountHandler):
    """``/v1/responses/input_tokens``: the Responses count, of the equivalent chat body."""

    def post(self) -> None:
        body = self.json_body()
        check_input(body)
        self.send_count({"input_tokens": counted(count_responses_tokens, body), "object": "response.input_tokens"})
