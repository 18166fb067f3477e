"""Loading progress inside a response stream, in each dialect's own shape.

A streaming request that waits for an engine gets its answer's headers at once and progress
until the engine is ready (``loading_feedback``):

* ``comments``: SSE comment lines (``: llmgw ...``), which every client ignores; they keep
  connections and proxies alive. Any streaming route.
* ``reasoning``: text a chat UI shows in its thinking box: OpenAI chat ``reasoning_content``
  deltas; an Anthropic ``thinking`` content block; Responses reasoning events. Routes without
  a reasoning shape (completions, llama.cpp's native routes) get comments.

Each :class:`ProgressStream` writes its opening events, the progress text, the events that close
its block before the engine's own answer follows, and the dialect's error event when the wait
ends in an error. :meth:`ProgressStream.splice` fixes what must change in the engine's stream
once a block of ours came first (a second ``message_start`` or ``response.created`` would
confuse clients; Anthropic content block indexes move up by one).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from llmgw.api.endpoints import CHAT, MESSAGES, RESPONSES, Endpoint
from llmgw.api.errors import engine_error_event, stream_error_event
from llmgw.errors import GatewayError

REASONING, NONE = "reasoning", "none"  # loading_feedback modes; the default, "comments", needs no name here
LOADING = "loading"  # an engine whose process runs but does not answer yet


@dataclass(frozen=True)
class Progress:
    """Where one waiting request stands."""

    phase: str  # queued, draining, stopping, starting, loading (Phase values plus LOADING)
    position: int  # 1-based place in the queue
    queued: int  # requests in the queue
    model: str
    variant: int  # the variant it waits for (1-based index)
    context: int
    waited: float  # seconds since the request began to wait
    load_elapsed: float | None  # seconds since its engine began to start
    expected: float | None  # that variant's last load time
    percent: int | None  # estimated load progress (None: never measured, or not loading yet)

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "position": self.position,
            "queued": self.queued,
            "model": self.model,
            "variant": self.variant,
            "context": self.context,
            "waited": round(self.waited, 1),
            "load_elapsed": None if self.load_elapsed is None else round(self.load_elapsed, 1),
            "expected": None if self.expected is None else round(self.expected, 1),
            "percent": self.percent,
        }


_WAITING = {
    "queued": "queued",
    "draining": "waiting for the requests on the engines in its way to finish",
    "stopping": "waiting for the engines in its way to stop",
}
LOAD_PHASES = ("starting", LOADING)  # the engine is on its way: one line, with a percentage


def headline(progress: Progress) -> str:
    """One line saying where a waiting request stands."""
    what = f"model {progress.model!r} (variant {progress.variant}, context {progress.context})"
    about = f"about {progress.expected:.0f} s" if progress.expected is not None else ""
    if progress.phase in LOAD_PHASES:
        return f"Loading {what}{', ' + about if about else ''}:" + tick(progress)
    phase = _WAITING.get(progress.phase, progress.phase)
    line = f"Waiting for {what}: {phase}, position {progress.position} of {progress.queued}"
    return line + (f"; loading takes {about}" if about else "")


def tick(progress: Progress) -> str:
    """The short mark appended while the phase stays the same: a percentage, else seconds."""
    if progress.percent is not None:
        return f" {progress.percent}%"
    if progress.load_elapsed is not None:
        return f" {progress.load_elapsed:.0f} s"
    return "."


class Rewriter(Protocol):
    """What the relay calls on an engine's answer (llmgw.api.ModelRewriter and splices)."""

    def body(self, data: bytes) -> bytes: ...

    def chunk(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class Translator(Rewriter, Protocol):
    """A Rewriter that turns the engine's answer into another API's (the Ollama routes), and names
    the answer's content type. ``body`` may raise a GatewayError: a whole answer it cannot
    translate (or an error inside it), answered with that error's status."""

    @property
    def content_type(self) -> str: ...


class ProgressStream:
    """Comment lines; the base of the reasoning shapes (which override what differs)."""

    reasoning = False
    content_type = "text/event-stream"  # of the answer it opens

    def __init__(self, endpoint: Endpoint, model: str) -> None:
        self.endpoint = endpoint
        self.model = model
        self.closed = False

    def open(self) -> bytes:
        return b""

    def text(self, text: str) -> bytes:
        return b"".join(b": llmgw " + line.encode() + b"\n" for line in text.splitlines() if line) + b"\n"

    def close(self) -> bytes:
        """Before the engine's own events: whatever ends our block."""
        self.closed = True
        return b""

    def error(self, error: GatewayError) -> bytes:
        return self.close() + stream_error_event(self.endpoint, error)

    def engine_error(self, status: int, body: bytes) -> bytes:
        """The engine refused the request after our headers went out: its error as a stream event."""
        return self.close() + engine_error_event(self.endpoint, status, body)

    def splice(self, rewriter: Rewriter, seen: Callable[[bytes], None]) -> Rewriter:
        """The engine's stream as it must follow ours; ``seen`` gets events that are dropped."""
        return rewriter


class ChatReasoning(ProgressStream):
    """OpenAI chat: ``delta.reasoning_content`` (llama-server's own field for thinking models)."""

    reasoning = True

    def open(self) -> bytes:
        self._id = "chatcmpl-llmgw-" + uuid.uuid4().hex[:24]
        self._created = int(time.time())
        self._sent = False
        return b""

    def text(self, text: str) -> bytes:
        delta: dict[str, Any] = {"reasoning_content": text}
        if not self._sent:
            delta = {"role": "assistant", **delta}
            self._sent = True
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        return _data(chunk)


class MessagesThinking(ProgressStream):
    """Anthropic: a ``thinking`` block at index 0, before the engine's blocks (moved to 1, 2...)."""

    reasoning = True

    def open(self) -> bytes:
        message: dict[str, Any] = {
            "id": "msg_llmgw_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        block = {"type": "thinking", "thinking": "", "signature": ""}
        return _event("message_start", {"type": "message_start", "message": message}) + _event(
            "content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}
        )

    def text(self, text: str) -> bytes:
        delta = {"type": "thinking_delta", "thinking": text}
        return _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})

    def close(self) -> bytes:
        if self.closed:
            return b""
        self.closed = True
        return _event("content_block_stop", {"type": "content_block_stop", "index": 0})

    def splice(self, rewriter: Rewriter, seen: Callable[[bytes], None]) -> Rewriter:
        return _Splice(rewriter, seen, drop=(b"message_start",), shift_index=True)


