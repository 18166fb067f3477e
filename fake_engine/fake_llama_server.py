#!/usr/bin/env python3
"""A fake ``llama-server`` for tests: same command line, endpoints and answer shapes, no model.

Run as ``python fake_engine/fake_llama_server.py ARGS`` (tornado + stdlib only). It answers the
routes of llama-server 0.10068 with the same JSON and SSE shapes (``fake_llama_shapes``), counts
prompt tokens with the fake rule (``fake_llama_tokenize``), keeps a per-slot prompt cache, and
has ``--fake-...`` knobs that make it misbehave the ways a real engine does. README.md lists the
flags, the endpoints, the events file and the counting rule.

Tokenization (see ``fake_llama_tokenize``): the tokens of a text are its whitespace-separated
pieces, the id of a piece is ``zlib.crc32(piece.encode()) % 32000 + 10``, BOS is 2. A chat body
renders to ``"<|ROLE|>\\nTEXT\\n"`` per message, then ``"<|tools|>\\nJSON\\n"`` when tools are
given, then ``"<|assistant|>\\n"``; ``count_prompt_tokens(body)`` counts its tokens plus BOS.
Generated tokens are ``"tok0"``, ``" tok1"``, ``" tok2"``, ...
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

if __package__:
    from . import fake_llama_shapes as shapes
    from . import fake_rpc
    from .fake_llama_tokenize import (
        BOS_ID,
        count_messages_tokens,
        count_prompt_tokens,
        count_responses_tokens,
        detokenize,
        messages_to_chat,
        piece_id,
        render_template,
        responses_to_chat,
        tokenize,
    )
else:  # run as a script: python fake_engine/fake_llama_server.py
    import fake_llama_shapes as shapes  # type: ignore[import-not-found,no-redef]
    import fake_rpc  # type: ignore[import-not-found,no-redef]
    from fake_llama_tokenize import (  # type: ignore[import-not-found,no-redef]
        BOS_ID,
        count_messages_tokens,
        count_prompt_tokens,
        count_responses_tokens,
        detokenize,
        messages_to_chat,
        piece_id,
        render_template,
        responses_to_chat,
        tokenize,
    )

__all__ = [
    "Options",
    "count_messages_tokens",
    "count_prompt_tokens",
    "count_responses_tokens",
    "main",
    "messages_to_chat",
    "parse_args",
    "render_template",
    "responses_to_chat",
    "tokenize",
]

N_CTX_TRAIN = 131072
CHILD_COMMAND = [sys.executable, "-c", "import time; time.sleep(600)"]
GARBAGE_MODES = ("truncated", "content-type", "shape")
FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FILE_SEP = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>"


# ----------------------------------------------------------------------------- command line


@dataclass
class Options:
    host: str = "127.0.0.1"
    port: int = 8080
    ctx_size: int = 4096
    model: str = ""
    alias: str | None = None
    parallel: int = 1
    batch_size: int = 2048
    ubatch_size: int = 512
    embeddings: bool = False
    reranking: bool = False
    metrics: bool = False
    slot_save_path: str | None = None
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
    fake_infill: bool = False
    fake_embedding_dim: int = 64
    fake_count_garbage: str | None = None
    fake_truncate_body: bool = False
    fake_hang_requests: bool = False
    fake_hang_health: bool = False
    fake_health_flap: float | None = None
    fake_stall_after_chunks: int | None = None
    fake_stall_seconds: float = math.inf
    fake_slot_bytes_per_token: int = 64
    fake_slot_refuse_restore: bool = False
    fake_slot_disk_full: bool = False
    rpc: str | None = None  # --rpc host:port,...: fake_rpc workers to connect to
    device: str | None = None
    fake_build: str = "fake000"  # the commit --version prints

    @property
    def n_ctx(self) -> int:
        """Context size of one slot, as llama-server computes it."""
        total = self.ctx_size if self.ctx_size > 0 else N_CTX_TRAIN
        return max(1, total // max(1, self.parallel))

    @property
    def physical_batch(self) -> int:
        """The batch an embedding input must fit: llama-server clamps ``-ub`` to ``-b``."""
        return max(1, min(self.batch_size, self.ubatch_size))

    @property
    def served_name(self) -> str:
        """The name llama-server puts in every ``model`` field: the alias, else the ``-m`` path."""
        return self.alias if self.alias else self.model


# flag -> (Options field, value converter; None for a switch without value)
_FLAGS: dict[str, tuple[str, Callable[[str], Any] | None]] = {
    "--host": ("host", str),
    "--port": ("port", int),
    "-c": ("ctx_size", int),
    "--ctx-size": ("ctx_size", int),
    "-m": ("model", str),
    "--model": ("model", str),
    "-a": ("alias", str),
    "--alias": ("alias", str),
    "-np": ("parallel", int),
    "--parallel": ("parallel", int),
    "-b": ("batch_size", int),
    "--batch-size": ("batch_size", int),
    "-ub": ("ubatch_size", int),
    "--ubatch-size": ("ubatch_size", int),
    "--embedding": ("embeddings", None),
    "--embeddings": ("embeddings", None),
    "--rerank": ("reranking", None),
    "--reranking": ("reranking", None),
    "--metrics": ("metrics", None),
    "--slot-save-path": ("slot_save_path", str),
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
    "--fake-infill": ("fake_infill", None),
    "--fake-embedding-dim": ("fake_embedding_dim", int),
    "--fake-count-garbage": ("fake_count_garbage", str),
    "--fake-truncate-body": ("fake_truncate_body", None),
    "--fake-hang-requests": ("fake_hang_requests", None),
    "--fake-hang-health": ("fake_hang_health", None),
    "--fake-health-flap": ("fake_health_flap", float),
    "--fake-stall-after-chunks": ("fake_stall_after_chunks", int),
    "--fake-stall-seconds": ("fake_stall_seconds", float),
    "--fake-slot-bytes-per-token": ("fake_slot_bytes_per_token", int),
    "--fake-slot-refuse-restore": ("fake_slot_refuse_restore", None),
    "--fake-slot-disk-full": ("fake_slot_disk_full", None),
    "--rpc": ("rpc", str),
    "--device": ("device", str),
    "-dev": ("device", str),
    "--fake-build": ("fake_build", str),
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
    if options.fake_count_garbage is not None and options.fake_count_garbage not in GARBAGE_MODES:
        raise UsageError(f"error: --fake-count-garbage must be one of {', '.join(GARBAGE_MODES)}")
    if options.fake_health_flap is not None and options.fake_health_flap <= 0:
        raise UsageError("error: --fake-health-flap needs a period > 0")
    if options.reranking:
        options.embeddings = True  # as llama-server: reranking runs on the embedding path
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


def generated_id(index: int) -> int:
    """Token id of the ``index``-th generated token (its piece is ``tok{index}``)."""
    return piece_id(f"tok{index}")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class Slot:
    """One llama-server slot: its cached tokens (the prompt cache) and what it is doing."""

    id: int
    tokens: list[int] = field(default_factory=list)
    run: shapes.Run | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    id_task: int | None = None
    n_prompt_processed: int = 0
    last_used: float = 0.0


@dataclass
class Metrics:
    """The counters behind ``/metrics`` (``--metrics``)."""

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    predicted_tokens: int = 0
    predicted_seconds: float = 0.0
    decodes: int = 0
    n_tokens_max: int = 0


class Engine:
    """State shared by all handlers of one fake server."""

    rpc: fake_rpc.Links | None = None  # the workers of --rpc

    def __init__(self, options: Options, port: int) -> None:
        self.options = options
        self.port = port
        self.events = EventLog(options.fake_events)
        self.created = int(time.time())
        self.active: set[str] = set()
        self.slots = [Slot(i) for i in range(max(1, options.parallel))]
        self.metrics = Metrics()
        self._tasks = 0
        delay = math.inf if options.fake_never_healthy else options.fake_load_delay
        self.ready_at = time.monotonic() + delay

    @property
    def n_ctx(self) -> int:
        return self.options.n_ctx

    def loading(self) -> bool:
        return time.monotonic() < self.ready_at

    def healthy_now(self) -> bool:
        """False in the 503 half of each ``--fake-health-flap`` period (200 first)."""
        period = self.options.fake_health_flap
        if period is None:
            return True
        return int((time.monotonic() - self.ready_at) / period) % 2 == 0

    def acquire(self, run: shapes.Run, settings: dict[str, Any], wanted: int, use_cache: bool) -> Slot | None:
        """Pick an idle slot as llama-server does (asked id, else best prompt match above 10 %, else
        least recently used) and set ``run.cache_n``; None when every slot is busy (no queue here)."""
        idle = [slot for slot in self.slots if slot.run is None]
        if not idle:
            return None
        ids = run.prompt_ids
        if 0 <= wanted < len(self.slots) and self.slots[wanted].run is None:
            slot = self.slots[wanted]
        else:
            best = max(idle, key=lambda s: common_prefix(s.tokens, ids))
            similar = bool(ids) and common_prefix(best.tokens, ids) / len(ids) > 0.1
            slot = best if similar else min(idle, key=lambda s: s.last_used)
        if use_cache:  # at least the last prompt token is always evaluated again
            run.cache_n = max(0, min(common_prefix(slot.tokens, ids), len(ids) - 1))
        self._tasks += 1
        slot.id_task, slot.run, slot.settings = self._tasks, run, settings
        slot.tokens = list(ids)
        slot.n_prompt_processed = run.prompt_tokens - run.cache_n
        run.id_slot = slot.id
        return slot

    def release(self, slot: Slot | None, run: shapes.Run) -> None:
        """Keep the prompt and all generated tokens but the last in the slot's cache; count metrics."""
        timings = run.timings()
        self.metrics.prompt_tokens += timings["prompt_n"]
        self.metrics.prompt_seconds += timings["prompt_ms"] / 1000
        self.metrics.predicted_tokens += run.generated
        self.metrics.predicted_seconds += timings["predicted_ms"] / 1000
        self.metrics.decodes += 1 + run.generated
        self.metrics.n_tokens_max = max(self.metrics.n_tokens_max, run.prompt_tokens + run.generated)
        if slot is None:
            return
        slot.tokens = run.prompt_ids + [generated_id(i) for i in range(run.generated - 1)]
        slot.run = None
        slot.last_used = time.monotonic()


