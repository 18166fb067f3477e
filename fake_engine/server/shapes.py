"""The JSON and SSE shapes of llama-server's answers, for the fake engine (stdlib only).

Each generation API has a ``Format``: what it sends after the prompt is processed (``begin``),
per generated token (``token``), when a prompt is done (``end``), between two prompts of one
request (``between``), after the last one (``close``), and the whole answer when not streaming
(``body``). The shapes copy those of llama-server 0.10068 (build b1-571d0d5) field by field, as
captured from the real server; the README lists what was checked. The generated text is the
fake's ``"tok0 tok1 ..."``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

SYSTEM_FINGERPRINT = "fake"
DONE = "[DONE]"


def token_piece(index: int) -> str:
    """The text of the ``index``-th generated token."""
    return f"tok{index}" if index == 0 else f" tok{index}"


def dumps(data: Any) -> str:
    """Compact JSON, as llama-server writes it."""
    return json.dumps(data, separators=(",", ":"))


@dataclass(frozen=True)
class Sse:
    """One server-sent event: an optional ``event:`` name and the ``data:`` payload (already text)."""

    data: str
    event: str | None = None

    def encode(self) -> bytes:
        head = f"event: {self.event}\n" if self.event else ""
        return f"{head}data: {self.data}\n\n".encode()


def sse(data: Any, event: str | None = None) -> Sse:
    return Sse(data if isinstance(data, str) else dumps(data), event)


@dataclass(frozen=True)
class Request:
    """What every answer of one request shares."""

    id: str
    model: str
    created: int
    stream: bool
    include_usage: bool = False
    temperature: float = 0.8
    message_id: str = ""  # Responses: the id of the output message


@dataclass
class Run:
    """One prompt of a request: its tokens, what the prompt cache held, what was generated, when."""

    index: int
    prompt_ids: list[int]
    prompt_text: str
    n_tokens: int  # tokens it will generate
    finish_reason: str  # "stop" or "length"
    requested: int | None  # max_tokens / n_predict as asked (None: unset)
    cache_n: int = 0
    id_slot: int = -1
    generated: int = 0
    started: float = field(default_factory=time.monotonic)
    prompt_done: float | None = None
    finished: float | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def text(self) -> str:
        return "".join(token_piece(i) for i in range(self.generated))

    def timings(self) -> dict[str, Any]:
        """``timings`` as llama-server reports them, from the fake's own wall clock."""
        now = time.monotonic()
        prompt_done = self.prompt_done if self.prompt_done is not None else now
        finished = self.finished if self.finished is not None else now
        prompt_n = self.prompt_tokens - self.cache_n
        prompt_ms = max((prompt_done - self.started) * 1000, 0.001)
        predicted_ms = max((finished - prompt_done) * 1000, 0.001)
        n = self.generated
        return {
            "cache_n": self.cache_n,
            "prompt_n": prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
            "prompt_per_second": 1000 * prompt_n / prompt_ms,
            "predicted_n": n,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / n if n else 0.0,
            "predicted_per_second": 1000 * n / predicted_ms,
        }

    def usage(self) -> dict[str, Any]:
        """OpenAI ``usage`` with llama-server's ``prompt_tokens_details``."""
        return {
            "completion_tokens": self.generated,
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + self.generated,
            "prompt_tokens_details": {"cached_tokens": self.cache_n},
        }


class Format:
    """How one API shapes a generation; the defaults send nothing."""

    def begin(self, req: Request, run: Run) -> list[Sse]:
        return []

    def token(self, req: Request, run: Run, index: int) -> list[Sse]:
        raise NotImplementedError

    def end(self, req: Request, run: Run) -> list[Sse]:
        return []

    def between(self) -> list[Sse]:
        """Between two prompts of one streamed request llama-server writes ``data: null``."""
        return [sse("null")]

    def close(self, req: Request) -> list[Sse]:
        return []

    def body(self, req: Request, runs: Sequence[Run]) -> Any:
        raise NotImplementedError


# ----------------------------------------------------------------------------- OpenAI chat


