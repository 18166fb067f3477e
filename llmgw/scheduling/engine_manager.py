"""EngineManager: carries out the scheduler's decisions, and lends engines to requests.

The decisions (which engines run, who waits, what stops) are the :class:`Scheduler`'s; this
class turns its effects into runtime calls, futures and timers, all on the event loop's one
thread, so the scheduler's state needs no lock.

A request holds a *lease* on an engine for as long as it uses it::

    async with manager.lease(model, min_ctx) as engine:
        ...

Waiting for a lease is bounded by ``queue_timeout`` (503 with Retry-After), except while the
engine it waits for is starting or the engines in its way are stopping: those have their own
timeouts and do not eat the queue's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from llmgw.config import Config, ModelConfig, Priority, Variant
from llmgw.errors import EngineStartError, GatewayError, QueueTimeout
from llmgw.modelfile import ModelFiles, model_path
from llmgw.runtime import RunningEngine, Runtime
from llmgw.scheduling.estimate import pool_figures, variant_estimate
from llmgw.scheduling.memory import MemoryBook
from llmgw.scheduling.scheduler import (
    Effect,
    EngineRecord,
    Fail,
    Gone,
    Grant,
    Phase,
    Scheduler,
    Start,
    Stop,
    Ticket,
)
from llmgw.state import StateStore

logger = logging.getLogger(__name__)

_REMEASURE_EVERY = 30.0  # seconds between memory measurements of a busy engine (the KV cache grows with use)
# A busy engine that misses this many health probes in a row (one every health_check_timeout, each
# waiting that long) is hung: noticed within 2 x 2 x health_check_timeout, 20 s by default.
_HUNG_AFTER = 2
_MEMORY_SECTION = "memory"


@dataclass(frozen=True)
class ManagerHooks:
    """Who hears what the manager did (metrics, the status tracker): plain callables, so this
    layer knows nothing of Prometheus or of events."""

    engine_started: Callable[[str, float], None] | None = None  # model, seconds to start
    engine_stopped: Callable[[str, str], None] | None = None  # model, reason
    changed: Callable[[], None] | None = None  # after every batch of effects


def new_scheduler(config: Config, state: StateStore) -> Scheduler[RunningEngine]:
    """The scheduler an engine manager drives, with the memory figures kept in ``state``."""
    return Scheduler(config, MemoryBook(dict(config.server.pools), state.section(_MEMORY_SECTION)))


class EngineManager:
    def __init__(
        self,
        config: Config,
        runtime: Runtime,
        state: StateStore | None = None,
        scheduler: Scheduler[RunningEngine] | None = None,
        hooks: ManagerHooks | None = None,
        files: ModelFiles | None = None,
    ) -> None:
        """``scheduler``: one made with :func:`new_scheduler` when others read it too (the status
        tracker); else the manager makes its own. ``files``: where model files' headers are read
        (for the memory estimate; None: no estimates)."""
        self.config = config
        self.runtime = runtime
        self.state = state or StateStore(None)
        self.scheduler = scheduler or new_scheduler(config, self.state)
        self.memory = self.scheduler.memory
        self.hooks = hooks or ManagerHooks()
        self._waiters: dict[int, asyncio.Future[EngineRecord[RunningEngine]]] = {}
        self._gone: dict[int, asyncio.Event] = {}
        self._idle: dict[int, tuple[float, asyncio.TimerHandle]] = {}
        self._measured_at: dict[int, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._probed: set[int] = set()  # engines whose health is probed while they serve requests
        self.files = files

    # ----------------------------------------------------------------- queries

    @property
    def in_flight(self) -> int:
        return self.scheduler.in_flight

    @property
    def queued(self) -> int:
        return len(self.scheduler.queue)

    @property
    def engines(self) -> list[EngineRecord[RunningEngine]]:
        """Every engine the scheduler knows: starting, ready or stopping."""
        return list(self.scheduler.records)

    @property
    def waiting(self) -> list[Ticket]:
        return list(self.scheduler.queue)

    def is_running(self, model_name: str) -> bool:
        return self.scheduler.is_running(model_name)

    def effective_context(self, model: ModelConfig, variant: Variant) -> int:
        return self.scheduler.effective_context(model, variant)

    def largest_context(self, model: ModelConfig, capability: str | None = None) -> int:
        return self.scheduler.largest_context(model, capability)

    def variant_for(self, model: ModelConfig, min_ctx: int, capability: str | None = None) -> Variant:
        return self.scheduler.variant_for(model, min_ctx, capability)

    def memory_of(self, record: EngineRecord[RunningEngine]) -> tuple[dict[str, float], str]:
        """The engine's memory in MiB per pool, and where the figure comes from."""
        return self.memory.figures(record.model, record.variant), self.memory.source(record.model, record.variant)

    # ----------------------------------------------------------------- leases

    @contextlib.asynccontextmanager
    async def lease(
        self, model: ModelConfig, min_ctx: int = 0, capability: str | None = None, keep_alive: float | None = None
    ) -> AsyncIterator[RunningEngine]:
        """Hold an engine of ``model`` with at least ``min_ctx`` context for the whole block, of a
        variant serving ``capability`` (a route family; None: any).

        ``min_ctx`` 0 means "any variant": the running one, or the smallest if none runs.
        ``keep_alive`` (seconds; inf: for ever; 0: stop once idle) replaces the engine's idle timeout.
        """
        async with self.reserve(model, min_ctx, capability, keep_alive=keep_alive) as reservation:
            yield await reservation.granted()

    @contextlib.asynccontextmanager
    async def reserve(
        self,
        model: ModelConfig,
        min_ctx: int = 0,
        capability: str | None = None,
        priority: Priority = Priority.INTERACTIVE,
        keep_alive: float | None = None,
    ) -> AsyncIterator[Reservation]:
        """:meth:`lease` in two steps: the request joins the scheduler at once, and the caller
        sees whether it waits (loading feedback) before it awaits the engine. Leaving the block
        gives the engine back, or withdraws the request if it was never granted. ``priority``
        places it in the queue (the scheduler's Priority rule)."""
        loop = asyncio.get_running_loop()
        ticket, effects = self.scheduler.submit(model, min_ctx, loop.time(), capability, priority, keep_alive)
        future: asyncio.Future[EngineRecord[RunningEngine]] = loop.create_future()
        self._waiters[ticket.id] = future
        self._apply(effects)
        try:
            yield Reservation(self, ticket, future)
        finally:
            self._settle(ticket, future)

    def _settle(self, ticket: Ticket, future: asyncio.Future[EngineRecord[RunningEngine]]) -> None:
        """A reservation ends: its engine goes back, or its request leaves the queue."""
        self._waiters.pop(ticket.id, None)
        now = self._now()
        if future.done() and not future.cancelled() and future.exception() is None:
            record = future.result()
            self._apply(self.scheduler.release(record.id, now))
            if now - self._measured_at.get(record.id, now) > _REMEASURE_EVERY:
                self._measured_at[record.id] = now
                self._spawn(self._measure(record))
        else:
            self._apply(self.scheduler.cancel(ticket.id, now))

    async def _wait(self, ticket: Ticket, future: asyncio.Future[EngineRecord[RunningEngine]]) -> None:
        """Until ``future`` is settled; raises QueueTimeout past ``queue_timeout``."""
        timeout = self.config.server.queue_timeout
        done, _ = await asyncio.wait([future], timeout=timeout)
        if done:
            return
        phase = self.scheduler.phase(ticket.id)
        if phase in (Phase.STARTING, Phase.STOPPING):
            # Its engine is starting, or the ones in its way are stopping: both are bounded by their
            # own timeouts, which do not eat the queue's.
            grace = max(v.timeouts.engine_stop + v.timeouts.engine_startup for v in ticket.model.variants) + 5.0
            done, _ = await asyncio.wait([future], timeout=grace)
            if done:
                return
        why = f": {ticket.blocked_by}" if ticket.blocked_by else f" ({phase or 'queued'})"
        raise QueueTimeout(
            f"waited {timeout:g} s for an engine of model {ticket.model.name!r}{why}; "
            f"{self.in_flight} request(s) in flight, {self.queued} queued; try again"
        )

    # ----------------------------------------------------------------- operations

    async def unload(self, model_name: str | None = None) -> list[str]:
        """Stop the model's engine (every engine if None) once the requests that arrived before are
        done; returns the names of the models stopped."""
        ids, effects = self.scheduler.unload(model_name, self._now())
        names = [record.model.name for record in self.scheduler.records if record.id in ids]
        await self._apply_and_wait_gone(ids, effects)
        return names

    async def keep_alive(self, model_name: str, seconds: float) -> None:
        """The model's engines stay ``seconds`` once idle (see Scheduler.keep_alive); returns once
        the engines it stops at once (0, idle) are gone. Busy ones stop when their requests end."""
        ids, effects = self.scheduler.keep_alive(model_name, seconds, self._now())
        await self._apply_and_wait_gone(ids, effects)

    async def adopt_config(self, config: Config) -> None:
        """Switch to a new config: engines whose launch is unchanged keep running, the others stop
        once their requests are done (this waits for them)."""
        self.config = config
        before = {record.id for record in self.scheduler.records if not record.draining}
        effects = self.scheduler.reload(config, self._now())
        for record in self.scheduler.records:
            if record.handle is not None:
                record.handle.model, record.handle.variant = record.model, record.variant
            if record.id in before and not record.draining:
                logger.info("reload: engine of model %r kept (launch unchanged)", record.model.name)
        stopping = [record.id for record in self.scheduler.records if record.id in before and record.draining]
        for record in self.scheduler.records:
            if record.id in stopping:
                logger.info("reload: model %r changed; its engine stops once its requests are done", record.model.name)
        await self._apply_and_wait_gone(stopping, effects)

    async def learn_estimates(self) -> None:
        """Estimate the memory of every variant that declares none from its model file's header
        (read in a thread, once per change of the file), so a variant never measured is placed
        by its estimate instead of taking its pools whole. Measured figures still win."""
        if self.files is None:
            return
        changed = False
        wanted = [
            (model, variant, path)
            for model in self.config.models
            for variant in model.variants
            if variant.memory is None and (path := model_path(variant.args)) is not None
        ]
        # Only local files (not -hf, nor a fake engine's model name): nothing to read otherwise.
        present = await asyncio.to_thread(lambda: {path for _, _, path in wanted if os.path.isfile(path)})
        for model, variant, path in wanted:
            info = await self.files.get(path) if path in present else None
            if info is None:
                continue
            try:
                figures = pool_figures(info, variant)
                parts = variant_estimate(info, variant)
            except (ArithmeticError, ValueError, IndexError):  # a header too odd to reason about
                logger.warning("model %r variant %d: no memory estimate from %s", model.name, variant.index, path)
                continue
            if self.memory.estimated(model, variant, figures):
                changed = True
                shown = ", ".join(f"{pool} {mib:g} MiB" for pool, mib in figures.items())
                logger.info(
                    "model %r variant %d: memory estimated from %s: %s (%s)",
                    model.name,
                    variant.index,
                    os.path.basename(path),
                    shown,
                    parts,
                )
        if changed:
            self._apply(self.scheduler.estimated(self._now()))

    async def shutdown(self) -> None:
        """Refuse new leases, fail queued ones, stop every engine (starting ones included)."""
        self.runtime.close()
        ids = [record.id for record in self.scheduler.records]
        effects = self.scheduler.shutdown(self._now())
        for _, handle in self._idle.values():
            handle.cancel()
        self._idle.clear()
        await self._apply_and_wait_gone(ids, effects, shutting_down=True)
        for task in list(self._tasks):
            task.cancel()

    async def _apply_and_wait_gone(
        self, ids: list[int], effects: list[Effect[RunningEngine]], shutting_down: bool = False
    ) -> None:
        """Carry out ``effects``, then wait until the engines ``ids`` are gone.

        Stops are bounded by ``engine_stop_timeout`` (then SIGKILL); engines that still serve
        requests are waited for up to ``queue_timeout``, except at shutdown, where the caller
        already gave them their grace and the scheduler stops them at once.
        """
        events = [self._gone[i] for i in ids if i in self._gone]
        self._apply(effects)
        if not events:
            return
        stop = max(v.timeouts.engine_stop for m in self.config.models for v in m.variants)
        limit = stop + 10.0 if shutting_down else self.config.server.queue_timeout + stop
        waits = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            _, pending = await asyncio.wait(waits, timeout=limit)
        finally:
            for wait in waits:
                wait.cancel()
        if pending and not shutting_down:
            raise QueueTimeout("engines are still serving requests; they stop as soon as those end")
        if pending:
            logger.warning("shutdown: %d engine(s) did not stop within %.0f s", len(pending), limit)

    # ----------------------------------------------------------------- carrying out effects

    def _apply(self, effects: list[Effect[RunningEngine]]) -> None:
        pending = list(effects)
        while pending:
            effect = pending.pop(0)
            if isinstance(effect, Grant):
                future = self._waiters.pop(effect.ticket.id, None)
                if future is None or future.done():  # the waiter gave up meanwhile: give the engine back
                    pending.extend(self.scheduler.release(effect.record.id, self._now()))
                else:
                    future.set_result(effect.record)
            elif isinstance(effect, Fail):
                future = self._waiters.pop(effect.ticket.id, None)
                if future is not None and not future.done():
                    future.set_exception(effect.error)
            elif isinstance(effect, Start):
                self._gone[effect.record.id] = asyncio.Event()
                self._spawn(self._start(effect.record))
            elif isinstance(effect, Stop):
                self._spawn(self._stop(effect.record, effect.reason, effect.hung))
            elif isinstance(effect, Gone):
                event = self._gone.pop(effect.record.id, None)
                if event is not None:
                    event.set()
                self._measured_at.pop(effect.record.id, None)
        self._sync_idle_timers()
        self._probe_busy_engines()
        if self.hooks.changed is not None:
            self.hooks.changed()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, record: EngineRecord[RunningEngine]) -> None:
        model, variant = record.model, record.variant
        started = self._now()
        try:
            engine = await self.runtime.start(model, variant, lambda: self._on_crash(record.id))
        except GatewayError as exc:
            self._apply(self.scheduler.start_failed(record.id, exc, self._now()))
            return
        except Exception as exc:  # never leave requests waiting on a start that died of a bug
            logger.exception("starting model %r failed unexpectedly", model.name)
            error = EngineStartError(f"model {model.name!r}: the engine could not be started ({type(exc).__name__})")
            self._apply(self.scheduler.start_failed(record.id, error, self._now()))
            return
        if self.hooks.engine_started is not None:
            self.hooks.engine_started(model.name, self._now() - started)
        self._measured_at[record.id] = self._now()
        self._apply(self.scheduler.started(record.id, engine, engine.n_ctx, self._now()))
        await self._measure(record)

    async def _stop(self, record: EngineRecord[RunningEngine], reason: str, hung: bool = False) -> None:
        """Stop an engine. One with no request in flight is killed at once (``graceful_stop`` off):
        nothing in it is worth llama-server's own shutdown, which every switch would wait for."""
        logger.info("stopping engine of model %r (variant %d): %s", record.model.name, record.variant.index, reason)
        kill = not self.config.server.graceful_stop and not record.busy
        try:
            if record.handle is not None:
                await self.runtime.stop(record.handle, kill=kill, hung=hung)
        except Exception:
            logger.exception("stopping the engine of model %r failed", record.model.name)
        finally:
            if self.hooks.engine_stopped is not None:
                self.hooks.engine_stopped(record.model.name, reason)
            self._apply(self.scheduler.stopped(record.id, self._now()))

    async def _measure(self, record: EngineRecord[RunningEngine]) -> None:
        if record.handle is None or not record.ready:
            return
        try:
            usage = await self.runtime.measure(record.handle)
        except Exception:
            logger.exception("measuring the memory of model %r failed", record.model.name)
            return
        if usage is None or self.scheduler.record(record.id) is None:
            return
        if self.memory.record(record.model, record.variant, usage):
            logger.info(
                "model %r variant %d measured: %s",
                record.model.name,
                record.variant.index,
                ", ".join(
                    f"{pool} {mib:g} MiB" for pool, mib in self.memory.figures(record.model, record.variant).items()
                ),
            )
            self.state.put(_MEMORY_SECTION, self.memory.snapshot())
            self._apply(self.scheduler.measured(record.id, self._now()))

    def _on_crash(self, record_id: int) -> None:
        self._apply(self.scheduler.crashed(record_id, self._now()))

    # ----------------------------------------------------------------- hung engines

    def _probe_busy_engines(self) -> None:
        for record in self.scheduler.records:
            if record.ready and record.busy and record.id not in self._probed:
                self._probed.add(record.id)
                self._spawn(self._probe_while_busy(record))

    async def _probe_while_busy(self, record: EngineRecord[RunningEngine]) -> None:
        """Probe a busy engine's health; one that stops answering is killed (see Scheduler.hung)."""
        interval = record.variant.timeouts.health_check
        misses = 0
        try:
            while record.ready and record.busy and self.scheduler.record(record.id) is record:
                await asyncio.sleep(interval)
                if not (record.ready and record.busy):
                    break
                if record.handle is None or await self.runtime.responsive(record.handle, interval):
                    misses = 0
                    continue
                misses += 1
                logger.warning("model %r: engine did not answer its health check (%d)", record.model.name, misses)
                if misses >= _HUNG_AFTER:
                    logger.error("model %r: engine no longer answers (hung?): killing it", record.model.name)
                    self._apply(self.scheduler.hung(record.id, self._now()))
                    break
        finally:
            self._probed.discard(record.id)

    # ----------------------------------------------------------------- idle unload

    def _sync_idle_timers(self) -> None:
        """One timer per idle engine, due ``engine_idle_timeout`` (or its keep_alive) after its last use."""
        wanted: dict[int, float] = {}
        for record in self.scheduler.records:
            idle = record.idle_after
            if record.ready and not record.busy and not record.draining and idle and not self.scheduler.closed:
                wanted[record.id] = record.last_used + idle
        for record_id, (due, handle) in list(self._idle.items()):
            if wanted.get(record_id) != due:
                handle.cancel()
                del self._idle[record_id]
        if not wanted:
            return
        loop = asyncio.get_running_loop()
        for record_id, due in wanted.items():
            if record_id not in self._idle:
                self._idle[record_id] = (due, loop.call_at(due, self._on_idle, record_id))

    def _on_idle(self, record_id: int) -> None:
        self._idle.pop(record_id, None)
        self._apply(self.scheduler.idle_expired(record_id, self._now()))

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()


class Reservation:
    """One request's claim on an engine (:meth:`EngineManager.reserve`)."""

    def __init__(
        self, manager: EngineManager, ticket: Ticket, future: asyncio.Future[EngineRecord[RunningEngine]]
    ) -> None:
        self.ticket = ticket
        self._manager = manager
        self._future = future

    @property
    def waiting(self) -> bool:
        """True when no engine was granted at once: the request waits in the queue."""
        return not self._future.done()

    async def granted(self) -> RunningEngine:
        """The engine, once granted; raises the scheduler's error (QueueTimeout, ContextTooLarge...)."""
        if not self._future.done():
            await self._manager._wait(self.ticket, self._future)
        record = self._future.result()
        assert record.handle is not None  # granted engines are ready
        return record.handle
