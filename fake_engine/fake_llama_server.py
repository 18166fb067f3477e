#!/usr/bin/env python3
"""A fake ``llama-server`` for tests: same command line, endpoints and error bodies, no model.

Run as ``python fake_engine/fake_llama_server.py ARGS`` (tornado + stdlib only). Known flags:
``--host`` (127.0.0.1), ``--port`` (8080), ``-c/--ctx-size`` (4096), ``-m/--model`` (only
reported), ``-np/--parallel`` (1; the per-slot context is ``ctx_size // parallel``). Flags are
matched exactly, as ``--flag VALUE`` or ``--flag=VALUE``; any other flag (and its value) is
ignored. Test knobs: ``--fake-load-delay S``, ``--fake-never-healthy``,
``--fake-exit-at-startup CODE``, ``--fake-tokens N`` (8), ``--fake-token-delay S``,
``--fake-prompt-delay S``, ``--fake-exit-after-chunks N``, ``--fake-ignore-sigterm``,
``--fake-shutdown-delay S``, ``--fake-spawn-child``, ``--fake-memory-mb N``, ``--fake-events FILE``
(see README.md).

Tokenization (see ``fake_llama_tokenize``): the tokens of a text are its whitespace-separated
pieces, the id of a piece is ``zlib.crc32(piece.encode()) % 32000 + 10``, BOS is 2. A chat body
renders to ``"<|ROLE|>\\nTEXT\\n"`` per message, then ``"<|tools|>\\nJSON\\n"`` when tools are
given, then ``"<|assistant|>\\n"``; ``count_prompt_tokens(body)`` counts its tokens plus BOS.
Generated tokens are ``"tok0"``, ``" tok1"``, ``" tok2"``, ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

if __package__:
    from .fake_llama_tokenize import count_prompt_tokens, render_template, tokenize, tokenize_pieces
else:  # run as a script: python fake_engine/fake_llama_server.py
    from fake_llama_tokenize import (  # type: ignore[import-not-found,no-redef]
        count_prompt_tokens,
        render_template,
        tokenize,
        tokenize_pieces,
    )

__all__ = ["Options", "count_prompt_tokens", "main", "parse_args", "render_template", "tokenize"]

N_CTX_TRAIN = 131072
BOS_PIECE = "<s>"
CHILD_COMMAND = [sys.executable, "-c", "import time; time.sleep(600)"]


# ----------------------------------------------------------------------------- command line


@dataclass
class Options:
    host: str = "127.0.0.1"
    port: int = 8080
    ctx_size: int = 4096
    model: str = ""
    parallel: int = 1
    fake_load_delay: float = 0.0
    fake_never_healthy: bool = False
    fake_exit_at_startup: int | None = None
    fake_tokens: int = 8
    fake_token_delay: float = 0.0
    fake_prompt_delay: float = 0.0
    fake_exit_after_chunks: int | None = None
    fake_ignore_sigterm: bool = False
    fake_shutdown_delay: float = 0.0
    fake_spawn_child: bool = False
    fake_memory_mb: int = 0
    fake_events: str | None = None

    @property
    def n_ctx(self) -> int:
        """Context size of one slot, as llama-server computes it."""
        total = self.ctx_size if self.ctx_size > 0 else N_CTX_TRAIN
        return max(1, total // max(1, self.parallel))


# flag -> (Options field, value converter; None for a switch without value)
_FLAGS: dict[str, tuple[str, Callable[[str], Any] | None]] = {
    "--host": ("host", str),
    "--port": ("port", int),
    "-c": ("ctx_size", int),
    "--ctx-size": ("ctx_size", int),
    "-m": ("model", str),
    "--model": ("model", str),
    "-np": ("parallel", int),
    "--parallel": ("parallel", int),
    "--fake-load-delay": ("fake_load_delay", float),
    "--fake-never-healthy": ("fake_never_healthy", None),
    "--fake-exit-at-startup": ("fake_exit_at_startup", int),
    "--fake-tokens": ("fake_tokens", int),
    "--fake-token-delay": ("fake_token_delay", float),
    "--fake-prompt-delay": ("fake_prompt_delay", float),
    "--fake-exit-after-chunks": ("fake_exit_after_chunks", int),
    "--fake-ignore-sigterm": ("fake_ignore_sigterm", None),
    "--fake-shutdown-delay": ("fake_shutdown_delay", float),
    "--fake-spawn-child": ("fake_spawn_child", None),
    "--fake-memory-mb": ("fake_memory_mb", int),
    "--fake-events": ("fake_events", str),
}


class UsageError(Exception):
    pass


def parse_args(argv: Sequence[str]) -> Options:
    """Parse the known flags (exact names, so ``-ctk`` is not ``-c tk``); ignore all others."""
    options = Options()
    args = list(argv)
    i = 0
    while i < len(args):
        name, has_inline, inline = args[i].partition("=")
        i += 1
        spec = _FLAGS.get(name)
        if spec is None:
            continue
        dest, convert = spec
        if convert is None:
            setattr(options, dest, True)
            continue
        if has_inline:
            raw = inline
        elif i < len(args):
            raw, i = args[i], i + 1
        else:
            raise UsageError(f"error: expected value for argument {name}")
        try:
            setattr(options, dest, convert(raw))
        except ValueError:
            raise UsageError(f"error: invalid value for argument {name}: {raw!r}") from None
    return options


# ----------------------------------------------------------------------------- shared state


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


_STARTED = time.monotonic()


def log_tagged(message: str, level: str = "I") -> None:
    """A line in llama-server's own format ("0.01.234.567 I ..."), whose level tag the gateway honours."""
    elapsed_us = int((time.monotonic() - _STARTED) * 1_000_000)
    minutes, rest = divmod(elapsed_us, 60_000_000)
    seconds, rest = divmod(rest, 1_000_000)
    stamp = f"{minutes}.{seconds:02d}.{rest // 1000:03d}.{rest % 1000:03d}"
    print(f"{stamp} {level} {message}", file=sys.stderr, flush=True)