class ChatFormat(Format):
    """``/v1/chat/completions``: role chunk, content chunks, finish chunk (with ``timings`` unless
    ``include_usage``, which moves them to a last chunk with ``usage``), ``[DONE]``."""

    @staticmethod
    def _chunk(req: Request, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "choices": choices,
            "created": req.created,
            "id": req.id,
            "model": req.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "object": "chat.completion.chunk",
        }

    def begin(self, req: Request, run: Run) -> list[Sse]:
        delta = {"role": "assistant", "content": None}
        return [sse(self._chunk(req, [{"finish_reason": None, "index": 0, "delta": delta}]))]

    def token(self, req: Request, run: Run, index: int) -> list[Sse]:
        delta = {"content": token_piece(index)}
        return [sse(self._chunk(req, [{"finish_reason": None, "index": 0, "delta": delta}]))]

    def end(self, req: Request, run: Run) -> list[Sse]:
        finish = self._chunk(req, [{"finish_reason": run.finish_reason, "index": 0, "delta": {}}])
        if not req.include_usage:
            return [sse({**finish, "timings": run.timings()})]
        usage = {**self._chunk(req, []), "usage": run.usage(), "timings": run.timings()}
        return [sse(finish), sse(usage)]

    def close(self, req: Request) -> list[Sse]:
        return [sse(DONE)]

    def body(self, req: Request, runs: Sequence[Run]) -> Any:
        [run] = runs
        message = {"role": "assistant", "content": run.text()}
        return {
            "choices": [{"finish_reason": run.finish_reason, "index": 0, "message": message}],
            "created": req.created,
            "model": req.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "object": "chat.completion",
            "usage": run.usage(),
            "id": req.id,
            "timings": run.timings(),
        }


# ----------------------------------------------------------------------------- OpenAI completions


class CompletionsFormat(Format):
    """``/v1/completions``: one chunk per token, a last chunk per prompt with ``usage`` and
    ``timings`` (always), ``data: null`` between prompts, ``[DONE]``. Not streamed, one object
    with a choice per prompt whose ``usage``/``timings`` are those of the first prompt, as
    llama-server reports them."""

    @staticmethod
    def _object(req: Request, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "choices": choices,
            "created": req.created,
            "model": req.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "object": "text_completion",
        }

    def token(self, req: Request, run: Run, index: int) -> list[Sse]:
        choice = {"text": token_piece(index), "index": run.index, "logprobs": None, "finish_reason": None}
        return [sse({**self._object(req, [choice]), "id": req.id})]

    def end(self, req: Request, run: Run) -> list[Sse]:
        choice = {"text": "", "index": run.index, "logprobs": None, "finish_reason": run.finish_reason}
        last = {**self._object(req, [choice]), "usage": run.usage(), "id": req.id, "timings": run.timings()}
        return [sse(last)]

    def close(self, req: Request) -> list[Sse]:
        return [sse(DONE)]

    def body(self, req: Request, runs: Sequence[Run]) -> Any:
        choices = [
            {"text": run.text(), "index": run.index, "logprobs": None, "finish_reason": run.finish_reason}
            for run in runs
        ]
        first = runs[0]
        return {**self._object(req, choices), "usage": first.usage(), "id": req.id, "timings": first.timings()}


# ----------------------------------------------------------------------------- llama.cpp native


def generation_settings(req: Request, run: Run) -> dict[str, Any]:
    """A short ``generation_settings`` (the real one has ~50 sampler fields)."""
    limit = -1 if run.requested is None else run.requested
    return {
        "seed": 4294967295,
        "temperature": req.temperature,
        "top_k": 40,
        "top_p": 0.95,
        "min_p": 0.05,
        "stop": [],
        "max_tokens": limit,
        "n_predict": limit,
        "n_keep": 0,
        "ignore_eos": False,
        "stream": req.stream,
        "samplers": ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"],
    }


