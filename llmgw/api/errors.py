"""Errors in each dialect's own shape: OpenAI's ``{"error": {...}}`` for the OpenAI and llama.cpp
routes, Anthropic's ``{"type": "error", "error": {...}}`` for Messages, Ollama's ``{"error": "..."}``
(a string: its clients crash on an object) for the /api/* routes, and the matching error event
inside a stream that has already begun (an NDJSON line for Ollama)."""

from __future__ import annotations

import json
from typing import Any

from llmgw.api.endpoints import RESPONSES, Dialect, Endpoint
from llmgw.errors import ContextTooLarge, GatewayError, clip

# Anthropic's error types by HTTP status (docs.anthropic.com, "Errors").
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def _openai_error(error: GatewayError) -> dict[str, Any]:
    body: dict[str, Any] = {"message": error.message, "type": error.error_type, "code": error.code}
    if isinstance(error, ContextTooLarge):
        body["n_prompt_tokens"] = error.prompt
        body["n_ctx"] = error.largest
    return body


def _anthropic_error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}


def _anthropic_message(error: GatewayError) -> str:
    if isinstance(error, ContextTooLarge):
        # Claude Code recognises this wording ("prompt is too long") and compacts the conversation.
        return f"prompt is too long: {error.needed} tokens > {error.largest} maximum ({error.message})"
    return error.message


def _ollama_error(message: str) -> bytes:
    return json.dumps({"error": message}, separators=(",", ":")).encode()


def error_body(dialect: Dialect, error: GatewayError) -> bytes:
    if dialect is Dialect.OLLAMA:
        return _ollama_error(error.message)
    if dialect is Dialect.ANTHROPIC:
        return json.dumps(_anthropic_error(error.status, _anthropic_message(error))).encode()
    return json.dumps({"error": _openai_error(error)}).encode()


def stream_error_event(endpoint: Endpoint, error: GatewayError, dialect: Dialect | None = None) -> bytes:
    """The event that ends a stream the client already reads, in the route's own stream format;
    ``dialect``: the client's, when it is not the endpoint's (an Ollama request counted as a chat)."""
    if dialect is Dialect.OLLAMA:
        return _ollama_error(error.message) + b"\n"
    if endpoint.dialect is Dialect.ANTHROPIC:
        payload = _anthropic_error(error.status, _anthropic_message(error))
        return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
    if endpoint is RESPONSES:
        payload = {"type": "error", "code": error.code, "message": error.message, "param": None}
        return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
    return b"data: " + json.dumps({"error": _openai_error(error)}).encode() + b"\n\n"


def engine_error_body(dialect: Dialect, status: int, body: bytes) -> bytes:
    """An engine's own error answer: unchanged, except on Anthropic and Ollama routes, where
    llama-server's OpenAI-shaped error is reshaped (same status, same message) so their clients
    can read it."""
    if dialect is Dialect.OLLAMA:
        return _ollama_error(engine_error_message(body, status))
    if dialect is not Dialect.ANTHROPIC:
        return body
    try:
        error = json.loads(body)["error"]
        message = str(error["message"])
    except (ValueError, KeyError, TypeError):
        return body
    if error.get("type") == "exceed_context_size_error" and isinstance(error.get("n_prompt_tokens"), int):
        message = f"prompt is too long: {error['n_prompt_tokens']} tokens > {error.get('n_ctx')} maximum ({message})"
    return json.dumps(_anthropic_error(status, message)).encode()


def engine_error_status(dialect: Dialect, status: int) -> int:
    """The status an engine's error answer gets: on Ollama routes, llama-server's 501 (a route the
    engine was not started for: embeddings without --embeddings, infill without FIM tokens) is the
    400 Ollama answers a model without that capability with."""
    return 400 if dialect is Dialect.OLLAMA and status == 501 else status


def engine_error_message(body: bytes, status: int) -> str:
    """The message of an engine's error answer (llama-server's ``{"error": {"message"}}``, or
    ``{"error": "..."}``), else its text, clipped."""
    try:
        error = json.loads(body)["error"]
        message = error if isinstance(error, str) else error["message"]
        if isinstance(message, str) and message:
            return clip(message, 1000)
    except (ValueError, KeyError, TypeError):
        pass
    text = body.decode("utf-8", "replace").strip()
    return clip(text, 1000) if text else f"the engine answered {status}"


def engine_error_event(endpoint: Endpoint, status: int, body: bytes, dialect: Dialect | None = None) -> bytes:
    """An engine's error answer as the route's stream error event (llama-server's own shape on
    OpenAI routes, as it sends errors inside streams; reshaped on Anthropic, Responses and Ollama)."""
    if dialect is Dialect.OLLAMA:
        return _ollama_error(engine_error_message(body, status)) + b"\n"
    try:
        parsed = json.loads(body)
        error = parsed["error"]
        message = str(error["message"])
    except (ValueError, KeyError, TypeError):
        parsed, error, message = None, {}, clip(body.decode("utf-8", "replace"))
    if endpoint.dialect is Dialect.ANTHROPIC:
        return b"event: error\ndata: " + _compact_json(engine_error_body(endpoint.dialect, status, body)) + b"\n\n"
    if endpoint is not RESPONSES and isinstance(parsed, dict):
        return b"data: " + json.dumps(parsed, separators=(",", ":")).encode() + b"\n\n"
    failure = GatewayError(message or f"engine answered {status}")
    failure.status = status
    failure.error_type = str(error.get("type", "server_error"))
    code = error.get("code")
    failure.code = str(code) if code is not None else None
    return stream_error_event(endpoint, failure)


def _compact_json(body: bytes) -> bytes:
    """One line, as an SSE data field must be."""
    try:
        return json.dumps(json.loads(body), separators=(",", ":")).encode()
    except ValueError:
        return body.replace(b"\n", b" ")