class EventLog:
    """Appends one JSON line per event to the ``--fake-events`` file (one write per line)."""

    def __init__(self, path: str | None) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if path else None

    def emit(self, event: str, **fields: Any) -> None:
        if self._fd is None:
            return
        line = json.dumps({"event": event, **fields, "t": time.time()}) + "\n"
        os.write(self._fd, line.encode())


class Engine:
    """State shared by all handlers of one fake server."""

    def __init__(self, options: Options, port: int) -> None:
        self.options = options
        self.port = port
        self.events = EventLog(options.fake_events)
        self.created = int(time.time())
        self.active: set[str] = set()
        delay = math.inf if options.fake_never_healthy else options.fake_load_delay
        self.ready_at = time.monotonic() + delay

    @property
    def n_ctx(self) -> int:
        return self.options.n_ctx

    def loading(self) -> bool:
        return time.monotonic() < self.ready_at


# ----------------------------------------------------------------------------- handlers


class ApiError(tornado.web.HTTPError):
    """An HTTP error answered with a llama-server style JSON body."""

    def __init__(self, status: int, message: str, error_type: str, **extra: Any) -> None:
        super().__init__(status)
        self.body = {"error": {"code": status, "message": message, "type": error_type, **extra}}


ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "not_supported_error",
    503: "unavailable_error",
}


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "invalid_request_error")