class NativeFormat(Format):
    """``/completion`` and ``/infill``: one event per token (``content``, its ``tokens``,
    ``stop: false``), then the full result with ``stop: true`` and ``timings``; no ``[DONE]``.
    Not streamed, the result object (a list of them for several prompts)."""

    def __init__(self, token_id: Callable[[int], int]) -> None:
        self._token_id = token_id

    def token(self, req: Request, run: Run, index: int) -> list[Sse]:
        partial = {
            "index": run.index,
            "content": token_piece(index),
            "tokens": [self._token_id(index)],
            "stop": False,
            "id_slot": -1,
            "tokens_predicted": index + 1,
            "tokens_evaluated": run.prompt_tokens,
        }
        return [sse(partial)]

    def result(self, req: Request, run: Run, content: str) -> dict[str, Any]:
        return {
            "index": run.index,
            "content": content,
            "tokens": [],
            "id_slot": max(run.id_slot, 0),
            "stop": True,
            "model": req.model,
            "tokens_predicted": run.generated,
            "tokens_evaluated": run.prompt_tokens,
            "generation_settings": generation_settings(req, run),
            "prompt": run.prompt_text,
            "has_new_line": False,
            "truncated": False,
            "stop_type": "limit" if run.finish_reason == "length" else "eos",
            "stopping_word": "",
            "tokens_cached": run.prompt_tokens + max(run.generated - 1, 0),
            "timings": run.timings(),
        }

    def end(self, req: Request, run: Run) -> list[Sse]:
        return [sse(self.result(req, run, ""))]

    def body(self, req: Request, runs: Sequence[Run]) -> Any:
        results = [self.result(req, run, run.text()) for run in runs]
        return results[0] if len(results) == 1 else results


# ----------------------------------------------------------------------------- Anthropic Messages


STOP_REASONS = {"length": "max_tokens", "stop": "end_turn"}


def anthropic_usage(run: Run) -> dict[str, int]:
    """``input_tokens`` are the prompt tokens not read from the cache, as llama-server counts them."""
    return {
        "cache_read_input_tokens": run.cache_n,
        "input_tokens": run.prompt_tokens - run.cache_n,
        "output_tokens": run.generated,
    }