class ResponsesReasoning(ProgressStream):
    """OpenAI Responses: a reasoning output item with ``response.reasoning_text.delta`` events."""

    reasoning = True

    def open(self) -> bytes:
        self._item = "rs_llmgw_" + uuid.uuid4().hex[:24]
        self._text: list[str] = []
        response = {
            "id": "resp_llmgw_" + uuid.uuid4().hex[:24],
            "object": "response",
            "status": "in_progress",
            "model": self.model,
            "output": [],
        }
        item = {"id": self._item, "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
        return (
            _event("response.created", {"type": "response.created", "response": response})
            + _event("response.in_progress", {"type": "response.in_progress", "response": response})
            + _event(
                "response.output_item.added", {"type": "response.output_item.added", "output_index": 0, "item": item}
            )
        )

    def text(self, text: str) -> bytes:
        self._text.append(text)
        delta = {
            "type": "response.reasoning_text.delta",
            "item_id": self._item,
            "output_index": 0,
            "content_index": 0,
            "delta": text,
        }
        return _event("response.reasoning_text.delta", delta)

    def close(self) -> bytes:
        if self.closed:
            return b""
        self.closed = True
        text = "".join(self._text)
        done = {
            "type": "response.reasoning_text.done",
            "item_id": self._item,
            "output_index": 0,
            "content_index": 0,
            "text": text,
        }
        item = {
            "id": self._item,
            "type": "reasoning",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": text}],
            "status": "completed",
        }
        return _event("response.reasoning_text.done", done) + _event(
            "response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": item}
        )

    def splice(self, rewriter: Rewriter, seen: Callable[[bytes], None]) -> Rewriter:
        return _Splice(rewriter, seen, drop=(b"response.created", b"response.in_progress"))


def progress_stream(endpoint: Endpoint, mode: str, model: str) -> ProgressStream | None:
    """The writer for ``mode`` on ``endpoint``; None for "none"."""
    if mode == NONE:
        return None
    if mode == REASONING:
        if endpoint is CHAT:
            return ChatReasoning(endpoint, model)
        if endpoint is MESSAGES:
            return MessagesThinking(endpoint, model)
        if endpoint is RESPONSES:
            return ResponsesReasoning(endpoint, model)
    return ProgressStream(endpoint, model)


class _Splice:
    """Whole SSE events from ``rewriter``, less the ``drop`` kinds, with Anthropic indexes moved."""

    _INDEX = re.compile(rb'("index"\s*:\s*)(\d+)')

    def __init__(
        self, rewriter: Rewriter, seen: Callable[[bytes], None], drop: tuple[bytes, ...], shift_index: bool = False
    ) -> None:
        self._rewriter = rewriter
        self._seen = seen
        self._drop = tuple(b"event: " + kind + b"\n" for kind in drop)
        self._shift = shift_index
        self._pending = b""  # an event not ended yet (it waits whole)

    def body(self, data: bytes) -> bytes:
        return self._rewriter.body(data)

    def chunk(self, data: bytes) -> bytes:
        return self._fix(self._rewriter.chunk(data))

    def flush(self) -> bytes:
        return self._fix(self._rewriter.flush(), last=True)

    def _fix(self, data: bytes, last: bool = False) -> bytes:
        data = self._pending + data.replace(b"\r\n", b"\n")
        if not data:
            return data
        *events, self._pending = data.split(b"\n\n")
        if last and self._pending:
            events, self._pending = [*events, self._pending], b""
        kept = []
        for event in events:
            if not event:
                continue
            if event.startswith(self._drop):
                self._seen(event)
                continue
            if self._shift and b'"index"' in event:
                event = self._INDEX.sub(lambda m: m.group(1) + str(int(m.group(2)) + 1).encode(), event, count=1)
            kept.append(event + b"\n\n")
        return b"".join(kept)


def _compact(body: bytes) -> bytes:
    try:
        return json.dumps(json.loads(body), separators=(",", ":")).encode()
    except ValueError:
        return body.replace(b"\n", b" ")


def _data(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _event(kind: str, payload: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
