"""StatusTracker: what the engines and the queue are doing, as events, load times and progress.

The engine manager calls :meth:`StatusTracker.changed` after every batch of effects; it then
compares the scheduler's state with what it saw last: an engine that appeared,
became ready, started stopping or left is an ``engine`` event; a queue that changed is a
``queue`` event. Nothing here decides anything: it only reads the scheduler.

It also keeps each variant's last measured load time (decision to start -> ready) in the state
file, so a request waiting for a cold start gets an estimated percentage, the first time after a
restart too. llama-server prints no load progress of its own (research notes, "Logs"), so the
estimate is elapsed / last load time, capped at 99 % until the engine is really ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmgw.api.progress import LOADING, Progress
from llmgw.config import ModelConfig, Variant
from llmgw.events import EventBus
from llmgw.runtime import RunningEngine
from llmgw.scheduling.memory import launch_key
from llmgw.scheduling.scheduler import EngineRecord, EngineState, Phase, Scheduler, Ticket
from llmgw.state import StateStore

logger = logging.getLogger(__name__)

LOAD_SECTION = "load_seconds"
_CAP = 99  # percent shown until the engine is really ready


class LoadTimes:
    """Last measured load time per launch (``launch_key``), kept across restarts."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        self._seconds: dict[str, float] = {}
        for key, value in state.section(LOAD_SECTION).items():
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                self._seconds[key] = float(value)

    def expected(self, model: ModelConfig, variant: Variant) -> float | None:
        return self._seconds.get(launch_key(model, variant))

    def record(self, model: ModelConfig, variant: Variant, seconds: float) -> None:
        """The last load is the best guess of the next (a warm page cache makes reloads faster)."""
        self._seconds[launch_key(model, variant)] = round(max(seconds, 0.001), 3)
        self._state.put(LOAD_SECTION, dict(self._seconds))


@dataclass
class _Seen:
    state: str
    model: str
    variant: int


