"""EventBus: what the gateway is doing, for whoever watches (``GET /events``, the web page).

Publishers (the status tracker, the request log, engine output) call :meth:`EventBus.publish`;
it never blocks and never fails: each subscriber has a bounded queue, and a subscriber that
does not keep up loses events instead of slowing requests down or growing the gateway's
memory. The first event it reads after a gap is a ``dropped`` marker with the count lost, so
a page can fetch a fresh snapshot. Engine log lines are many: they go only to subscribers
that asked for them (all models, or a few by name).

Plain asyncio, no Tornado: the bus sits at the bottom of the layers, so any of them may
publish through the callbacks the composition root wires.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

LOG = "log"  # the kind of engine output lines, sent only to subscribers that ask for them
DROPPED = "dropped"
DEFAULT_QUEUE = 1000


@dataclass(frozen=True)
class Event:
    kind: str
    data: dict[str, Any]
    seq: int
    time: float  # wall clock (epoch seconds)

    def payload(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": round(self.time, 3), **self.data}


class Subscription:
    """One watcher's queue. ``logs``: None (no engine output), ``"*"`` (every model's) or a set of
    model names."""

    def __init__(
        self, bus: EventBus, logs: str | frozenset[str] | None, limit: int, kinds: frozenset[str] | None = None
    ) -> None:
        """``kinds``: only events of these kinds (None: every kind; a peer follows engine and queue only)."""
        self._bus = bus
        self.logs = logs
        self.kinds = kinds
        self.limit = limit
        self.dropped = 0
        self.closed = False
        self._queue: collections.deque[Event] = collections.deque()
        self._wakeup = asyncio.Event()

    def wants(self, event: Event) -> bool:
        if self.kinds is not None and event.kind not in self.kinds:
            return False
        if event.kind != LOG:
            return True
        if self.logs is None:
            return False
        return self.logs == "*" or event.data.get("model") in self.logs

    def offer(self, event: Event) -> None:
        if len(self._queue) >= self.limit:
            self.dropped += 1
        else:
            self._queue.append(event)
        self._wakeup.set()

    def drain(self) -> list[Event]:
        """What is queued now; a ``dropped`` marker ends it when events were lost since the last call."""
        events = list(self._queue)
        self._queue.clear()
        if self.dropped:
            events.append(self._bus.marker(self.dropped))
            self.dropped = 0
        self._wakeup.clear()
        return events

    async def next(self, timeout: float) -> list[Event]:
        """Wait up to ``timeout`` s for events; [] on timeout or once closed."""
        if not self._queue and not self.dropped and not self.closed:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return []
        return self.drain()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus.unsubscribe(self)
            self._wakeup.set()


class EventBus:
    def __init__(self, queue_limit: int = DEFAULT_QUEUE) -> None:
        self.queue_limit = queue_limit
        self._subscribers: list[Subscription] = []
        self._seq = itertools.count(1)

    @property
    def watched(self) -> bool:
        """Someone listens (publishers may skip building costly payloads otherwise)."""
        return bool(self._subscribers)

    def watching_logs(self, model: str) -> bool:
        return any(s.logs == "*" or (s.logs is not None and model in s.logs) for s in self._subscribers)

    def subscribe(
        self, logs: str | Iterable[str] | None = None, limit: int | None = None, kinds: Iterable[str] | None = None
    ) -> Subscription:
        wanted = logs if logs is None or isinstance(logs, str) else frozenset(logs)
        only = None if kinds is None else frozenset(kinds)
        subscription = Subscription(self, wanted, limit or self.queue_limit, only)
        self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    def publish(self, kind: str, **data: Any) -> None:
        if not self._subscribers:
            return
        event = Event(kind, data, next(self._seq), time.time())
        for subscription in self._subscribers:
            if subscription.wants(event):
                subscription.offer(event)

    def marker(self, count: int) -> Event:
        return Event(DROPPED, {"count": count}, next(self._seq), time.time())

    def close(self) -> None:
        """Shutting down: every subscriber's wait ends."""
        for subscription in list(self._subscribers):
            subscription.close()
