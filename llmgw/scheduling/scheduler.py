"""Scheduler: which engines run, and which requests use them or wait. Pure decisions.

Events come in as method calls (a request arrives or gives its engine back, a start ends, an
engine stops or crashes, an unload, an idle timeout, a reload); each returns the effects to
carry out: start or stop an engine, grant or fail a request. No I/O, no asyncio and no clock
of its own (the caller passes ``now``), so tests drive it directly. EngineManager carries out
the effects.

The rules (placement.py says which engines may run together):

* A request whose model runs with enough context is granted at once, next to any others
  (llama-server has parallel slots), unless that engine is *draining* (below).
* Otherwise it queues. Queued requests are planned in queue order (arrival order, but see
  Priority): one that needs a start picks the engines that must stop to make room, marks them
  draining, stops the idle ones at once and the busy ones when their last request ends, then
  starts its engine. A draining
  engine takes no requests that arrived after the decision, so steady traffic cannot starve
  a start; requests to every other engine carry on untouched.
* A start that cannot be planned while other engines are still starting holds later starts
  back (grants still go ahead), so it is not starved either.
* One engine per model: a request that needs more context replaces the model's engine by a
  bigger variant, waiting only for that engine's own requests. A running variant that is big
  enough is kept, never swapped for a smaller one.
* No engine is started twice: a model with an engine starting waits for it.
* An engine that becomes ready first serves the requests waiting for it, before anything else
  is decided: no start is wasted on an engine stopped before its request had it.
* Priority: the queue is walked in *queue order*, which is arrival order except that an
  interactive request goes ahead of the batch requests waiting when it arrives (its key's
  ``priority``; requests without a key are interactive). The bound that keeps batch requests
  from starving: each batch request lets at most ``server.batch_overtakes`` (N, default 4)
  interactive requests that arrived after it go ahead of it; once N have, every later one
  queues behind it. A place is decided when a request arrives and never changes, so a batch
  request is never walked after more than the requests ahead of it when it came plus N.
  (It governs who gets a start or a switch; a request whose engine runs is granted at once,
  whatever its priority.) N = 0 is arrival order.
* An idle engine stops after its variant's ``engine_idle_timeout``, or after the ``keep_alive``
  of the latest request granted it that set one (Ollama's: seconds, for ever, or 0: as soon as
  its requests are done).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar, Union

from llmgw.config import Config, ModelConfig, Priority, Variant
from llmgw.errors import ContextTooLarge, GatewayError, ModelNotFound, ShuttingDown
from llmgw.scheduling.memory import MemoryBook
from llmgw.scheduling.placement import Placed, Placement, shared_workers

H = TypeVar("H")  # what the runtime gives for a ready engine (RunningEngine); opaque here


class EngineState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"


@dataclass(eq=False)
class EngineRecord(Generic[H]):
    """The scheduler's record of one engine, from the decision to start it until it is gone."""

    id: int
    model: ModelConfig
    variant: Variant
    state: EngineState
    need: dict[str, float]  # MiB per pool it counts for
    started_at: float
    n_ctx: int | None = None  # once ready: the context the engine reports
    in_flight: int = 0
    last_used: float = 0.0
    evict_for: int | None = None  # the queued request that needs this engine gone (draining)
    unload_from: int | None = None  # unloading: requests from this arrival number on are not granted
    stop_reason: str = ""
    handle: H | None = None  # the runtime's handle of the engine, once ready
    keep_alive: float | None = None  # the latest request's keep_alive (s; inf: for ever); None: none asked

    @property
    def idle_after(self) -> float | None:
        """Seconds idle before it stops: the latest ``keep_alive`` asked for, else its variant's
        ``engine_idle_timeout``; None: never (0: as soon as its requests are done)."""
        if self.keep_alive is not None:
            return None if math.isinf(self.keep_alive) else self.keep_alive
        idle = self.variant.timeouts.engine_idle
        return idle if idle > 0 else None

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    @property
    def busy(self) -> bool:
        return self.in_flight > 0

    @property
    def draining(self) -> bool:
        return self.evict_for is not None or self.unload_from is not None


@dataclass(eq=False)
class _Planned:
    """A start a queued request will make once there is room (placement counts it as running)."""

    model: ModelConfig
    variant: Variant
    need: Mapping[str, float]
    id: int
    ready: bool = False
    busy: bool = False
    last_used: float = 0.0