class BaseHandler(tornado.web.RequestHandler):
    engine: Engine

    def initialize(self, engine: Engine) -> None:
        self.engine = engine

    def prepare(self) -> None:
        if self.engine.loading():
            raise ApiError(503, "Loading model", "unavailable_error")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ApiError):
            body = error.body
        else:
            error_type = ERROR_TYPES.get(status_code, "server_error")
            body = {"error": {"code": status_code, "message": self._reason, "type": error_type}}
        self.send_json(body)

    def send_json(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(data))

    def json_body(self) -> dict[str, Any]:
        try:
            body = json.loads(self.request.body or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        return body


def render_or_400(body: Mapping[str, Any]) -> str:
    try:
        return render_template(body)
    except ValueError as exc:
        raise bad_request(str(exc)) from None


def count_or_400(body: Mapping[str, Any]) -> int:
    try:
        return count_prompt_tokens(body)
    except ValueError as exc:
        raise bad_request(str(exc)) from None


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise ApiError(404, "File Not Found", "not_found_error")


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.send_json({"status": "ok"})


class PropsHandler(BaseHandler):
    def get(self) -> None:
        options = self.engine.options
        self.send_json(
            {
                "default_generation_settings": {"n_ctx": self.engine.n_ctx, "params": {}},
                "total_slots": options.parallel,
                "model_path": options.model,
                "build_info": "fake",
            }
        )


class SlotsHandler(BaseHandler):
    def get(self) -> None:
        busy = len(self.engine.active)
        slots = [
            {"id": i, "n_ctx": self.engine.n_ctx, "is_processing": i < busy}
            for i in range(self.engine.options.parallel)
        ]
        self.send_json(slots)


class ModelsHandler(BaseHandler):
    def get(self) -> None:
        model = {
            "id": self.engine.options.model,
            "object": "model",
            "created": self.engine.created,
            "owned_by": "llamacpp",
            "meta": {"n_ctx_train": N_CTX_TRAIN},
        }
        self.send_json({"object": "list", "data": [model]})


class TokenizeHandler(BaseHandler):
    def post(self) -> None:
        body = self.json_body()
        content = body.get("content", "")
        if not isinstance(content, str):
            raise bad_request("'content' must be a string")
        add_special = bool(body.get("add_special", False))
        ids = tokenize(content, add_special=add_special)
        if not body.get("with_pieces", False):
            self.send_json({"tokens": ids})
            return
        pieces = ([BOS_PIECE] if add_special else []) + tokenize_pieces(content)
        self.send_json({"tokens": [{"id": i, "piece": p} for i, p in zip(ids, pieces, strict=True)]})


class ApplyTemplateHandler(BaseHandler):
    def post(self) -> None:
        self.send_json({"prompt": render_or_400(self.json_body())})


class InputTokensHandler(BaseHandler):
    def post(self) -> None:
        tokens = count_or_400(self.json_body())
        self.send_json({"input_tokens": tokens, "object": "response.input_tokens"})


# ----------------------------------------------------------------------------- completions


def token_piece(index: int) -> str:
    return f"tok{index}" if index == 0 else f" tok{index}"


def requested_max_tokens(body: Mapping[str, Any]) -> int | None:
    """Return max_completion_tokens / max_tokens / n_predict, None when absent or negative."""
    for key in ("max_completion_tokens", "max_tokens", "n_predict"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_request(f"'{key}' must be an integer")
        return value if value >= 0 else None
    return None


@dataclass(frozen=True)
class Reply:
    """What one chat completion produces, and its OpenAI-shaped JSON objects."""

    id: str
    model: str
    created: int
    prompt_tokens: int
    n_tokens: int
    finish_reason: str

    def _base(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fake",
        }

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.n_tokens,
            "total_tokens": self.prompt_tokens + self.n_tokens,
        }

    def completion(self, content: str) -> dict[str, Any]:
        message = {"role": "assistant", "content": content}
        choice = {"index": 0, "message": message, "finish_reason": self.finish_reason}
        return {**self._base("chat.completion"), "choices": [choice], "usage": self.usage()}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return {**self._base("chat.completion.chunk"), "choices": [choice]}

    def usage_chunk(self) -> dict[str, Any]:
        return {**self._base("chat.completion.chunk"), "choices": [], "usage": self.usage()}


def plan_reply(body: Mapping[str, Any], prompt_tokens: int, engine: Engine) -> Reply:
    room = engine.n_ctx - prompt_tokens
    limit = requested_max_tokens(body)
    if limit is None:
        n_tokens = min(engine.options.fake_tokens, room)
        finish_reason = "stop" if n_tokens == engine.options.fake_tokens else "length"
    else:
        n_tokens, finish_reason = min(limit, room), "length"
    model = body.get("model")
    return Reply(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        model=model if isinstance(model, str) and model else engine.options.model,
        created=int(time.time()),
        prompt_tokens=prompt_tokens,
        n_tokens=n_tokens,
        finish_reason=finish_reason,
    )


class ChatCompletionsHandler(BaseHandler):
    def initialize(self, engine: Engine) -> None:
        super().initialize(engine)
        self._closed = asyncio.Event()

    def on_connection_close(self) -> None:
        self._closed.set()

    async def post(self) -> None:
        body = self.json_body()
        prompt_tokens = count_or_400(body)
        reply = plan_reply(body, prompt_tokens, self.engine)
        stream = bool(body.get("stream"))
        self.engine.events.emit(
            "request", id=reply.id, path=self.request.path, stream=stream, prompt_tokens=prompt_tokens
        )
        if prompt_tokens > self.engine.n_ctx:
            raise ApiError(
                400,
                f"request ({prompt_tokens} tokens) exceeds the available context size "
                f"({self.engine.n_ctx} tokens), try increasing it",
                "exceed_context_size_error",
                n_prompt_tokens=prompt_tokens,
                n_ctx=self.engine.n_ctx,
            )
        self.engine.active.add(reply.id)
        try:
            if stream:
                await self._stream(reply, include_usage=_include_usage(body))
            else:
                await self._complete(reply)
        finally:
            self.engine.active.discard(reply.id)

    async def _wait_or_closed(self, delay: float) -> bool:
        """Sleep ``delay`` seconds, waking up early; return True if the client went away."""
        if delay > 0 and not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), delay)
        return self._closed.is_set()

    def _cancelled(self, reply: Reply, tokens: int) -> None:
        self.engine.events.emit("cancelled", id=reply.id, tokens=tokens)
        log_tagged("srv  cancel_tasks: task cancelled")

    def _done(self, reply: Reply) -> None:
        self.engine.events.emit("done", id=reply.id, tokens=reply.n_tokens)

    async def _complete(self, reply: Reply) -> None:
        if await self._wait_or_closed(self.engine.options.fake_prompt_delay):
            return self._cancelled(reply, 0)
        pieces = []
        for index in range(reply.n_tokens):
            if await self._wait_or_closed(self.engine.options.fake_token_delay):
                return self._cancelled(reply, index)
            pieces.append(token_piece(index))
        self._done(reply)  # before the answer, so a client that has it sees the event
        self.send_json(reply.completion("".join(pieces)))

    async def _stream(self, reply: Reply, include_usage: bool) -> None:
        options = self.engine.options
        if await self._wait_or_closed(options.fake_prompt_delay):
            return self._cancelled(reply, 0)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        if not await self._send_event(reply.chunk({"role": "assistant", "content": None})):
            return self._cancelled(reply, 0)
        self._maybe_crash(0)
        for index in range(reply.n_tokens):
            if await self._wait_or_closed(options.fake_token_delay):
                return self._cancelled(reply, index)
            if not await self._send_event(reply.chunk({"content": token_piece(index)})):
                return self._cancelled(reply, index)
            self._maybe_crash(index + 1)
        self._done(reply)  # every token is out; the client may still hang up below
        tail: list[dict[str, Any] | str] = [reply.chunk({}, reply.finish_reason)]
        if include_usage:
            tail.append(reply.usage_chunk())
        tail.append("[DONE]")
        for event in tail:
            if not await self._send_event(event):
                return
        self.finish()

    async def _send_event(self, data: dict[str, Any] | str) -> bool:
        """Write and flush one server-sent event; return False if the client went away."""
        if self._closed.is_set():
            return False
        payload = data if isinstance(data, str) else json.dumps(data)
        self.write(f"data: {payload}\n\n")
        try:
            await self.flush()
        except tornado.iostream.StreamClosedError:
            return False
        return True

    def _maybe_crash(self, chunks_sent: int) -> None:
        if chunks_sent == self.engine.options.fake_exit_after_chunks:
            crash(f"fake crash after {chunks_sent} content chunks")


