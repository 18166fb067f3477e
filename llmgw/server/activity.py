"""What requests and engines did: the request history and each engine's output tail.

:class:`RequestLog` keeps the requests in flight and the last finished ones in a bounded ring
(``GET /api/requests``), publishes ``request_start`` / ``request_end`` events, and feeds the
token metrics. :class:`EngineLogs` keeps the last lines each engine printed (``GET /api/logs``)
and publishes them as ``log`` events to the watchers that asked for them. Both are plain
classes: the handlers only call them.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmgw.api.usage import AnswerStats
from llmgw.config import ModelConfig, Variant
from llmgw.errors import clip
from llmgw.events import LOG, EventBus

HISTORY = 500  # finished requests kept
LOG_LINES = 300  # output lines kept per model
_LINE_LIMIT = 2000  # characters of one output line kept (llama-server prints long template dumps)


@dataclass(eq=False)
class RequestRecord:
    request_id: str  # X-Request-Id, as the client got it
    route: str
    model: str
    stream: bool
    started: float  # epoch seconds
    stats: AnswerStats = field(default_factory=AnswerStats)
    status: int | None = None  # the HTTP status, or that of the error event that ended a stream
    duration: float | None = None
    client_left: bool = False
    seq: int = 0
    key: str | None = None  # the name of the request's API key (never the key itself)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "route": self.route,
            "model": self.model,
            "key": self.key,
            "stream": self.stream,
            "started": round(self.started, 3),
            "status": self.status,
            "duration": None if self.duration is None else round(self.duration, 3),
            **self.stats.as_dict(),
            **({"client_left": True} if self.client_left else {}),
        }


class RequestLog:
    def __init__(
        self,
        bus: EventBus,
        on_answer: Callable[[str, AnswerStats], None] | None = None,
        size: int = HISTORY,
    ) -> None:
        self.bus = bus
        self.on_answer = on_answer  # metrics: token counters and tokens/s histograms
        self._done: collections.deque[RequestRecord] = collections.deque(maxlen=size)
        self._active: dict[int, RequestRecord] = {}
        self._seq = itertools.count(1)

    def begin(self, request_id: str, route: str, model: str, stream: bool, key: str | None = None) -> RequestRecord:
        record = RequestRecord(request_id, route, model, stream, time.time(), seq=next(self._seq), key=key)
        self._active[record.seq] = record
        self.bus.publish("request_start", **record.view())
        return record

    def end(
        self,
        record: RequestRecord | None,
        *,
        request_id: str,
        route: str,
        model: str,
        status: int,
        seconds: float,
        client_left: bool = False,
        key: str | None = None,
    ) -> RequestRecord:
        """A request is answered (``record`` None: it failed before it reached a model)."""
        if record is None:
            started = time.time() - seconds
            record = RequestRecord(request_id, route, model, False, started, seq=next(self._seq), key=key)
        self._active.pop(record.seq, None)
        record.status = record.stats.stream_error or status
        record.duration = seconds
        record.client_left = client_left
        self._done.append(record)
        if self.on_answer is not None and record.model:
            self.on_answer(record.model, record.stats)
        self.bus.publish("request_end", **record.view())
        return record

    def in_flight(self) -> list[dict[str, Any]]:
        return [record.view() for record in self._active.values()]

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Finished requests, newest first."""
        records = list(self._done)[::-1]
        return [record.view() for record in records[:limit]]


class EngineLogs:
    def __init__(self, bus: EventBus, lines: int = LOG_LINES) -> None:
        self.bus = bus
        self._lines = lines
        self._tails: dict[str, collections.deque[dict[str, Any]]] = {}

    def add(self, model: ModelConfig, variant: Variant, line: str) -> None:
        """ProcessRuntime.on_output: one line the engine printed."""
        entry = {
            "model": model.name,
            "variant": variant.index,
            "time": round(time.time(), 3),
            "line": clip(line, _LINE_LIMIT),
        }
        tail = self._tails.get(model.name)
        if tail is None:
            tail = self._tails[model.name] = collections.deque(maxlen=self._lines)
        tail.append(entry)
        if self.bus.watching_logs(model.name):
            self.bus.publish(LOG, **entry)

    def tail(self, model: str, limit: int | None = None) -> list[dict[str, Any]]:
        lines = list(self._tails.get(model, ()))
        return lines[-limit:] if limit else lines

    def models(self) -> list[str]:
        return sorted(self._tails)