@dataclass
class _Walk:
    """One walk of the queue: the decisions taken so far, which later requests must respect."""

    live: list[Placed]  # what will still run once the decisions taken so far are carried out
    planning: dict[str, Ticket] = field(default_factory=dict)  # model -> the request whose start is planned
    draining_for: dict[int, set[int]] = field(default_factory=dict)  # request -> the engines it evicted last walk
    held_back: bool = False  # a start could not be planned while engines start: later starts wait


class Phase(StrEnum):
    """What a queued request waits for."""

    QUEUED = "queued"  # room held by engines starting, or an earlier request's start
    DRAINING = "draining"  # engines that must stop still serve requests
    STOPPING = "stopping"  # engines that must stop are stopping
    STARTING = "starting"  # its engine is starting


@dataclass(eq=False)
class Ticket:
    """One request waiting for an engine; ``id`` is its arrival number."""

    id: int
    model: ModelConfig
    min_ctx: int
    arrived: float
    capability: str | None = None  # the route family it needs served (None: any)
    priority: Priority = Priority.INTERACTIVE
    keep_alive: float | None = None  # what its engine's idle timeout becomes once granted (None: unchanged)
    phase: Phase = Phase.QUEUED
    blocked_by: str = ""  # why it cannot be planned, for the queue-timeout message
    overtaken: int = 0  # batch: interactive requests that arrived later and went ahead of it


@dataclass(frozen=True)
class Start(Generic[H]):
    record: EngineRecord[H]


@dataclass(frozen=True)
class Stop(Generic[H]):
    record: EngineRecord[H]
    reason: str
    hung: bool = False  # it no longer answers: killed at once, nothing asked of it first


@dataclass(frozen=True)
class Grant(Generic[H]):
    ticket: Ticket
    record: EngineRecord[H]


@dataclass(frozen=True)
class Fail:
    ticket: Ticket
    error: GatewayError


@dataclass(frozen=True)
class Gone(Generic[H]):
    """The engine left the scheduler (stopped, or its start failed)."""

    record: EngineRecord[H]


Effect = Union[Start[H], Stop[H], Grant[H], Fail, Gone[H]]  # noqa: UP007 (a generic alias)


