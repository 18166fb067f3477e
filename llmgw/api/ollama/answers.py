"""llama-server answers as Ollama answers: each translator is a :class:`~llmgw.api.progress.Translator`
(a Rewriter that also names the answer's content type), so the gateway relays them like any other
answer.

* :class:`GenerationAnswer`: the engine's SSE (chat chunks, or ``/completion`` and ``/infill``
  events) as NDJSON chunks (``message`` for /api/chat, ``response`` for /api/generate), with
  ``thinking`` from ``reasoning_content``, tool calls gathered and sent once with their
  ``arguments`` as objects, and a last ``done: true`` line whose durations (ns) and counts come
  from the engine's ``timings``. When the client asked for ``"stream": false`` the engine was
  asked for one object too (one JSON document to read, however long the answer), which becomes
  Ollama's one object.
* :class:`EmbeddingAnswer`: ``/v1/embeddings`` as /api/embed's ``embeddings`` (cut to
  ``dimensions``) or /api/embeddings' single ``embedding``.

``load_duration`` is the time from the request's arrival to the engine's answer head, less the
engine's own time already in that wait (what a load, a switch or the queue cost it, counting
included); ``total_duration`` runs from arrival to the last line.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from llmgw.api.endpoints import CHAT
from llmgw.api.ollama.requests import Action, Kind, Translated
from llmgw.api.ollama.wire import document, line, timestamp
from llmgw.api.usage import AnswerStats, worth_reading
from llmgw.errors import EngineUnavailable, GatewayError, clip

logger = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
JSON = "application/json; charset=utf-8"


class EngineStreamError(GatewayError):
    """An error the engine sent inside its answer, or an answer that cannot be translated."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _ns(milliseconds: Any, count: int) -> int:
    """A duration in ns from llama-server's milliseconds; at least 1 when something was counted
    (clients divide by it)."""
    if not isinstance(milliseconds, int | float) or isinstance(milliseconds, bool) or not math.isfinite(milliseconds):
        return 1 if count else 0
    return max(round(milliseconds * 1e6), 1 if count else 0)


class _Clock:
    """When the request arrived and when the engine's answer began (this object's creation: the
    relay makes the translator once the engine's answer head is in)."""

    def __init__(self, arrived_ns: int) -> None:
        self.arrived = arrived_ns
        self.answered = time.monotonic_ns()

    def durations(self, engine_ns: int = 0) -> dict[str, int]:
        """``engine_ns``: the engine's own time already in the wait for the answer's head (a whole
        answer's head comes after the generation; a stream's before the prompt is processed)."""
        now = time.monotonic_ns()
        load = max(self.answered - self.arrived - engine_ns, 0)
        return {"total_duration": max(now - self.arrived, 1), "load_duration": load}