def _include_usage(body: Mapping[str, Any]) -> bool:
    stream_options = body.get("stream_options")
    return isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))


def crash(reason: str) -> NoReturn:
    log(f"error: {reason}")
    sys.stdout.flush()
    os._exit(3)


# ----------------------------------------------------------------------------- process


def log_request(handler: tornado.web.RequestHandler) -> None:
    request = handler.request
    status = handler.get_status()
    log_tagged(f"srv  log_server_r: request: {request.method} {request.uri} {request.remote_ip} {status}")


def make_app(engine: Engine) -> tornado.web.Application:
    args = {"engine": engine}
    routes: list[tuple[str, type[BaseHandler]]] = [
        ("/health", HealthHandler),
        ("/v1/health", HealthHandler),
        ("/props", PropsHandler),
        ("/slots", SlotsHandler),
        ("/models", ModelsHandler),
        ("/v1/models", ModelsHandler),
        ("/tokenize", TokenizeHandler),
        ("/apply-template", ApplyTemplateHandler),
        ("/v1/chat/completions/input_tokens", InputTokensHandler),
        ("/chat/completions", ChatCompletionsHandler),
        ("/v1/chat/completions", ChatCompletionsHandler),
    ]
    return tornado.web.Application(
        [(path, handler, args) for path, handler in routes],
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        log_function=log_request,
    )


