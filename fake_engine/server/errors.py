"""llama-server's error answers: ``{"error": {"code", "message", "type"}}`` with its statuses and
messages, raised by the handlers and written by ``BaseHandler.write_error``."""

from __future__ import annotations

from typing import Any

import tornado.web

__all__ = [
    "ApiError",
    "bad_request",
    "exceed_context",
    "json_type",
    "missing_key",
    "not_supported",
    "server_error",
    "type_error",
]


class ApiError(tornado.web.HTTPError):
    """An HTTP error answered with a llama-server style JSON body."""

    def __init__(self, status: int, message: str, error_type: str, **extra: Any) -> None:
        super().__init__(status)
        self.body = {"error": {"code": status, "message": message, "type": error_type, **extra}}


def bad_request(message: str) -> ApiError:
    """llama-server's 400 for a request it understood but refuses."""
    return ApiError(400, message, "invalid_request_error")


def server_error(message: str) -> ApiError:
    """llama-server answers 500 for what its JSON library throws (bad JSON, a missing key)."""
    return ApiError(500, message, "server_error")


def not_supported(message: str) -> ApiError:
    """llama-server's 501 for a route it was not started for (``--embeddings``, ``--metrics``...)."""
    return ApiError(501, message, "not_supported_error")


def exceed_context(n_prompt: int, n_ctx: int) -> ApiError:
    """llama-server's 400 for a prompt larger than a slot's context, on every generation route."""
    message = f"request ({n_prompt} tokens) exceeds the available context size ({n_ctx} tokens), try increasing it"
    return ApiError(400, message, "exceed_context_size_error", n_prompt_tokens=n_prompt, n_ctx=n_ctx)


def json_type(value: Any) -> str:
    """The type name nlohmann::json uses in its error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def type_error(expected: str, value: Any) -> ApiError:
    """The 500 nlohmann::json throws when a field has the wrong type."""
    return server_error(f"[json.exception.type_error.302] type must be {expected}, but is {json_type(value)}")


def missing_key(key: str, status: int = 400) -> ApiError:
    """nlohmann::json's message for a missing key, as a 400 or (where llama-server lets it escape) a 500."""
    message = f"[json.exception.out_of_range.403] key '{key}' not found"
    return bad_request(message) if status == 400 else server_error(message)