# ----------------------------------------------------------------------------- errors


class ApiError(tornado.web.HTTPError):
    """An HTTP error answered with a llama-server style JSON body."""

    def __init__(self, status: int, message: str, error_type: str, **extra: Any) -> None:
        super().__init__(status)
        self.body = {"error": {"code": status, "message": message, "type": error_type, **extra}}


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "invalid_request_error")


def server_error(message: str) -> ApiError:
    """llama-server answers 500 for what its JSON library throws (bad JSON, a missing key)."""
    return ApiError(500, message, "server_error")


def not_supported(message: str) -> ApiError:
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
    return server_error(f"[json.exception.type_error.302] type must be {expected}, but is {json_type(value)}")


def missing_key(key: str, status: int = 400) -> ApiError:
    message = f"[json.exception.out_of_range.403] key '{key}' not found"
    return bad_request(message) if status == 400 else server_error(message)


def is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


BAD_PROMPT = (
    '"prompt" elements must be a string, a list of tokens, a JSON object containing a prompt string, '
    "or a list of mixed strings & tokens."
)


def mixed_ids(items: Sequence[Any]) -> list[int]:
    """Ids kept as given, strings tokenized without BOS."""
    ids: list[int] = []
    for item in items:
        ids.extend([item] if is_token(item) else tokenize(item))
    return ids