def spawn_child() -> subprocess.Popen[bytes]:
    """Start a long sleeper in our process group; only a process-group kill stops it."""
    return subprocess.Popen(
        CHILD_COMMAND, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


class Shutdown:
    """Handles SIGTERM/SIGINT: wait ``--fake-shutdown-delay`` seconds, then stop the loop."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def request(self) -> None:
        if self._task is None:  # later signals change nothing
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        log("srv    operator(): cleaning up before exit...")
        await asyncio.sleep(self.delay)
        self.stopped.set()


async def serve(options: Options, sockets: list[socket.socket]) -> int:
    shutdown = Shutdown(options.fake_shutdown_delay)
    loop = asyncio.get_running_loop()
    if not options.fake_ignore_sigterm:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, shutdown.request)
    port = sockets[0].getsockname()[1]
    # Written, not just allocated, so the pages count in the process's RSS like loaded weights.
    ballast = b"\x01" * (max(0, options.fake_memory_mb) << 20)
    engine = Engine(options, port)
    server = tornado.httpserver.HTTPServer(make_app(engine))
    server.add_sockets(sockets)
    engine.events.emit("start", pid=os.getpid(), port=port, n_ctx=engine.n_ctx)
    child = spawn_child() if options.fake_spawn_child else None
    if child is not None:
        engine.events.emit("child", pid=child.pid)
    log(f"main: HTTP server is listening, hostname: {options.host}, port: {port}, http threads: 1")
    log(f"main: loading model '{options.model}'")
    if not options.fake_never_healthy:
        loop.call_later(
            max(0.0, engine.ready_at - time.monotonic()),
            log,
            f"main: server is listening on http://{options.host}:{port} - starting the main loop",
        )
    await shutdown.stopped.wait()
    del ballast
    server.stop()
    engine.events.emit("exit")
    log("main: exiting")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        log(str(exc))
        return 1
    if options.fake_ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("build: fake (fake_llama_server.py)", flush=True)
    if options.fake_exit_at_startup is not None:
        log(f"main: loading model '{options.model}'")
        log("error: fake startup failure")
        log("main: exiting due to model loading error")
        return options.fake_exit_at_startup
    try:
        sockets = tornado.netutil.bind_sockets(options.port, options.host)
    except OSError as exc:
        log(f"error: couldn't bind HTTP server socket, hostname: {options.host}, port: {options.port}: {exc}")
        return 1
    return asyncio.run(serve(options, sockets))


if __name__ == "__main__":
    sys.exit(main())