class MessagesFormat(Format):
    """``/v1/messages``: ``message_start``, ``content_block_start``, a ``content_block_delta`` per
    token, ``content_block_stop``, ``message_delta``, ``message_stop``, each with its ``event:``."""

    def begin(self, req: Request, run: Run) -> list[Sse]:
        message: dict[str, Any] = {
            "id": req.id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": req.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**anthropic_usage(run), "output_tokens": 0},
        }
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        return [
            sse({"type": "message_start", "message": message}, "message_start"),
            sse(block, "content_block_start"),
        ]

    def token(self, req: Request, run: Run, index: int) -> list[Sse]:
        delta = {"type": "text_delta", "text": token_piece(index)}
        return [sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta")]

    def end(self, req: Request, run: Run) -> list[Sse]:
        delta = {"stop_reason": STOP_REASONS[run.finish_reason], "stop_sequence": None}
        return [
            sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            sse({"type": "message_delta", "delta": delta, "usage": {"output_tokens": run.generated}}, "message_delta"),
            sse({"type": "message_stop"}, "message_stop"),
        ]

    def body(self, req: Request, runs: Sequence[Run]) -> Any:
        [run] = runs
        return {
            "id": req.id,
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": run.text()}],
            "model": req.model,
            "stop_reason": STOP_REASONS[run.finish_reason],
            "stop_sequence": None,
            "usage": anthropic_usage(run),
        }


# ----------------------------------------------------------------------------- OpenAI Responses


def responses_usage(run: Run) -> dict[str, Any]:
    return {
        "input_tokens": run.prompt_tokens,
        "output_tokens": run.generated,
        "total_tokens": run.prompt_tokens + run.generated,
        "input_tokens_details": {"cached_tokens": run.cache_n},
    }


class ResponsesFormat(Format):
    """``/v1/responses``: ``response.created``, ``response.in_progress``, ``output_item.added``,
    ``content_part.added``, an ``output_text.delta`` per token, ``output_text.done``,
    ``content_part.done``, ``output_item.done``, ``response.completed`` (with ``timings``)."""

    @staticmethod
    def _part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def _item(self, req: Request, run: Run) -> dict[str, Any]:
        content = [self._part(run.text())]
        return {"type": "message", "status": "completed", "id": req.message_id, "content": content, "role": "assistant"}

    def begin(self, req: Request, run: Run) -> list[Sse]:
        stub = {"id": req.id, "object": "response", "status": "in_progress"}
        item = {"content": [], "id": req.message_id, "role": "assistant", "status": "in_progress", "type": "message"}
        part = {"type": "output_text", "text": ""}
        return [
            sse({"type": "response.created", "response": stub}, "response.created"),
            sse({"type": "response.in_progress", "response": stub}, "response.in_progress"),
            sse({"type": "response.output_item.added", "item": item}, "response.output_item.added"),
            sse(
                {"type": "response.content_part.added", "item_id": req.message_id, "part": part},
                "response.content_part.added",
            ),
        ]

    def token(self, req: Request, run: Run, index: int) -> list[Sse]:
        delta = {"type": "response.output_text.delta", "item_id": req.message_id, "delta": token_piece(index)}
        return [sse(delta, "response.output_text.delta")]

    def end(self, req: Request, run: Run) -> list[Sse]:
        text = run.text()
        item = self._item(req, run)
        response = {
            "id": req.id,
            "object": "response",
            "created_at": req.created,
            "status": "completed",
            "model": req.model,
            "output": [item],
            "usage": responses_usage(run),
        }
        done = {"type": "response.output_text.done", "item_id": req.message_id, "text": text}
        part = {"type": "response.content_part.done", "item_id": req.message_id, "part": self._part(text)}
        return [
            sse(done, "response.output_text.done"),
            sse(part, "response.content_part.done"),
            sse({"type": "response.output_item.done", "item": item}, "response.output_item.done"),
            sse(
                {"type": "response.completed", "response": response, "timings": run.timings()},
                "response.completed",
            ),
        ]

    def body(self, req: Request, runs: Sequence[Run]) -> Any:
        [run] = runs
        item = {
            "content": [self._part(run.text())],
            "id": req.message_id,
            "role": "assistant",
            "status": "completed",
            "type": "message",
        }
        return {
            "completed_at": int(time.time()),
            "created_at": req.created,
            "id": req.id,
            "model": req.model,
            "object": "response",
            "output": [item],
            "status": "completed",
            "usage": responses_usage(run),
        }


# ----------------------------------------------------------------------------- embeddings, rerank


def embeddings_oai(model: str, vectors: Sequence[list[float]], n_tokens: int, base64: Sequence[str] | None) -> Any:
    """``/v1/embeddings`` with ``input``: OpenAI's list; ``base64`` holds the encoded vectors."""
    data: list[dict[str, Any]] = []
    for index, vector in enumerate(vectors):
        if base64 is None:
            data.append({"embedding": vector, "index": index, "object": "embedding"})
        else:
            item = {"embedding": base64[index], "index": index, "object": "embedding", "encoding_format": "base64"}
            data.append(item)
    usage = {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    return {"model": model, "object": "list", "usage": usage, "data": data}


def embeddings_native(vectors: Sequence[list[float]]) -> Any:
    """``/embedding`` (and ``/embeddings``, or ``/v1/embeddings`` with ``content``): one pooled row each."""
    return [{"index": index, "embedding": [vector]} for index, vector in enumerate(vectors)]


def rerank_answer(
    model: str, scores: Sequence[float], n_tokens: int, top_n: int, tei: bool, texts: Sequence[str] | None
) -> Any:
    """Results sorted by score (best first), cut to ``top_n``; TEI style (``texts`` in the request)
    is a bare list with ``score`` (and ``text`` when ``return_text``)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: max(top_n, 0)]
    label = "score" if tei else "relevance_score"
    results: list[dict[str, Any]] = []
    for index in order:
        result: dict[str, Any] = {"index": index, label: scores[index]}
        if texts is not None:
            result["text"] = texts[index]
        results.append(result)
    if tei:
        return results
    usage = {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    return {"model": model, "object": "list", "usage": usage, "results": results}