def prompt_ids(value: Any) -> list[list[int]]:
    """The prompts of a ``prompt``/``input``/``content`` value, as token ids (llama-server's rule):
    a string (tokenized with BOS), a list of ids and/or strings (one prompt, kept as given, strings
    without BOS), or a list of those (several prompts)."""

    def single(item: Any) -> list[int]:
        if isinstance(item, str):
            return tokenize(item, add_special=True)
        if isinstance(item, list) and all(is_token(v) or isinstance(v, str) for v in item):
            return mixed_ids(item)
        raise server_error(BAD_PROMPT)

    if isinstance(value, list) and value and any(is_token(v) for v in value):
        return [single(value)]
    if isinstance(value, list) and value:
        return [single(item) for item in value]
    return [single(value)]


# ----------------------------------------------------------------------------- handlers


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


class NotFoundHandler(BaseHandler):
    async def prepare(self) -> None:
        await super().prepare()
        raise ApiError(404, "File Not Found", "not_found_error")


class DisabledHandler(BaseHandler):
    """``/tools`` and ``/cors-proxy``: features llama-server only has when started for them."""

    async def prepare(self) -> None:
        await super().prepare()
        self.set_status(403)
        self.send_json({"error": {"message": "this feature is disabled", "type": "feature_disabled"}})


class HealthHandler(BaseHandler):
    def get(self) -> None:
        if not self.engine.healthy_now():
            raise ApiError(503, "Loading model", "unavailable_error")
        self.send_json({"status": "ok"})


DEFAULT_PARAMS = {"seed": 4294967295, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "max_tokens": -1, "n_predict": -1}


class PropsHandler(BaseHandler):
    def get(self) -> None:
        options = self.engine.options
        template = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}<|assistant|>\n"
        self.send_json(
            {
                "default_generation_settings": {"params": DEFAULT_PARAMS, "n_ctx": self.engine.n_ctx},
                "total_slots": len(self.engine.slots),
                "model_alias": options.served_name,
                "model_path": options.model,
                "modalities": {"vision": False, "video": False, "audio": False},
                "endpoint_slots": True,
                "endpoint_props": False,
                "endpoint_metrics": options.metrics,
                "chat_template": template,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "build_info": "fake",
                "is_sleeping": False,
            }
        )

    def post(self) -> None:
        raise not_supported("This server does not support changing global properties. Start it with `--props`")


class SlotsHandler(BaseHandler):
    def get(self) -> None:
        self.send_json([self._slot(slot) for slot in self.engine.slots])

    def _slot(self, slot: Slot) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": slot.id,
            "n_ctx": self.engine.n_ctx,
            "speculative": False,
            "is_processing": slot.run is not None,
        }
        if slot.id_task is None:  # never used: llama-server shows only the above
            return entry
        run = slot.run
        entry.update(
            id_task=slot.id_task,
            n_prompt_tokens=len(slot.tokens),
            n_prompt_tokens_processed=slot.n_prompt_processed,
            n_prompt_tokens_cache=0,
            params=slot.settings,
            next_token=[
                {
                    "has_next_token": run is not None,
                    "has_new_line": False,
                    "n_remain": 0 if run is None else run.n_tokens - run.generated,
                    "n_decoded": 0 if run is None else run.generated,
                }
            ],
        )
        return entry


