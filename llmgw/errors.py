"""Errors that reach a client, each carrying its HTTP status and OpenAI error type/code.

Lower layers raise these; the server layer turns any of them into
``{"error": {"message", "type", "code"}}`` without knowing where they came from.
"""

from __future__ import annotations

# What an error message may quote of any one client-supplied value: enough to recognise it,
# never the whole of a hostile input (a 1 MB model name must not come back as a 1 MB error).
ECHO_LIMIT = 200


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis and the original length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """A client-supplied value as an error message quotes it: its repr, clipped."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int past the digit limit of str(), absurd nesting
        text = f"<{type(value).__name__} too large to show>"
    return clip(text, limit)


class GatewayError(Exception):
    status = 500
    error_type = "server_error"
    code: str | None = "internal_error"
    retry_after: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class ModelNotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class RateLimited(GatewayError):
    """A key's limit (requests per minute, tokens per day, requests in flight) says not now: 429
    with Retry-After. OpenAI's shape: type ``requests`` or ``tokens``, code ``rate_limit_exceeded``."""

    status = 429
    error_type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: float, tokens: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        if tokens:
            self.error_type = "tokens"


class ContextTooLarge(GatewayError):
    """llama-server's own type, with its ``n_prompt_tokens`` and ``n_ctx``, so clients that parse
    llama-server's error understand it, and OpenAI's code for clients that know that one."""

    status = 400
    error_type = "exceed_context_size_error"
    code = "context_length_exceeded"

    def __init__(self, model: str, needed: int, largest: int, prompt: int | None = None, detail: str = "") -> None:
        what = detail or "prompt plus completion budget"
        super().__init__(
            f"model {model!r} needs {needed} tokens of context for this request ({what}), "
            f"but its largest variant has {largest}"
        )
        self.needed = needed
        self.largest = largest
        self.prompt = needed if prompt is None else prompt


class QueueTimeout(GatewayError):
    status = 503
    error_type = "server_error"
    code = "queue_timeout"

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(GatewayError):
    status = 503
    error_type = "server_error"
    code = "shutting_down"
    retry_after = 5.0


class EngineStartError(GatewayError):
    """The engine exited or refused to start (port taken, bad binary, crash while loading)."""

    status = 503
    error_type = "server_error"
    code = "engine_start_failed"


class WorkerUnavailable(GatewayError):
    """An RPC worker an engine needs is down, unreachable, or held by another client: the engine
    is not started (its start would fail, or hang on the worker); try again later."""

    status = 503
    error_type = "server_error"
    code = "rpc_worker_unavailable"

    def __init__(self, message: str, retry_after: float = 10.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WorkerBuildMismatch(EngineStartError):
    """An RPC worker runs another llama.cpp build than the engine's: the RPC protocol changes with
    every build, so the engine is never started against it."""

    code = "rpc_build_mismatch"


class EngineStartTimeout(GatewayError):
    status = 504
    error_type = "server_error"
    code = "engine_startup_timeout"


class EngineNotRunning(GatewayError):
    """A question only a running engine can answer (/props, /slots), for a model that is not running."""

    status = 503
    error_type = "server_error"
    code = "model_not_loaded"


class EngineUnavailable(GatewayError):
    """The engine could not be reached or died while serving a request."""

    status = 502
    error_type = "server_error"
    code = "engine_unavailable"


class TokenCountError(GatewayError):
    """Counting the request's tokens failed: never guess, report it."""

    status = 502
    error_type = "server_error"
    code = "token_count_failed"


class EngineAnswered(GatewayError):
    """The engine refused the request with an error of its own (while counting): relayed as it is,
    so clients written for llama-server see llama-server's answer."""

    def __init__(self, status: int, body: bytes, content_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.content_type = content_type or "application/json"
        self.code = None


class NoNodeAvailable(GatewayError):
    """Only peers serve the model, and none of them can take a request now (tripped, draining)."""

    status = 503
    error_type = "server_error"
    code = "no_node_available"

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PeerUnavailable(GatewayError):
    """Every node tried for a request failed before its answer began (the last was a peer)."""

    status = 502
    error_type = "server_error"
    code = "peer_unavailable"