@dataclass
class Scheduler(Generic[H]):
    config: Config
    memory: MemoryBook
    records: list[EngineRecord[H]] = field(default_factory=list)
    queue: list[Ticket] = field(default_factory=list)
    closed: bool = False

    def __post_init__(self) -> None:
        self.placement = Placement(self.config)
        self._arrivals = itertools.count(1)
        self._record_ids = itertools.count(1)
        self._learned_ctx: dict[tuple[str, str], int] = {}

    # ------------------------------------------------------------------ context sizes

    def effective_context(self, model: ModelConfig, variant: Variant) -> int:
        """Context a variant really gives: what its engine reported last time, else the config."""
        return self._learned_ctx.get((model.name, variant.fingerprint), variant.slot_context)

    def largest_context(self, model: ModelConfig, capability: str | None = None) -> int:
        """Largest context among the variants serving ``capability`` (0 if none does)."""
        return max((self.effective_context(model, v) for v in model.variants if v.serves(capability)), default=0)

    def variant_for(self, model: ModelConfig, min_ctx: int, capability: str | None = None) -> Variant:
        """Smallest variant serving ``capability`` whose (effective) context holds ``min_ctx`` tokens."""
        for variant in sorted(model.variants, key=lambda v: self.effective_context(model, v)):
            if variant.serves(capability) and self.effective_context(model, variant) >= min_ctx:
                return variant
        raise ContextTooLarge(model.name, min_ctx, self.largest_context(model, capability))

    # ------------------------------------------------------------------ queries

    def record(self, record_id: int) -> EngineRecord[H] | None:
        return next((record for record in self.records if record.id == record_id), None)

    def is_running(self, model_name: str) -> bool:
        return any(s.ready and s.model.name == model_name and s.unload_from is None for s in self.records)

    @property
    def in_flight(self) -> int:
        return sum(record.in_flight for record in self.records)

    def could_start(self, model: ModelConfig, capability: str | None = None) -> str:
        """Could an engine of ``model`` start now (its smallest variant serving ``capability``)?
        "fits" beside what runs, "evicts" only idle engines, "waits" (busy or pinned engines
        are in the way, or its own engine is still there). What a pool's peers read of this node."""
        try:
            variant = self.variant_for(model, 0, capability)
        except ContextTooLarge:
            return "waits"
        live = [r for r in self.records if r.state is not EngineState.STOPPING and r.unload_from is None]
        if any(r.model.name == model.name for r in live):
            return "waits"
        wish = _Planned(model, variant, self.memory.need(model, variant), 0)
        if self.placement.fits_beside(live, wish):
            return "fits"
        victims = self.placement.victims(wish, live)
        return "evicts" if victims is not None and not any(v.busy for v in victims) else "waits"

    def phase(self, ticket_id: int) -> Phase | None:
        """What a queued request waits for; None once it has left the queue."""
        return next((t.phase for t in self.queue if t.id == ticket_id), None)

    # ------------------------------------------------------------------ requests

    def submit(
        self,
        model: ModelConfig,
        min_ctx: int,
        now: float,
        capability: str | None = None,
        priority: Priority = Priority.INTERACTIVE,
        keep_alive: float | None = None,
    ) -> tuple[Ticket, list[Effect[H]]]:
        """A request wants an engine of ``model`` with at least ``min_ctx`` context (0: any), of a
        variant serving ``capability`` (None: any); ``keep_alive`` (seconds, inf, 0) replaces the
        idle timeout of the engine it is granted."""
        ticket = Ticket(next(self._arrivals), model, min_ctx, now, capability, priority, keep_alive=keep_alive)
        if self.closed:
            return ticket, [Fail(ticket, ShuttingDown("the gateway is shutting down"))]
        largest = self.largest_context(model, capability)
        if min_ctx > largest:
            return ticket, [Fail(ticket, ContextTooLarge(model.name, min_ctx, largest))]
        record = self._serving(ticket)
        if record is not None:
            return ticket, [self._grant(ticket, record, now)]
        self._enqueue(ticket)
        return ticket, self._pump(now)

    def _enqueue(self, ticket: Ticket) -> None:
        """Its place in the queue, for good: a batch request at the end; an interactive one before
        the batch requests at the end that have let fewer than ``batch_overtakes`` go ahead."""
        place = len(self.queue)
        if ticket.priority is Priority.INTERACTIVE:
            bound = self.config.server.batch_overtakes
            while place > 0:
                ahead = self.queue[place - 1]
                if ahead.priority is not Priority.BATCH or ahead.overtaken >= bound:
                    break
                place -= 1
            for passed in self.queue[place:]:
                passed.overtaken += 1
        self.queue.insert(place, ticket)

    def cancel(self, ticket_id: int, now: float) -> list[Effect[H]]:
        """The request stopped waiting (client gone, queue timeout): what it had decided is undone."""
        before = len(self.queue)
        self.queue = [t for t in self.queue if t.id != ticket_id]
        return self._pump(now) if len(self.queue) != before else []

    def release(self, record_id: int, now: float) -> list[Effect[H]]:
        """A granted request is done with its engine."""
        record = self.record(record_id)
        if record is None:
            return []  # crashed and gone meanwhile
        record.in_flight -= 1
        record.last_used = now
        if self.queue or record.draining or record.idle_after == 0:
            return self._pump(now)
        return []

    # ------------------------------------------------------------------ engine lifecycle

    def started(self, record_id: int, handle: H, n_ctx: int, now: float) -> list[Effect[H]]:
        record = self.record(record_id)
        if record is None:
            return []
        record.state = EngineState.READY
        record.handle = handle
        record.n_ctx = n_ctx
        record.last_used = now
        self._learned_ctx[(record.model.name, record.variant.fingerprint)] = n_ctx
        if self.closed:
            return [self._stop(record, "the gateway is shutting down")]
        # Its own requests first: a request ahead of them in the queue could otherwise pick this
        # engine, idle, to stop for its own start.
        effects: list[Effect[H]] = []
        for ticket in list(self.queue):
            if self._serving(ticket) is record:
                self.queue.remove(ticket)
                effects.append(self._grant(ticket, record, now))
        return effects + self._pump(now)

    def start_failed(self, record_id: int, error: GatewayError, now: float) -> list[Effect[H]]:
        """Requests queued for exactly this engine share its error (retrying a broken engine once per
        queued request would make the last one wait queue length x start-up timeout); requests that
        arrive later try again."""
        record = self.record(record_id)
        if record is None:
            return []
        self.records.remove(record)
        effects: list[Effect[H]] = [Gone(record)]
        for ticket in list(self.queue):
            if ticket.model.name == record.model.name and self._wanted_variant(ticket) is record.variant:
                self.queue.remove(ticket)
                effects.append(Fail(ticket, error))
        return effects + self._pump(now)

    def stopped(self, record_id: int, now: float) -> list[Effect[H]]:
        record = self.record(record_id)
        if record is None:
            return []
        self.records.remove(record)
        return [Gone(record), *self._pump(now)]

    def crashed(self, record_id: int, now: float) -> list[Effect[H]]:
        """A ready engine exited on its own. It is stopped all the same (its process group may hold
        children, and the guard must forget it); the next request for it starts a new one."""
        record = self.record(record_id)
        if record is None or record.state is not EngineState.READY:
            return []  # a start reports its own failure; a stop its own end
        return [self._stop(record, "crashed"), *self._pump(now)]

    def hung(self, record_id: int, now: float) -> list[Effect[H]]:
        """A ready engine stopped answering (a stopped process, a stuck GPU): it is killed, which
        ends the requests it holds (the client gets an error, not a wait), and the next request
        starts a new one."""
        record = self.record(record_id)
        if record is None or record.state is not EngineState.READY:
            return []
        return [self._stop(record, "not answering (hung)", hung=True), *self._pump(now)]

    def measured(self, record_id: int, now: float) -> list[Effect[H]]:
        """The memory book learned a new figure for this engine's variant."""
        record = self.record(record_id)
        if record is None:
            return []
        record.need = self.memory.need(record.model, record.variant)
        return self._rebalance(now, "over the memory budget (measured)") + self._pump(now)

    def estimated(self, now: float) -> list[Effect[H]]:
        """The memory book learned estimates: engines that counted for their pools whole (never
        measured) count for the estimate now, which may leave room for queued starts."""
        for record in self.records:
            record.need = self.memory.need(record.model, record.variant)
        return self._rebalance(now, "over the memory budget (estimated)") + self._pump(now)

    def idle_expired(self, record_id: int, now: float) -> list[Effect[H]]:
        record = self.record(record_id)
        if record is None or not record.ready or record.busy or record.draining:
            return []
        idle = record.idle_after
        if idle is None or now - record.last_used < idle - 1e-3:
            return []
        if any(t.model.name == record.model.name for t in self.queue):
            return []
        return [self._stop(record, f"idle for {idle:g} s")]

    def keep_alive(self, model_name: str, seconds: float, now: float) -> tuple[list[int], list[Effect[H]]]:
        """Ollama's keep_alive without a request: the model's engines now stay ``seconds`` once
        idle (inf: for ever); 0 stops the idle ones at once and the busy ones once their requests
        are done. Returns the ids of the engines stopped now."""
        for record in self.records:
            if record.model.name == model_name and record.state is not EngineState.STOPPING:
                record.keep_alive = seconds
        effects = self._pump(now)
        stopped = [e.record.id for e in effects if isinstance(e, Stop) and e.record.model.name == model_name]
        return stopped, effects

    # ------------------------------------------------------------------ operations

    def unload(self, model_name: str | None, now: float) -> tuple[list[int], list[Effect[H]]]:
        """Stop the model's engine (every engine if None) once the requests that arrived before
        this call are done. Returns the ids of the engines to wait for."""
        mark = next(self._arrivals)
        targets = [s for s in self.records if model_name is None or s.model.name == model_name]
        for record in targets:
            if record.state is not EngineState.STOPPING and record.unload_from is None:
                record.unload_from = mark
                record.stop_reason = "unloaded"
        return [record.id for record in targets], self._pump(now)

    def reload(self, config: Config, now: float) -> list[Effect[H]]:
        """A new config: engines whose launch is unchanged keep running; the others stop once the
        requests that arrived before the reload are done."""
        self.config = config
        self.placement = Placement(config)
        self.memory.budget = dict(config.server.pools)
        mark = next(self._arrivals)
        for record in self.records:
            model = config.model(record.model.name)
            same = None if model is None else next((v for v in model.variants if _same_launch(v, record.variant)), None)
            if model is not None and same is not None:
                record.model, record.variant = model, same
                record.need = self.memory.need(model, same)
            elif record.state is not EngineState.STOPPING and record.unload_from is None:
                record.unload_from = mark
                record.stop_reason = "changed by a reload"
        effects: list[Effect[H]] = []
        for ticket in list(self.queue):
            model = config.model(ticket.model.name)
            error: GatewayError | None = None
            if model is None:
                error = ModelNotFound(f"model {ticket.model.name!r} was removed by a config reload")
            elif ticket.min_ctx > self.largest_context(model, ticket.capability):
                error = ContextTooLarge(model.name, ticket.min_ctx, self.largest_context(model, ticket.capability))
            if error is not None:
                self.queue.remove(ticket)
                effects.append(Fail(ticket, error))
            else:
                assert model is not None
                ticket.model = model
        return effects + self._rebalance(now, "over the new placement limits") + self._pump(now)

    def shutdown(self, now: float) -> list[Effect[H]]:
        """Fail every queued request and stop every ready engine, busy or not (the caller gave them
        their grace); engines still starting are stopped by their own start when it returns."""
        self.closed = True
        effects: list[Effect[H]] = [Fail(t, ShuttingDown("the gateway is shutting down")) for t in self.queue]
        self.queue.clear()
        for record in self.records:
            if record.ready:
                effects.append(self._stop(record, "the gateway is shutting down"))
        return effects

    # ------------------------------------------------------------------ the decisions

    def _serving(self, ticket: Ticket) -> EngineRecord[H] | None:
        for record in self.records:
            if (
                record.ready
                and record.model.name == ticket.model.name
                and record.n_ctx is not None
                and record.n_ctx >= ticket.min_ctx
                and record.variant.serves(ticket.capability)
                and record.evict_for is None
                and (record.unload_from is None or ticket.id < record.unload_from)
            ):
                return record
        return None

    def _grant(self, ticket: Ticket, record: EngineRecord[H], now: float) -> Grant[H]:
        record.in_flight += 1
        record.last_used = now
        if ticket.keep_alive is not None:
            record.keep_alive = ticket.keep_alive  # the latest request's wins, as in Ollama
        return Grant(ticket, record)

    def _stop(self, record: EngineRecord[H], reason: str, hung: bool = False) -> Stop[H]:
        record.state = EngineState.STOPPING
        record.evict_for = None
        record.stop_reason = reason
        return Stop(record, reason, hung)

    def _wanted_variant(self, ticket: Ticket) -> Variant | None:
        try:
            return self.variant_for(ticket.model, ticket.min_ctx, ticket.capability)
        except ContextTooLarge:
            return None

    def _pump(self, now: float) -> list[Effect[H]]:
        """Walk the queue in queue order: grant, plan starts, stop what is in the way."""
        walk = self._begin_walk()
        effects: list[Effect[H]] = []
        for ticket in list(self.queue):
            served = self._serving(ticket)
            if served is not None:
                self.queue.remove(ticket)
                effects.append(self._grant(ticket, served, now))
            elif not self._waits_for_others(ticket, walk):
                effects.extend(self._plan_start(ticket, walk, now))
        effects.extend(self._stop_unloaded())
        effects.extend(self._stop_kept_no_longer())
        return effects

    def _begin_walk(self) -> _Walk:
        """Evictions are decided afresh on every walk, in queue order: forget the last ones (but
        remember who they were for, so a request keeps the victims it already picked)."""
        walk = _Walk(live=[r for r in self.records if r.state is not EngineState.STOPPING and r.unload_from is None])
        for record in self.records:
            if record.evict_for is not None:
                walk.draining_for.setdefault(record.evict_for, set()).add(record.id)
                record.evict_for = None
        return walk

    def _waits_for_others(self, ticket: Ticket, walk: _Walk) -> bool:
        """True (its phase set) when the request must wait for what others do: a start planned
        for its model, its model's engine starting or on its way out, or an earlier start that
        could not be planned."""
        name = ticket.model.name
        if name in walk.planning:
            ticket.phase = walk.planning[name].phase
            return True
        own = next((r for r in self.records if r.model.name == name), None)  # one per model at most
        if own is not None and own.state is EngineState.STARTING:
            fits = own.variant.serves(ticket.capability)
            fits = fits and self.effective_context(own.model, own.variant) >= ticket.min_ctx
            ticket.phase = Phase.STARTING if fits and own.unload_from is None else Phase.QUEUED
            return True
        if own is not None and (own.state is EngineState.STOPPING or own.draining):
            # Its engine is on its way out (for an earlier request, an unload or a crash): plan
            # a new one once it is gone, without taking room from anyone meanwhile.
            ticket.phase = Phase.STOPPING if own.state is EngineState.STOPPING else Phase.QUEUED
            return True
        if walk.held_back:
            ticket.phase = Phase.QUEUED
            return True
        return False

    def _plan_start(self, ticket: Ticket, walk: _Walk, now: float) -> list[Effect[H]]:
        """Start the request's engine now if there is room; else pick what must stop for it."""
        try:
            variant = self.variant_for(ticket.model, ticket.min_ctx, ticket.capability)
        except ContextTooLarge as exc:  # the context learned from an engine shrank the largest
            self.queue.remove(ticket)
            return [Fail(ticket, exc)]
        wish = _Planned(ticket.model, variant, self.memory.need(ticket.model, variant), -ticket.id)
        victims = self.placement.victims(wish, walk.live, walk.draining_for.get(ticket.id, ()))
        if victims is None:
            ticket.phase = Phase.QUEUED
            ticket.blocked_by = self._blocker(wish, walk.live)
            # Only engines still starting (or planned) free up by themselves: wait for them
            # before starting anything else. Pinned engines never do: don't hold others back.
            walk.held_back = any(not engine.ready for engine in walk.live)
            return []
        walk.planning[ticket.model.name] = ticket
        evicted = [victim for victim in victims if isinstance(victim, EngineRecord)]
        assert len(evicted) == len(victims)
        for victim in evicted:
            victim.evict_for = ticket.id
        walk.live = [engine for engine in walk.live if engine not in victims]
        if self.placement.fits_beside(self.records, wish):
            new: EngineRecord[H] = EngineRecord(
                next(self._record_ids), ticket.model, variant, EngineState.STARTING, dict(wish.need), now
            )
            self.records.append(new)
            walk.live.append(new)
            ticket.phase = Phase.STARTING
            return [Start(new)]
        walk.live.append(wish)
        reason = f"making room for {ticket.model.name!r}"
        effects: list[Effect[H]] = [self._stop(victim, reason) for victim in evicted if not victim.busy]
        ticket.phase = Phase.DRAINING if any(victim.busy for victim in evicted) else Phase.STOPPING
        return effects

    def _stop_unloaded(self) -> list[Effect[H]]:
        """Engines being unloaded stop once their last request is done."""
        return [
            self._stop(record, record.stop_reason or "unloaded")
            for record in self.records
            if record.unload_from is not None and record.ready and not record.busy
        ]

    def _stop_kept_no_longer(self) -> list[Effect[H]]:
        """Engines whose latest request asked for keep_alive 0 stop once idle, unless a request
        for their model waits (it would only start them again)."""
        waiting = {ticket.model.name for ticket in self.queue}
        return [
            self._stop(record, "keep_alive 0")
            for record in self.records
            if record.idle_after == 0
            and record.ready
            and not record.busy
            and not record.draining
            and record.model.name not in waiting
        ]

    def _rebalance(self, now: float, reason: str) -> list[Effect[H]]:
        """Limits lowered or a figure grew: unload engines, least recently used first, until the
        engines that stay fit again. Pinned engines stay."""
        live = [s for s in self.records if s.state is not EngineState.STOPPING and s.unload_from is None]
        if self.placement.within_budget(live):
            return []
        mark = next(self._arrivals)
        for record in sorted((s for s in live if s.ready and not s.model.pinned), key=lambda s: (s.busy, s.last_used)):
            record.unload_from = mark
            record.stop_reason = reason
            live.remove(record)
            if self.placement.within_budget(live):
                break
        return []

    def _blocker(self, wish: _Planned, live: list[Placed]) -> str:
        budget = self.placement.budget
        over = [(pool, mib) for pool, mib in wish.need.items() if pool in budget and mib > budget[pool] + 1e-6]
        if over:
            pool, mib = over[0]
            source = self.memory.source(wish.model, wish.variant)
            name, limit = wish.model.name, budget[pool]
            return f"{name!r} needs {mib:g} MiB on {pool} ({source}), more than its budget ({limit:g} MiB)"
        starting = [e.model.name for e in live if not e.ready]
        if starting:
            return f"waiting for {', '.join(map(repr, starting))} to finish starting"
        held = [
            (name, e.model.name) for e in live if e.model.pinned for name in shared_workers(wish.variant, e.variant)
        ]
        if held:
            worker, holder = held[0]
            return f"RPC worker {worker!r} is held by the pinned model {holder!r}"
        pinned = [e.model.name for e in live if e.model.pinned]
        if pinned:
            source = self.memory.source(wish.model, wish.variant)
            unknown = " (its memory was never measured: declare `memory`)" if source == "unknown" else ""
            return f"pinned model(s) {', '.join(map(repr, pinned))} leave no room for {wish.model.name!r}{unknown}"
        return f"no room for {wish.model.name!r}"


def _same_launch(a: Variant, b: Variant) -> bool:
    return (a.binary, a.launch_args, a.context, a.connect, a.env) == (
        b.binary,
        b.launch_args,
        b.context,
        b.connect,
        b.env,
    )