class SlotActionHandler(BaseHandler):
    """``POST /slots/ID?action=save|restore|erase`` (needs ``--slot-save-path``). A saved slot is a
    file laid out as llama-server's: ``ggsq`` magic, version 2, the token count and the token ids
    (little-endian), then its "KV data" (``--fake-slot-bytes-per-token`` bytes per token);
    restoring it fills the slot's prompt cache. A file of the wrong size or shape is refused."""

    def post(self, raw_id: str) -> None:
        options = self.engine.options
        save_dir = options.slot_save_path
        if not save_dir:
            raise not_supported("This server does not support slots action. Start it with `--slot-save-path`")
        try:
            slot = self.engine.slots[int(raw_id)]
        except (ValueError, IndexError):
            raise bad_request("Invalid slot ID") from None
        action = self.get_query_argument("action", "")
        if action == "erase":
            erased, slot.tokens = len(slot.tokens), []
            self.send_json({"id_slot": slot.id, "n_erased": erased})
            return
        if action not in ("save", "restore"):
            raise bad_request("Invalid action")
        filename = self.json_body().get("filename")
        if filename is None:
            raise missing_key("filename", 500)
        if not isinstance(filename, str) or not valid_filename(filename):
            raise bad_request("Invalid filename")
        path = Path(save_dir) / filename
        started = time.monotonic()
        if action == "save":
            data = slot_file_bytes(slot.tokens, options.fake_slot_bytes_per_token)
            try:
                if options.fake_slot_disk_full:  # half of it reaches the disk, as when the disk fills up
                    path.write_bytes(data[: len(data) // 2])
                    raise OSError(28, "No space left on device")
                path.write_bytes(data)
            except OSError as exc:
                raise ApiError(500, f"failed to write {path}: {exc.strerror or exc}", "server_error") from None
            ms = (time.monotonic() - started) * 1000
            self.engine.events.emit("slot_save", slot=slot.id, tokens=len(slot.tokens))
            answer = {"n_saved": len(slot.tokens), "n_written": len(data), "timings": {"save_ms": ms}}
        else:
            tokens, n_read = read_slot_file(path, options.fake_slot_bytes_per_token)
            if options.fake_slot_refuse_restore or tokens is None or len(tokens) > self.engine.n_ctx:
                slot.tokens = []  # a failed restore clears the slot, as llama-server's does
                raise bad_request("Unable to restore slot, no available space in KV cache or invalid slot save file")
            slot.tokens = tokens
            ms = (time.monotonic() - started) * 1000
            self.engine.events.emit("slot_restore", slot=slot.id, tokens=len(tokens))
            answer = {"n_restored": len(tokens), "n_read": n_read, "timings": {"restore_ms": ms}}
        self.send_json({"id_slot": slot.id, "filename": filename, **answer})


def valid_filename(name: str) -> bool:
    """A plain file name inside the save directory (no path, no dot names)."""
    return bool(name) and len(name) <= 255 and not any(c in name for c in "/\\\0") and name not in (".", "..")


_SLOT_MAGIC = 0x67677371  # "ggsq", llama.cpp's sequence state file
_SLOT_VERSION = 2


def slot_file_bytes(tokens: Sequence[int], bytes_per_token: int) -> bytes:
    head = struct.pack("<III", _SLOT_MAGIC, _SLOT_VERSION, len(tokens))
    return head + struct.pack(f"<{len(tokens)}i", *tokens) + bytes(bytes_per_token * len(tokens))


def read_slot_file(path: Path, bytes_per_token: int) -> tuple[list[int] | None, int]:
    try:
        data = path.read_bytes()
    except OSError:
        return None, 0
    if len(data) < 12:
        return None, 0
    magic, version, count = struct.unpack_from("<III", data)
    if magic != _SLOT_MAGIC or version != _SLOT_VERSION or len(data) != 12 + count * (4 + bytes_per_token):
        return None, 0
    return list(struct.unpack_from(f"<{count}i", data, 12)), len(data)


class ModelsHandler(BaseHandler):
    def get(self) -> None:
        options = self.engine.options
        name = options.served_name
        details = {
            "parent_model": "",
            "format": "gguf",
            "family": "",
            "families": [""],
            "parameter_size": "",
            "quantization_level": "",
        }
        listed = {
            "name": name,
            "model": name,
            "modified_at": "",
            "size": "",
            "digest": "",
            "type": "model",
            "description": "",
            "tags": [""],
            "capabilities": ["completion"],
            "parameters": "",
            "details": details,
        }
        meta = {
            "vocab_type": 1,
            "n_vocab": 32000 + 10,
            "n_ctx": self.engine.n_ctx,
            "n_ctx_train": N_CTX_TRAIN,
            "n_embd": options.fake_embedding_dim,
            "n_params": 0,
            "size": 0,
            "ftype": "fake",
        }
        model = {
            "id": name,
            "aliases": [name],
            "tags": [],
            "object": "model",
            "created": self.engine.created,
            "owned_by": "llamacpp",
            "meta": meta,
        }
        self.send_json({"models": [listed], "object": "list", "data": [model]})


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        if not self.engine.options.metrics:
            raise not_supported("This server does not support metrics endpoint. Start it with `--metrics`")
        m = self.engine.metrics
        busy = sum(slot.run is not None for slot in self.engine.slots)
        rows = [
            ("prompt_tokens_total", "counter", "Number of prompt tokens processed.", m.prompt_tokens),
            ("prompt_seconds_total", "counter", "Prompt process time", m.prompt_seconds),
            ("tokens_predicted_total", "counter", "Number of generation tokens processed.", m.predicted_tokens),
            ("tokens_predicted_seconds_total", "counter", "Predict process time", m.predicted_seconds),
            ("n_decode_total", "counter", "Total number of llama_decode() calls", m.decodes),
            ("n_tokens_max", "counter", "Largest observed n_tokens.", m.n_tokens_max),
            (
                "prompt_tokens_seconds",
                "gauge",
                "Average prompt throughput in tokens/s.",
                m.prompt_tokens / m.prompt_seconds if m.prompt_seconds else 0,
            ),
            (
                "predicted_tokens_seconds",
                "gauge",
                "Average generation throughput in tokens/s.",
                m.predicted_tokens / m.predicted_seconds if m.predicted_seconds else 0,
            ),
            ("requests_processing", "gauge", "Number of requests processing.", busy),
            ("requests_deferred", "gauge", "Number of requests deferred.", 0),
            ("n_busy_slots_per_decode", "gauge", "Average number of busy slots per llama_decode() call", 0),
        ]
        lines = []
        for name, kind, help_text, value in rows:
            lines += [
                f"# HELP llamacpp:{name} {help_text}",
                f"# TYPE llamacpp:{name} {kind}",
                f"llamacpp:{name} {value}",
            ]
        self.set_header("Content-Type", "text/plain; version=0.0.4")
        self.finish("\n".join(lines) + "\n")


class LoraAdaptersHandler(BaseHandler):
    def get(self) -> None:
        self.send_json([])

    def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError as exc:
            raise server_error(f"[json.exception.parse_error.101] parse error: {exc}") from None
        if not isinstance(body, list):
            raise bad_request("Request body must be an array")
        self.send_json([])


class AudioHandler(BaseHandler):
    def post(self) -> None:
        raise not_supported("The current model does not support audio input.")


# ----------------------------------------------------------------------------- counting


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


def check_messages(body: Mapping[str, Any], status: int = 400) -> None:
    """llama-server's checks of ``messages`` (400 for OpenAI routes, 500 for Anthropic ones)."""
    if "messages" not in body:
        raise bad_request("'messages' is required") if status == 400 else server_error("'messages' is required")
    if not isinstance(body["messages"], list):
        raise bad_request("Expected 'messages' to be an array")


def check_input(body: Mapping[str, Any]) -> None:
    if "input" not in body:
        raise bad_request("'input' is required")


def counted(count: Callable[[Mapping[str, Any]], Any], body: Mapping[str, Any]) -> Any:
    try:
        return count(body)
    except ValueError as exc:
        raise bad_request(str(exc)) from None


class TokenizeHandler(CountHandler):
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
    def post(self) -> None:
        body = self.json_body()
        check_messages(body)
        self.send_count({"prompt": counted(render_template, body)})


class InputTokensHandler(CountHandler):
    def post(self) -> None:
        body = self.json_body()
        check_messages(body)
        self.send_count({"input_tokens": counted(count_prompt_tokens, body), "object": "response.input_tokens"})


class MessagesCountHandler(CountHandler):
    def post(self) -> None:
        body = self.json_body()
        check_messages(body, status=500)
        self.send_count({"input_tokens": counted(count_messages_tokens, body)})


class ResponsesInputTokensHandler(CountHandler):
    def post(self) -> None:
        body = self.json_body()
        check_input(body)
        self.send_count({"input_tokens": counted(count_responses_tokens, body), "object": "response.input_tokens"})


# ----------------------------------------------------------------------------- generation


def requested_max_tokens(body: Mapping[str, Any], keys: Sequence[str]) -> int | None:
    """The first of ``keys`` present; None when absent or negative (llama-server's "unset")."""
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if not is_token(value):
            raise bad_request(f"'{key}' must be an integer")
        return value if value >= 0 else None
    return None


CHAT_LIMITS = ("max_completion_tokens", "max_tokens", "n_predict")
COMPLETION_LIMITS = ("max_tokens", "n_predict")
NATIVE_LIMITS = ("n_predict", "max_tokens")


def new_id(prefix: str = "chatcmpl-") -> str:
    return prefix + uuid.uuid4().hex


@dataclass
class Plan:
    """What one generation request will do: shared fields, one run per prompt, and its format."""

    request: shapes.Request
    runs: list[shapes.Run]
    format: shapes.Format
    settings: dict[str, Any]
    wanted_slot: int = -1
    use_cache: bool = True


class GenerationHandler(BaseHandler):
    """The shared life of a generation: events, context check, slots and the prompt cache, the
    delays, streaming through a ``Format``, cancellation, and the fault knobs."""

    hangs_with_requests = True
    limit_keys: Sequence[str] = CHAT_LIMITS

    def initialize(self, engine: Engine) -> None:
        super().initialize(engine)
        self._chunks = 0

    def plan(self, body: dict[str, Any]) -> Plan:
        raise NotImplementedError

    def make_request(self, body: Mapping[str, Any], request_id: str, message_id: str = "") -> shapes.Request:
        temperature = body.get("temperature", 0.8)
        return shapes.Request(
            id=request_id,
            model=self.engine.options.served_name,
            created=int(time.time()),
            stream=bool(body.get("stream")),
            include_usage=_include_usage(body),
            temperature=temperature if isinstance(temperature, int | float) else 0.8,
            message_id=message_id,
        )

    def make_run(self, index: int, ids: list[int], text: str, body: Mapping[str, Any]) -> shapes.Run:
        """Plan one prompt: ``max_tokens`` tokens (finish ``length``), else ``--fake-tokens``
        (``stop``), never more than the slot's context leaves."""
        room = max(0, self.engine.n_ctx - len(ids))
        limit = requested_max_tokens(body, self.limit_keys)
        if limit is None:
            n_tokens = min(self.engine.options.fake_tokens, room)
            finish = "stop" if n_tokens == self.engine.options.fake_tokens else "length"
        else:
            n_tokens, finish = min(limit, room), "length"
        return shapes.Run(index, ids, text, n_tokens, finish, limit)

    def chat_plan(self, body: dict[str, Any], chat_body: Mapping[str, Any], fmt: shapes.Format, **ids: str) -> Plan:
        """A plan for the chat-templated routes (chat, Messages, Responses): one prompt."""
        text = counted(render_template, chat_body)
        request = self.make_request(body, **ids)
        run = self.make_run(0, tokenize(text, add_special=True), text, body)
        return Plan(request, [run], fmt, shapes.generation_settings(request, run))

    async def post(self) -> None:
        if self.engine.rpc is not None:
            self.engine.rpc.check()  # a worker gone: abort, as llama-server does at its next generation
        body = self.json_body()
        plan = self.plan(body)
        request = plan.request
        self.engine.events.emit(
            "request",
            id=request.id,
            path=self.request.path,
            stream=request.stream,
            prompt_tokens=sum(run.prompt_tokens for run in plan.runs),
        )
        for run in plan.runs:
            if run.prompt_tokens > self.engine.n_ctx:
                raise exceed_context(run.prompt_tokens, self.engine.n_ctx)
        self.engine.active.add(request.id)
        try:
            if request.stream:
                await self._stream(plan)
            else:
                await self._complete(plan)
        finally:
            self.engine.active.discard(request.id)

    async def _generate(self, plan: Plan, run: shapes.Run) -> bool:
        """Process one prompt and generate its tokens (streaming them when asked); False when the
        client went away."""
        options = self.engine.options
        run.started = time.monotonic()
        slot = self.engine.acquire(run, plan.settings, plan.wanted_slot, plan.use_cache)
        try:
            if await self.wait_or_closed(options.fake_prompt_delay):
                return False
            run.prompt_done = time.monotonic()
            if plan.request.stream:
                if run.index == 0:
                    self.set_header("Content-Type", "text/event-stream")
                    self.set_header("Cache-Control", "no-cache")
                    self.set_header("X-Accel-Buffering", "no")
                if not await self._send(plan.format.begin(plan.request, run)):
                    return False
                if run.index == 0:
                    self._maybe_crash()
            for index in range(run.n_tokens):
                if await self.wait_or_closed(options.fake_token_delay):
                    return False
                if plan.request.stream:
                    if not await self._send(plan.format.token(plan.request, run, index)):
                        return False
                    run.generated = index + 1
                    self._chunks += 1
                    self._maybe_crash()
                    if not await self._maybe_stall(plan.request):
                        return False
                else:
                    run.generated = index + 1
            run.finished = time.monotonic()
            return True
        finally:
            if run.finished is None:
                run.finished = time.monotonic()
            self.engine.release(slot, run)

    def _cancelled(self, plan: Plan) -> None:
        tokens = sum(run.generated for run in plan.runs)
        self.engine.events.emit("cancelled", id=plan.request.id, tokens=tokens)
        log_tagged("srv  cancel_tasks: task cancelled")

    def _done(self, plan: Plan) -> None:
        """Written before the answer's last bytes, so a client that has the answer sees the event."""
        self.engine.events.emit("done", id=plan.request.id, tokens=sum(run.generated for run in plan.runs))

    async def _complete(self, plan: Plan) -> None:
        for run in plan.runs:
            if not await self._generate(plan, run):
                return self._cancelled(plan)
        self._done(plan)
        text = shapes.dumps(plan.format.body(plan.request, plan.runs))
        if self.engine.options.fake_truncate_body:
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.write(text[: len(text) // 2])
            await self._truncate()
            return
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(text)

    async def _stream(self, plan: Plan) -> None:
        fmt, request = plan.format, plan.request
        last = len(plan.runs) - 1
        for run in plan.runs:
            if run.index and not await self._send(fmt.between()):
                return self._cancelled(plan)
            if not await self._generate(plan, run):
                return self._cancelled(plan)
            if run.index == last:
                self._done(plan)  # every token is out; the client may still hang up below
            if not await self._send(fmt.end(request, run)) and run.index != last:
                return self._cancelled(plan)
        if not await self._send(fmt.close(request)):
            return
        if self.engine.options.fake_truncate_body:
            await self._truncate()
            return
        self.finish()

    async def _truncate(self) -> None:
        """``--fake-truncate-body``: flush what was written, then close the connection before the
        chunked body's terminating chunk."""
        with contextlib.suppress(tornado.iostream.StreamClosedError):
            await self.flush()
        self.engine.events.emit("truncated", path=self.request.path)
        self.detach().close()

    async def _send(self, events: Sequence[shapes.Sse]) -> bool:
        """Write and flush server-sent events; return False if the client went away."""
        if self._closed.is_set():
            return False
        for event in events:
            self.write(event.encode())
        try:
            await self.flush()
        except tornado.iostream.StreamClosedError:
            return False
        return True

    def _maybe_crash(self) -> None:
        if self._chunks == self.engine.options.fake_exit_after_chunks:
            crash(f"fake crash after {self._chunks} content chunks")

    async def _maybe_stall(self, request: shapes.Request) -> bool:
        """``--fake-stall-after-chunks``: go quiet (connection open) for ``--fake-stall-seconds``;
        False when the client went away meanwhile."""
        if self._chunks != self.engine.options.fake_stall_after_chunks:
            return True
        self.engine.events.emit("stalled", id=request.id, chunks=self._chunks)
        return not await self.wait_or_closed(self.engine.options.fake_stall_seconds)


def _include_usage(body: Mapping[str, Any]) -> bool:
    stream_options = body.get("stream_options")
    return isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))


class ChatCompletionsHandler(GenerationHandler):
    def plan(self, body: dict[str, Any]) -> Plan:
        check_messages(body)
        return self.chat_plan(body, body, shapes.ChatFormat(), request_id=new_id())


class CompletionsHandler(GenerationHandler):
    """OpenAI ``/v1/completions``: ``prompt`` as a string, ids, or a list of prompts."""

    limit_keys = COMPLETION_LIMITS

    def make_format(self) -> shapes.Format:
        return shapes.CompletionsFormat()

    def plan(self, body: dict[str, Any]) -> Plan:
        if "prompt" not in body:
            raise missing_key("prompt")
        return self.prompts_plan(body, prompt_ids(body["prompt"]))

    def prompts_plan(self, body: dict[str, Any], prompts: list[list[int]]) -> Plan:
        request = self.make_request(body, new_id())
        runs = [self.make_run(i, ids, detokenize(ids), body) for i, ids in enumerate(prompts)]
        id_slot = body.get("id_slot", -1)
        return Plan(
            request,
            runs,
            self.make_format(),
            shapes.generation_settings(request, runs[0]),
            wanted_slot=id_slot if is_token(id_slot) else -1,
            use_cache=bool(body.get("cache_prompt", True)),
        )


class NativeCompletionHandler(CompletionsHandler):
    """llama.cpp's ``/completion`` (also ``/completions``): ``prompt`` is required (no ``content``)."""

    limit_keys = NATIVE_LIMITS

    def make_format(self) -> shapes.Format:
        return shapes.NativeFormat(generated_id)


class InfillHandler(NativeCompletionHandler):
    """``/infill``: 501 as for a model without FIM tokens, unless ``--fake-infill``."""

    def plan(self, body: dict[str, Any]) -> Plan:
        if not self.engine.options.fake_infill:
            raise not_supported(
                "Infill is not supported by this model: prefix token is missing. suffix token is missing. "
                "middle token is missing. "
            )
        chunks = []
        extra = body.get("input_extra", [])
        for item in extra if isinstance(extra, list) else []:
            if isinstance(item, Mapping):
                chunks.append(f"{FILE_SEP} {item.get('filename', '')} {item.get('text', '')}")
        prefix, suffix, prompt = (str(body.get(key, "")) for key in ("input_prefix", "input_suffix", "prompt"))
        chunks.append(f"{FIM_PREFIX} {prefix} {FIM_SUFFIX} {suffix} {FIM_MIDDLE} {prompt}")
        return self.prompts_plan(body, [tokenize(" ".join(chunks), add_special=True)])


class MessagesHandler(GenerationHandler):
    """Anthropic ``/v1/messages``: templated like chat after ``messages_to_chat``."""

    limit_keys = ("max_tokens",)

    def plan(self, body: dict[str, Any]) -> Plan:
        check_messages(body, status=500)
        chat_body = counted(messages_to_chat, body)
        return self.chat_plan(body, chat_body, shapes.MessagesFormat(), request_id=new_id())


class ResponsesHandler(GenerationHandler):
    """OpenAI ``/v1/responses``: templated like chat after ``responses_to_chat``."""

    limit_keys = ("max_output_tokens", "max_tokens")

    def plan(self, body: dict[str, Any]) -> Plan:
        check_input(body)
        chat_body = counted(responses_to_chat, body)
        ids = {"request_id": new_id("resp_"), "message_id": new_id("msg_")}
        return self.chat_plan(body, chat_body, shapes.ResponsesFormat(), **ids)


# ----------------------------------------------------------------------------- embeddings, rerank


def embed(ids: Sequence[int], dim: int, normalize: int) -> list[float]:
    """A deterministic vector: the mean over tokens of per-token crc32 noise in [-1, 1], then
    normalized as ``embd_normalize`` asks (-1 none, 0 max-abs to int16 range, p > 0 the p-norm)."""
    sums = [0.0] * dim
    for token in ids:
        for j in range(dim):
            sums[j] += zlib.crc32(f"{token}:{j}".encode()) / 0x7FFFFFFF - 1.0
    vector = [s / max(1, len(ids)) for s in sums]
    if normalize < 0:
        return vector
    if normalize == 0:
        peak = max((abs(v) for v in vector), default=0.0)
        return [v * 32760 / peak if peak else 0.0 for v in vector]
    norm = sum(abs(v) ** normalize for v in vector) ** (1 / normalize)
    return [v / norm if norm else 0.0 for v in vector]


class PoolingHandler(BaseHandler):
    """Embeddings and rerank: the events, the prompt delay and the physical batch limit."""

    hangs_with_requests = True

    def check_batch(self, prompts: Sequence[Sequence[int]]) -> None:
        batch = self.engine.options.physical_batch
        for ids in prompts:
            if len(ids) > batch:
                raise server_error(
                    f"input ({len(ids)} tokens) is too large to process. "
                    f"increase the physical batch size (current batch size: {batch})"
                )

    def model_name(self, body: Mapping[str, Any]) -> str:
        """These routes echo the request's ``model``, unlike generation."""
        model = body.get("model")
        return model if isinstance(model, str) else self.engine.options.served_name

    async def pooled(self, prompts: Sequence[Sequence[int]], answer: Callable[[], Any]) -> None:
        request_id = new_id("embd-")
        total = sum(len(ids) for ids in prompts)
        self.engine.events.emit("request", id=request_id, path=self.request.path, stream=False, prompt_tokens=total)
        self.check_batch(prompts)
        if await self.wait_or_closed(self.engine.options.fake_prompt_delay):
            self.engine.events.emit("cancelled", id=request_id, tokens=0)
            return
        data = answer()
        self.engine.events.emit("done", id=request_id, tokens=0)
        self.send_json(data)


class EmbeddingsHandler(PoolingHandler):
    """``/v1/embeddings`` (OpenAI shape for ``input``), ``/embeddings`` and ``/embedding`` (native)."""

    def initialize(self, engine: Engine, oai: bool = False) -> None:
        super().initialize(engine)
        self.oai = oai

    async def post(self) -> None:
        if not self.engine.options.embeddings:
            raise not_supported("This server does not support embeddings. Start it with `--embeddings`")
        body = self.json_body()
        oai = self.oai and "input" in body
        key = "input" if oai or "content" not in body else "content"
        if key not in body:
            raise bad_request('"input" or "content" must be provided')
        prompts = prompt_ids(body[key])
        dim = max(1, self.engine.options.fake_embedding_dim)
        normalize = body.get("embd_normalize", 2)
        normalize = normalize if is_token(normalize) else 2

        def answer() -> Any:
            vectors = [embed(ids, dim, normalize) for ids in prompts]
            if not oai:
                return shapes.embeddings_native(vectors)
            encoded = None
            if body.get("encoding_format") == "base64":
                encoded = [base64.b64encode(struct.pack(f"<{dim}f", *v)).decode() for v in vectors]
            n_tokens = sum(len(ids) for ids in prompts)
            return shapes.embeddings_oai(self.model_name(body), vectors, n_tokens, encoded)

        await self.pooled(prompts, answer)


class RerankHandler(PoolingHandler):
    """``/rerank`` and friends: score = share of the query's distinct pieces found in the document."""

    async def post(self) -> None:
        if not self.engine.options.reranking:
            raise not_supported("This server does not support reranking. Start it with `--reranking`")
        body = self.json_body()
        query = body.get("query")
        if not isinstance(query, str):
            raise bad_request('"query" must be provided')
        tei = "texts" in body
        documents = body.get("texts" if tei else "documents")
        if not isinstance(documents, list) or not documents or not all(isinstance(d, str) for d in documents):
            raise bad_request('"documents" must be a non-empty string array')
        asked = body.get("top_n")
        top_n = asked if isinstance(asked, int) and not isinstance(asked, bool) else len(documents)
        prompts = [tokenize(f"{query} {doc}", add_special=True) for doc in documents]
        wanted = set(query.split())

        def answer() -> Any:
            scores = [len(wanted & set(doc.split())) / len(wanted) if wanted else 0.0 for doc in documents]
            texts = documents if tei and body.get("return_text") else None
            n_tokens = sum(len(ids) for ids in prompts)
            return shapes.rerank_answer(self.model_name(body), scores, n_tokens, top_n, tei, texts)

        await self.pooled(prompts, answer)


# ----------------------------------------------------------------------------- process


def crash(reason: str) -> NoReturn:
    log(f"error: {reason}")
    sys.stdout.flush()
    os._exit(3)


def log_request(handler: tornado.web.RequestHandler) -> None:
    request = handler.request
    status = handler.get_status()
    log_tagged(f"srv  log_server_r: request: {request.method} {request.uri} {request.remote_ip} {status}")


def make_app(engine: Engine) -> tornado.web.Application:
    args: dict[str, Any] = {"engine": engine}
    routes: list[tuple[str, type[BaseHandler], dict[str, Any]]] = [
        ("/health", HealthHandler, args),
        ("/v1/health", HealthHandler, args),
        ("/props", PropsHandler, args),
        ("/slots", SlotsHandler, args),
        ("/slots/([^/]*)", SlotActionHandler, args),
        ("/models", ModelsHandler, args),
        ("/v1/models", ModelsHandler, args),
        ("/metrics", MetricsHandler, args),
        ("/lora-adapters", LoraAdaptersHandler, args),
        ("/tools", DisabledHandler, args),
        ("/cors-proxy", DisabledHandler, args),
        ("/v1/audio/transcriptions", AudioHandler, args),
        ("/tokenize", TokenizeHandler, args),
        ("/detokenize", DetokenizeHandler, args),
        ("/apply-template", ApplyTemplateHandler, args),
        ("/chat/completions/input_tokens", InputTokensHandler, args),
        ("/v1/chat/completions/input_tokens", InputTokensHandler, args),
        ("/v1/messages/count_tokens", MessagesCountHandler, args),
        ("/v1/responses/input_tokens", ResponsesInputTokensHandler, args),
        ("/chat/completions", ChatCompletionsHandler, args),
        ("/v1/chat/completions", ChatCompletionsHandler, args),
        ("/v1/completions", CompletionsHandler, args),
        ("/completion", NativeCompletionHandler, args),
        ("/completions", NativeCompletionHandler, args),
        ("/infill", InfillHandler, args),
        ("/v1/messages", MessagesHandler, args),
        ("/v1/responses", ResponsesHandler, args),
        ("/v1/embeddings", EmbeddingsHandler, {**args, "oai": True}),
        ("/embeddings", EmbeddingsHandler, args),
        ("/embedding", EmbeddingsHandler, args),
        ("/rerank", RerankHandler, args),
        ("/v1/rerank", RerankHandler, args),
        ("/reranking", RerankHandler, args),
        ("/v1/reranking", RerankHandler, args),
    ]
    return tornado.web.Application(
        routes,
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
    if options.rpc:
        links = fake_rpc.connect(options.rpc, options.device)
        if isinstance(links, str):
            log(links)
            return 1
        engine.rpc = links
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
    args = sys.argv[1:] if argv is None else list(argv)
    if "--version" in args:  # as llama-server: the build on stderr, then exit
        build = parse_args([a for a in args if a != "--version"]).fake_build
        log(f"version: 1 ({build})")
        log("built with fake_llama_server.py")
        return 0
    try:
        options = parse_args(args)
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
