"""Placement: may an engine run next to others, and which ones must stop to make room.

Pure functions of the config and a list of engines (the scheduler's records, or a planned
start). The rules:

* at most ``max_engines`` engines, and per memory pool at most the budget;
* two variants of one model never run together, nor two engines on one address, nor two
  engines on one RPC worker (a ``ggml-rpc-server`` serves one client at a time);
* an exclusive model runs alone;
* to make room, idle engines go first (least recently used first), then busy ones, which the
  scheduler lets drain before it stops them; pinned engines are never chosen (only an
  exclusive model displaces them), and engines still starting are never chosen.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from llmgw.config import Config, ModelConfig, Variant


class Placed(Protocol):
    """What placement reads of an engine, running or planned."""

    @property
    def model(self) -> ModelConfig: ...

    @property
    def variant(self) -> Variant: ...

    @property
    def need(self) -> Mapping[str, float]: ...

    @property
    def ready(self) -> bool:
        """Running and serving (not starting, not planned): only such engines may be chosen to stop."""

    @property
    def busy(self) -> bool: ...

    @property
    def last_used(self) -> float: ...

    @property
    def id(self) -> int: ...


def shared_workers(a: Variant, b: Variant) -> list[str]:
    """The RPC workers both variants use (each worker serves one engine at a time)."""
    theirs = {worker.name for worker in b.rpc}
    return [worker.name for worker in a.rpc if worker.name in theirs]


class Placement:
    def __init__(self, config: Config) -> None:
        self.max_engines = config.server.max_engines
        self.budget = dict(config.server.pools)

    @staticmethod
    def conflict(a: Placed, b: Placed) -> bool:
        return (
            a.model.name == b.model.name
            or a.variant.address == b.variant.address
            or a.model.exclusive
            or b.model.exclusive
            or bool(shared_workers(a.variant, b.variant))
        )

    def within_budget(self, engines: Sequence[Placed]) -> bool:
        if len(engines) > self.max_engines:
            return False
        for pool, limit in self.budget.items():
            if sum(engine.need.get(pool, 0.0) for engine in engines) > limit + 1e-6:
                return False
        return True

    def fits_beside(self, engines: Sequence[Placed], wish: Placed) -> bool:
        """Could ``wish`` run now next to exactly these engines?"""
        return not any(self.conflict(engine, wish) for engine in engines) and self.within_budget([*engines, wish])

    def victims(self, wish: Placed, engines: Sequence[Placed], prefer: Collection[int] = ()) -> list[Placed] | None:
        """The engines that must stop for ``wish`` to run, fewest and cheapest first; None if none will do.

        ``prefer``: ids already draining for this wish; among busy engines they are chosen first,
        so a wait that has begun is not moved onto other engines.
        """

        def may_go(engine: Placed) -> bool:
            # An exclusive model displaces pinned ones too (else it could never start); a variant
            # switch replaces the model's own engine even when pinned (the model stays loaded).
            if not engine.ready:
                return False
            return not engine.model.pinned or wish.model.exclusive or engine.model.name == wish.model.name

        forced = [engine for engine in engines if self.conflict(engine, wish)]
        if not all(may_go(engine) for engine in forced):
            return None
        chosen = list(forced)
        rest = [engine for engine in engines if engine not in chosen]
        if self.within_budget([*rest, wish]):
            return chosen
        candidates = sorted(
            (engine for engine in rest if may_go(engine)),
            key=lambda e: (e.busy, e.id not in prefer, e.last_used, e.id),
        )
        for engine in candidates:
            chosen.append(engine)
            rest.remove(engine)
            if self.within_budget([*rest, wish]):
                return self._fewest(chosen, forced, rest, wish)
        return None

    def _fewest(self, chosen: list[Placed], forced: list[Placed], rest: list[Placed], wish: Placed) -> list[Placed]:
        """Give back, latest choice first, every victim the wish does not need after all."""
        kept = list(rest)
        for engine in reversed(chosen):
            if engine in forced:
                continue
            if self.within_budget([*kept, engine, wish]):
                kept.append(engine)
                chosen.remove(engine)
        return chosen
