"""A circuit breaker per peer: pure, its clock injected.

* **closed**: requests go to the peer. Failures in a row (a failed check, a connect error, a
  timeout, a 5xx answer) are counted; any success resets the count; ``trip_after`` of them trip it.
* **open**: nothing is sent to the peer; its health checks go on. ``recover_after`` good checks in
  a row close it again, but never sooner than ``min_dwell`` seconds after it tripped (a bad check
  starts the count over). Shown as **recovering** once a good check came.

Only checks count while it is open: a request that was in flight when the peer tripped proves
nothing about it now.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    RECOVERING = "recovering"  # open, with good checks on the way to closing


class Breaker:
    def __init__(self, trip_after: int, recover_after: int, min_dwell: float, clock: Callable[[], float]) -> None:
        self.trip_after = max(trip_after, 1)
        self.recover_after = max(recover_after, 1)
        self.min_dwell = min_dwell
        self._clock = clock
        self._open = False
        self.failures = 0  # in a row, while closed
        self.good = 0  # good checks in a row, while open
        self.tripped_at: float | None = None
        self.trips = 0  # times it tripped
        self.last_error = ""  # why the last failure was one (never a key: callers pass what they saw)

    @property
    def state(self) -> BreakerState:
        if not self._open:
            return BreakerState.CLOSED
        return BreakerState.RECOVERING if self.good else BreakerState.OPEN

    @property
    def allows(self) -> bool:
        """Requests may go to the peer."""
        return not self._open

    def failure(self, why: str = "") -> bool:
        """A request or a check failed; True when this tripped the breaker."""
        self.last_error = why
        if self._open:
            self.good = 0
            return False
        self.failures += 1
        if self.failures < self.trip_after:
            return False
        self._open = True
        self.good = 0
        self.tripped_at = self._clock()
        self.trips += 1
        return True

    def success(self, check: bool = True) -> bool:
        """A check (``check``) or a request succeeded; True when this closed the breaker."""
        if not self._open:
            self.failures = 0
            return False
        if not check:
            return False
        self.good += 1
        assert self.tripped_at is not None
        if self.good >= self.recover_after and self._clock() - self.tripped_at >= self.min_dwell:
            self._open = False
            self.failures = 0
            self.good = 0
            return True
        return False

    @property
    def suspect(self) -> bool:
        """Closed, but the last thing seen was a failure: checked again at once, not an interval later."""
        return not self._open and self.failures > 0

    def view(self) -> dict[str, object]:
        now = self._clock()
        return {
            "state": self.state.value,
            "failures": self.failures,
            "good_checks": self.good,
            "trips": self.trips,
            "open_for": round(now - self.tripped_at, 1) if self._open and self.tripped_at is not None else None,
            "last_error": self.last_error or None,
        }
