"""KeyGate: the keys of the configuration in force, their limits and their usage, as one service.

The handlers ask it who a request is (:meth:`KeyGate.identify`) and, for a model request, to
:meth:`admit` it; the :class:`Admission` it hands back is closed once when the request ends,
whatever way it ends, with the tokens the engine reported. The registry follows the live
configuration (a reload, which reads key files again, builds a new one); limits and usage are
kept by key name, so they carry over a reload.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from llmgw.config import LiveConfig, ServerConfig
from llmgw.errors import RateLimited
from llmgw.keys.limits import KeyLimiter, utc_day
from llmgw.keys.registry import KeyRegistry, Principal, presented_key
from llmgw.keys.usage import UsageBook
from llmgw.state import StateStore


class Admission:
    """One admitted model request of a key: :meth:`done` gives its place back and adds its tokens."""

    def __init__(self, gate: KeyGate | None, key: Principal) -> None:
        self._gate = gate
        self.key = key

    def done(self, prompt_tokens: int | None = None, generated_tokens: int | None = None) -> None:
        """The request ended (answered, failed or abandoned); only the first call counts."""
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.finished(self.key, prompt_tokens or 0, generated_tokens or 0)


class KeyGate:
    def __init__(
        self,
        live: LiveConfig,
        state: StateStore,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` (monotonic seconds) times the minute windows; ``wall`` (epoch seconds) the UTC day."""
        self.live = live
        self.clock = clock
        self.wall = wall
        self.limiter = KeyLimiter()
        self.usage = UsageBook(state)
        self._registry: tuple[ServerConfig, KeyRegistry] | None = None

    @property
    def registry(self) -> KeyRegistry:
        server = self.live.current.server
        if self._registry is None or self._registry[0] is not server:
            self._registry = (server, KeyRegistry(server.all_keys()))
        return self._registry[1]

    def identify(self, authorization: str | None, x_api_key: str | None) -> Principal | None:
        """The request's principal; None: no key or an unknown one (401)."""
        return self.registry.identify(presented_key(authorization, x_api_key))

    def admit(self, key: Principal) -> Admission:
        """Admit one model request, or raise RateLimited (429, Retry-After) if a limit says no."""
        if key.name is None:
            return Admission(None, key)
        epoch = self.wall()
        refusal = self.limiter.admit(key, self.clock(), self.usage.tokens_today(key.name, utc_day(epoch)), epoch)
        if refusal is not None:
            self.usage.refused(key.name, refusal.limit)
            raise RateLimited(refusal.message, refusal.retry_after, tokens=refusal.limit == "tokens_per_day")
        self.usage.admitted(key.name)
        return Admission(self, key)

    def finished(self, key: Principal, prompt: int, generated: int) -> None:
        self.limiter.release(key)
        if key.name is not None:
            self.usage.answered(key.name, prompt, generated, utc_day(self.wall()))

    def save(self) -> None:
        self.usage.save()

    def view(self) -> list[dict[str, Any]]:
        """Each configured key's usage and limits, by name, for /api/requests, the metrics and the
        page. Never the key itself."""
        day = utc_day(self.wall())
        rows = []
        for name, key in sorted(self.registry.principals.items(), key=lambda item: str(item[0])):
            if name is None:
                continue
            usage = self.usage.of(name)
            rows.append(
                {
                    "key": name,
                    "admin": key.admin,
                    "priority": key.priority.value,
                    "models": None if key.models is None else sorted(key.models),
                    "requests": usage.requests,
                    "prompt_tokens": usage.prompt_tokens,
                    "generated_tokens": usage.generated_tokens,
                    "rate_limited": sum(usage.refused.values()),
                    "tokens_today": self.usage.tokens_today(name, day),
                    "in_flight": self.limiter.in_flight(name),
                    "requests_per_minute": key.requests_per_minute,
                    "tokens_per_day": key.tokens_per_day,
                    "max_concurrent": key.max_concurrent,
                }
            )
        return rows
