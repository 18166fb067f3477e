"""Per-key limits, as pure decisions: the caller passes the clock.

* ``requests_per_minute``: at most N model requests admitted in any 60 seconds (a sliding log
  of the last N admissions per key, so the limit is exact, without the double burst a fixed
  minute allows at its boundary). Retry-After: until the oldest of them is 60 s old.
* ``max_concurrent``: at most N model requests of the key in flight. Retry-After: 1 s.
* ``tokens_per_day``: prompt + generated tokens the engines reported today (UTC), against the
  key's budget. Checked when a request arrives; a request already running is never cut, so
  the last one admitted may take the total past the budget. Retry-After: until 00:00 UTC.

When several refuse, the one that lasts longest is the answer (tokens, then requests, then
concurrency), so a client that waits Retry-After is not refused again at once by another.
"""

from __future__ import annotations

import collections
import datetime
import math
from dataclasses import dataclass

from llmgw.keys.registry import Principal

WINDOW = 60.0  # seconds of requests_per_minute
CONCURRENCY_RETRY = 1  # seconds a client over max_concurrent is told to wait


@dataclass(frozen=True)
class Refusal:
    limit: str  # requests_per_minute, tokens_per_day or max_concurrent: the metrics' label
    retry_after: int  # whole seconds, at least 1
    message: str


def utc_day(epoch: float) -> str:
    """The UTC date of an instant, as tokens_per_day counts days ("2026-12-05")."""
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).date().isoformat()


def seconds_to_next_day(epoch: float) -> float:
    """Seconds from ``epoch`` to the next 00:00 UTC."""
    return 86400.0 - epoch % 86400.0


def _whole(seconds: float) -> int:
    return max(1, math.ceil(seconds - 1e-9))


class KeyLimiter:
    """Requests in the last minute and in flight, per key name. ``now`` is monotonic seconds for
    the minute window; the day's tokens come from the usage book (they survive restarts)."""

    def __init__(self) -> None:
        self._recent: dict[str, collections.deque[float]] = {}
        self._in_flight: dict[str, int] = {}

    def in_flight(self, name: str) -> int:
        return self._in_flight.get(name, 0)

    def admit(self, key: Principal, now: float, tokens_today: int, epoch: float) -> Refusal | None:
        """Admit one model request of ``key`` (counted in its minute and in flight), or say why not.
        ``epoch``: the wall clock, for the day's boundary."""
        name = key.name
        if name is None:
            return None
        budget = key.tokens_per_day
        if budget is not None and tokens_today >= budget:
            wait = seconds_to_next_day(epoch)
            return Refusal(
                "tokens_per_day",
                _whole(wait),
                f"key {name!r} used its tokens_per_day ({tokens_today} of {budget} tokens today); "
                f"the budget renews at 00:00 UTC, in {_whole(wait)} s",
            )
        recent = self._recent.get(name)
        rpm = key.requests_per_minute
        if rpm is not None:
            if recent is None:
                recent = self._recent[name] = collections.deque()
            while recent and recent[0] <= now - WINDOW:
                recent.popleft()
            while len(recent) > rpm:  # the limit was lowered by a reload
                recent.popleft()
            if len(recent) >= rpm:
                wait = _whole(recent[0] + WINDOW - now)
                return Refusal(
                    "requests_per_minute",
                    wait,
                    f"key {name!r} sent {rpm} requests in the last minute (requests_per_minute); try again in {wait} s",
                )
        limit = key.max_concurrent
        if limit is not None and self.in_flight(name) >= limit:
            return Refusal(
                "max_concurrent",
                CONCURRENCY_RETRY,
                f"key {name!r} has {limit} requests in flight (max_concurrent); try again when one is done",
            )
        if recent is not None:
            recent.append(now)
        self._in_flight[name] = self.in_flight(name) + 1
        return None

    def release(self, key: Principal) -> None:
        """An admitted request is done (answered, failed or abandoned)."""
        if key.name is not None:
            left = self.in_flight(key.name) - 1
            if left > 0:
                self._in_flight[key.name] = left
            else:
                self._in_flight.pop(key.name, None)