class GenerationAnswer:
    """/api/chat and /api/generate: the engine's event stream as Ollama's."""

    def __init__(self, call: Translated, arrived_ns: int, stats: AnswerStats) -> None:
        self._model = call.model
        self._chat = call.kind is Kind.CHAT
        self._openai = call.endpoint is CHAT  # else llama.cpp's native /completion and /infill events
        self._keep_thinking = call.think is not False
        self._stream = call.stream
        self._stats = stats
        self._clock = _Clock(arrived_ns)
        self.content_type = NDJSON if call.stream else JSON
        self._pending = b""
        self._content: list[str] = []
        self._thinking: list[str] = []
        self._calls: dict[int, dict[str, str]] = {}
        self._finish: str | None = None
        self._timings: dict[str, Any] = {}
        self._usage: dict[str, Any] = {}
        self._ended = False  # the last line (or an error line) is out

    # ------------------------------------------------------------------ Rewriter

    def chunk(self, data: bytes) -> bytes:
        data = self._pending + data
        lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
        cut = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
        self._pending = data[cut:]
        return self._events(data[:cut]) if cut else b""

    def flush(self) -> bytes:
        """The rest; the last line if the engine ended without ``[DONE]`` after its finish. A stream
        that broke before its finish gets nothing here: the relay adds the error line."""
        rest, self._pending = self._pending, b""
        out = self._events(rest) if rest.strip() else b""
        if self._finish is not None and not self._ended:
            out += self._last()
        return out

    def body(self, data: bytes) -> bytes:
        """The engine's whole answer (the request was not streamed), read before anything was
        sent: one object, or a GatewayError (an answer that is not one, an error inside it)."""
        self._stream = False
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise EngineUnavailable(f"the engine's answer for model {self._model!r} is not a JSON object")
        if answer.get("error") is not None:
            self._failed(answer["error"])  # raises
        if isinstance(answer.get("timings"), dict):
            self._timings = answer["timings"]
        if isinstance(answer.get("usage"), dict):
            self._usage = answer["usage"]
        content, thinking = (self._openai_message if self._openai else self._native_delta)(answer)
        self._content.append(content)
        self._thinking.append(thinking if self._keep_thinking else "")
        if self._finish is None:
            self._finish = "stop"
        return self._last()

    # ------------------------------------------------------------------ events

    def _events(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for event in data.replace(b"\r\n", b"\n").split(b"\n\n"):
            if self._ended:
                break
            payload = b"".join(
                part[5:].strip() for part in event.split(b"\n") if part.startswith(b"data:")
            )  # one data line per event from llama-server
            if not payload:
                continue
            if payload == b"[DONE]":
                if self._finish is not None:
                    out.append(self._last())
                continue
            if worth_reading(payload):
                self._stats.feed(payload)
            try:
                parsed = json.loads(payload)
            except ValueError:
                logger.warning("model %r: unreadable event from the engine: %s", self._model, clip(repr(payload), 200))
                continue
            if not isinstance(parsed, dict):
                continue  # "data: null" between prompts
            out.append(self._event(parsed))
        return b"".join(out)

    def _event(self, event: dict[str, Any]) -> bytes:
        error = event.get("error")
        if error is not None:
            return self._failed(error)
        if isinstance(event.get("timings"), dict):
            self._timings = event["timings"]
        if isinstance(event.get("usage"), dict):
            self._usage = event["usage"]
        content, thinking = (self._openai_delta if self._openai else self._native_delta)(event)
        if thinking and not self._keep_thinking:
            thinking = ""
        out = b""
        if content or thinking:
            self._content.append(content)
            self._thinking.append(thinking)
            if self._stream:
                out = line(self._chunk(content, thinking))
        if not self._openai and self._finish is not None:
            out += self._last()  # native streams end with their result, no [DONE]
        return out

    def _openai_delta(self, event: dict[str, Any]) -> tuple[str, str]:
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return "", ""
        choice = choices[0]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = {}
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict):
                self._gather_call(call)
        if isinstance(choice.get("finish_reason"), str):
            self._finish = choice["finish_reason"]
        return _text(delta.get("content")), _text(delta.get("reasoning_content"))

    def _openai_message(self, answer: dict[str, Any]) -> tuple[str, str]:
        """A whole chat completion: its message, tool calls and finish reason."""
        choices = answer.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise EngineUnavailable(f"the engine's answer for model {self._model!r} has no choice")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            message = {}
        calls = message.get("tool_calls")
        for index, call in enumerate(calls if isinstance(calls, list) else []):
            if isinstance(call, dict):
                self._gather_call({"index": index, **call})
        if isinstance(choice.get("finish_reason"), str):
            self._finish = choice["finish_reason"]
        return _text(message.get("content")), _text(message.get("reasoning_content"))

    def _native_delta(self, event: dict[str, Any]) -> tuple[str, str]:
        if event.get("stop") is True:
            self._finish = "length" if event.get("stop_type") == "limit" else "stop"
        return _text(event.get("content")), ""

    def _gather_call(self, call: dict[str, Any]) -> None:
        """Tool calls come in fragments: the id and name first, then pieces of the arguments."""
        index = call.get("index", len(self._calls))
        index = index if isinstance(index, int) else len(self._calls)
        gathered = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
        if isinstance(call.get("id"), str):
            gathered["id"] = call["id"]
        function = call.get("function")
        if isinstance(function, dict):
            gathered["name"] += _text(function.get("name"))
            gathered["arguments"] += _text(function.get("arguments"))

    # ------------------------------------------------------------------ output

    def _head(self) -> dict[str, Any]:
        return {"model": self._model, "created_at": timestamp()}

    def _chunk(self, content: str, thinking: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        out = self._head()
        if self._chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            out["message"] = message
        else:
            out["response"] = content
            if thinking:
                out["thinking"] = thinking
        out["done"] = False
        return out

    def _tool_calls(self) -> list[dict[str, Any]]:
        calls = []
        for index in sorted(self._calls):
            call = self._calls[index]
            try:
                arguments = json.loads(call["arguments"]) if call["arguments"].strip() else {}
            except ValueError:
                arguments = None
            if not isinstance(arguments, dict):
                raise EngineStreamError(
                    f"the engine returned invalid tool call arguments for {call['name']!r}: "
                    f"{clip(call['arguments'], 200)}"
                )
            function = {"index": index, "name": call["name"], "arguments": arguments}
            calls.append({"id": call["id"] or f"call_{index}", "function": function})
        return calls

    def _last(self) -> bytes:
        """The tool calls (once), then the ``done`` line with the engine's figures."""
        self._ended = True
        try:
            calls = self._tool_calls() if self._chat else []
        except EngineStreamError as exc:
            if not self._stream:
                raise
            return line({"error": exc.message})
        if self._stream:
            out = line(self._chunk("", "", calls)) if calls else b""
            final = self._chunk("", "")
        else:
            out = b""
            final = self._chunk("".join(self._content), "".join(self._thinking), calls)
        final.update(done=True, done_reason="length" if self._finish == "length" else "stop")
        metrics = self._metrics()
        engine = 0 if self._stream else metrics["prompt_eval_duration"] + metrics["eval_duration"]
        final.update(self._clock.durations(engine))
        final.update(metrics)
        return out + (line(final) if self._stream else document(final))

    def _metrics(self) -> dict[str, int]:
        timings, usage = self._timings, self._usage
        if "prompt_n" in timings:
            prompt = _int(timings.get("prompt_n")) + _int(timings.get("cache_n"))
        else:
            prompt = _int(usage.get("prompt_tokens"))
        if "predicted_n" in timings:
            generated = _int(timings.get("predicted_n"))
        else:
            generated = _int(usage.get("completion_tokens"))
        return {
            "prompt_eval_count": prompt,
            "prompt_eval_duration": _ns(timings.get("prompt_ms"), prompt),
            "eval_count": generated,
            "eval_duration": _ns(timings.get("predicted_ms"), generated),
        }

    def _failed(self, error: Any) -> bytes:
        """An error event inside the engine's stream: the client's stream ends with it."""
        message = error.get("message") if isinstance(error, dict) else error
        message = clip(str(message), 1000) if message else "the engine failed"
        self._ended = True
        self._stats.stream_error = 500
        if not self._stream:
            code = error.get("code") if isinstance(error, dict) else None
            status = code if isinstance(code, int) and 400 <= code < 600 else 500
            raise EngineStreamError(message, status)
        return line({"error": message})


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class EmbeddingAnswer:
    """/api/embed (``embeddings``) and /api/embeddings (``embedding``) from ``/v1/embeddings``."""

    content_type = JSON

    def __init__(self, call: Translated, arrived_ns: int, stats: AnswerStats) -> None:
        self._model = call.model
        self._legacy = call.kind is Kind.EMBEDDINGS
        self._dimensions = call.dimensions
        self._clock = _Clock(arrived_ns)
        self._read = b""

    def chunk(self, data: bytes) -> bytes:
        self._read += data
        return b""

    def flush(self) -> bytes:
        read, self._read = self._read, b""
        return self.body(read) if read else b""

    def body(self, data: bytes) -> bytes:
        try:
            answer = json.loads(data)
            items = sorted(answer["data"], key=lambda item: item["index"])
            vectors = [_vector(item["embedding"]) for item in items]
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineUnavailable(
                f"the engine's embeddings for model {self._model!r} are unreadable ({exc})"
            ) from None
        if self._legacy:
            return document({"embedding": vectors[0] if vectors else []})
        if self._dimensions:
            vectors = [_cut(vector, self._dimensions) for vector in vectors]
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
        out: dict[str, Any] = {"model": self._model, "embeddings": vectors}
        out.update(self._clock.durations())
        out["prompt_eval_count"] = _int(usage.get("prompt_tokens"))
        return document(out)


def _vector(value: Any) -> list[float]:
    if isinstance(value, list) and value and isinstance(value[0], list):
        value = value[0]  # a pooled row in llama.cpp's native shape
    if not isinstance(value, list):
        raise TypeError("an embedding is not an array")
    return [float(x) for x in value]


def _cut(vector: list[float], dimensions: int) -> list[float]:
    """The first ``dimensions`` values, of unit length again (as Ollama does)."""
    if dimensions >= len(vector):
        return vector
    kept = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in kept))
    return [x / norm for x in kept] if norm > 0 else kept


def translator(call: Translated, arrived_ns: int, stats: AnswerStats) -> GenerationAnswer | EmbeddingAnswer:
    if call.kind in (Kind.EMBED, Kind.EMBEDDINGS):
        return EmbeddingAnswer(call, arrived_ns, stats)
    return GenerationAnswer(call, arrived_ns, stats)


def load_answer(call: Translated, arrived_ns: int) -> dict[str, Any]:
    """The answer to a request with nothing to infer: the model was loaded (or unloaded)."""
    reason = "unload" if call.action is Action.UNLOAD else "load"
    if call.kind is Kind.EMBED:
        return {"model": call.model, "embeddings": [], **_Clock(arrived_ns).durations(), "prompt_eval_count": 0}
    if call.kind is Kind.EMBEDDINGS:
        return {"embedding": []}
    answer: dict[str, Any] = {"model": call.model, "created_at": timestamp()}
    if call.kind is Kind.CHAT:
        answer["message"] = {"role": "assistant", "content": ""}
    else:
        answer["response"] = ""
    answer.update(done=True, done_reason=reason)
    return answer