class StatusTracker:
    def __init__(
        self,
        scheduler: Scheduler[RunningEngine],
        bus: EventBus,
        state: StateStore,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.bus = bus
        self.load_times = LoadTimes(state)
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._seen: dict[int, _Seen] = {}
        self._spawned: dict[int, int] = {}  # record id -> pid, for engines whose process runs
        self._queue: tuple[tuple[int, str], ...] = ()
        self.failed: dict[str, float] = {}  # model -> loop time of its last failed start (cleared by a success)

    # ------------------------------------------------------------------ observers

    def changed(self) -> None:
        """After the engine manager carried out effects: publish what changed since last time."""
        now = self._clock()
        records = {record.id: record for record in self.scheduler.records}
        for record in records.values():
            state = self._state(record)
            before = self._seen.get(record.id)
            if before is not None and before.state == state:
                continue
            if before is not None and before.state in (EngineState.STARTING, LOADING) and record.ready:
                seconds = now - record.started_at
                self.load_times.record(record.model, record.variant, seconds)
                self.failed.pop(record.model.name, None)
                logger.debug("model %r variant %d loaded in %.3f s", record.model.name, record.variant.index, seconds)
            self._seen[record.id] = _Seen(state, record.model.name, record.variant.index)
            self.bus.publish("engine", **self.engine_event(record, now))
        for record_id in [i for i in self._seen if i not in records]:
            seen = self._seen.pop(record_id)
            self._spawned.pop(record_id, None)
            failed = seen.state in (EngineState.STARTING, LOADING) and not self.scheduler.closed
            if failed:
                self.failed[seen.model] = now
            state = "failed" if failed else "stopped"
            self.bus.publish("engine", model=seen.model, variant=seen.variant, id=record_id, state=state)
        queue = tuple((ticket.id, ticket.phase.value) for ticket in self.scheduler.queue)
        if queue != self._queue:
            self._queue = queue
            if self.bus.watched:
                self.bus.publish("queue", queue=self.queue_view(now))

    def peer_changed(self, name: str, state: str) -> None:
        """A peer's breaker tripped or closed: the page and the watchers hear it."""
        self.bus.publish("peer", name=name, state=state)

    def spawned(self, model: ModelConfig, variant: Variant, pid: int) -> None:
        """The runtime spawned an engine process: its record is now loading."""
        for record in self.scheduler.records:
            if record.state is EngineState.STARTING and record.model.name == model.name and record.variant is variant:
                self._spawned[record.id] = pid
                self.changed()
                return

    def tick(self) -> None:
        """Once a second while engines load: their progress, for pages that show a bar."""
        now = self._clock()
        for record in self.scheduler.records:
            if record.state is EngineState.STARTING:
                self.bus.publish("engine", **self.engine_event(record, now))

    # ------------------------------------------------------------------ queries

    def engine_event(self, record: EngineRecord[RunningEngine], now: float) -> dict[str, Any]:
        event: dict[str, Any] = {
            "model": record.model.name,
            "variant": record.variant.index,
            "id": record.id,
            "state": self._state(record),
            "context": record.n_ctx if record.n_ctx is not None else record.variant.slot_context,
        }
        if record.state is EngineState.STARTING:
            event.update(self.load_progress(record, now))
        if record.state is EngineState.STOPPING and record.stop_reason:
            event["reason"] = record.stop_reason
        pid = self._spawned.get(record.id) or (record.handle.process.pid if record.handle is not None else None)
        if pid is not None:
            event["pid"] = pid
        return event

    def load_progress(self, record: EngineRecord[RunningEngine], now: float | None = None) -> dict[str, Any]:
        """``elapsed``, ``expected`` and ``percent`` of a starting engine."""
        now = self._clock() if now is None else now
        elapsed = max(now - record.started_at, 0.0)
        expected = self.load_times.expected(record.model, record.variant)
        return {"elapsed": round(elapsed, 1), "expected": expected, "percent": _percent(elapsed, expected)}

    def status(self, model: ModelConfig) -> dict[str, Any]:
        """A model's load state in the shape of llama.cpp's router (``GET /models``): ``value`` is
        unloaded, loading, loaded or stopping; plus the running variant and its context."""
        record = next((s for s in self.scheduler.records if s.model.name == model.name), None)
        if record is None:
            status: dict[str, Any] = {"value": "unloaded"}
            if model.name in self.failed:
                status["failed"] = True
            return status
        value = {EngineState.STARTING: "loading", EngineState.READY: "loaded", EngineState.STOPPING: "stopping"}
        status = {
            "value": value[record.state],
            "variant": record.variant.index,
            "n_ctx": record.n_ctx if record.n_ctx is not None else record.variant.slot_context,
            "args": [record.variant.binary, *record.variant.args],
        }
        if record.state is EngineState.STARTING:
            status["progress"] = self.load_progress(record)
        return status

    def progress(self, ticket: Ticket) -> Progress | None:
        """Where a waiting request stands; None once it left the queue (granted or failed)."""
        queue = self.scheduler.queue
        position = next((i for i, t in enumerate(queue, 1) if t is ticket), 0)
        if not position:
            return None
        now = self._clock()
        model = ticket.model
        own = next((s for s in self.scheduler.records if s.model.name == model.name), None)
        starting = own if own is not None and own.state is EngineState.STARTING else None
        if starting is not None and ticket.phase is Phase.STARTING:
            variant = starting.variant
            phase = LOADING if starting.id in self._spawned else Phase.STARTING.value
            load = self.load_progress(starting, now)
            elapsed: float | None = load["elapsed"]
            percent = load["percent"]
        else:
            try:
                variant = self.scheduler.variant_for(model, ticket.min_ctx, ticket.capability)
            except Exception:  # the wait ends with its own error; progress only describes it
                variant = model.largest
            phase, elapsed, percent = ticket.phase.value, None, None
        return Progress(
            phase=phase,
            position=position,
            queued=len(queue),
            model=model.name,
            variant=variant.index,
            context=self.scheduler.effective_context(model, variant),
            waited=max(now - ticket.arrived, 0.0),
            load_elapsed=elapsed,
            expected=self.load_times.expected(model, variant),
            percent=percent,
        )

    def queue_view(self, now: float | None = None) -> list[dict[str, Any]]:
        now = self._clock() if now is None else now
        return [
            {
                "position": position,
                "model": ticket.model.name,
                "min_context": ticket.min_ctx,
                "priority": ticket.priority.value,
                "phase": ticket.phase.value,
                "waiting": round(now - ticket.arrived, 1),
                **({"blocked_by": ticket.blocked_by} if ticket.blocked_by else {}),
            }
            for position, ticket in enumerate(self.scheduler.queue, 1)
        ]

    def _state(self, record: EngineRecord[RunningEngine]) -> str:
        if record.state is EngineState.STARTING and record.id in self._spawned:
            return LOADING
        return record.state.value


def _percent(elapsed: float, expected: float | None) -> int | None:
    if expected is None or expected <= 0:
        return None
    return min(_CAP, int(100 * elapsed / expected))
