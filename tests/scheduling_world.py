"""A world for driving the pure Scheduler in tests: configs built in Python and a fake runtime
that records the effects and lets the test decide when starts and stops finish."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmgw.config import Config, ModelConfig, Priority, RpcWorker, ServerConfig, Timeouts, Variant
from llmgw.errors import EngineStartError, GatewayError
from llmgw.scheduling.memory import MemoryBook
from llmgw.scheduling.placement import Placement
from llmgw.scheduling.scheduler import (
    Effect,
    EngineRecord,
    EngineState,
    Fail,
    Gone,
    Grant,
    Scheduler,
    Start,
    Stop,
    Ticket,
)

TIMEOUTS = Timeouts(health_check=1.0, engine_startup=30.0, engine_idle=0.0, engine_stop=5.0)


def variant(
    index: int,
    context: int,
    port: int,
    *,
    memory: dict[str, float] | None = None,
    pools: tuple[str, ...] = (),
    idle: float = 0.0,
    args: tuple[str, ...] = (),
    rpc: tuple[RpcWorker, ...] = (),
) -> Variant:
    return Variant(
        index=index,
        binary="/bin/engine",
        args=("--port", str(port), "-c", str(context), *args),
        context=context,
        connect=f"http://127.0.0.1:{port}",
        timeouts=Timeouts(TIMEOUTS.health_check, TIMEOUTS.engine_startup, idle, TIMEOUTS.engine_stop),
        pools=pools,
        memory=None if memory is None else tuple(sorted(memory.items())),
        rpc=rpc,
    )


def model(
    name: str,
    contexts: tuple[int, ...] = (1024,),
    *,
    port: int,
    memory: dict[str, float] | list[dict[str, float] | None] | None = None,
    pools: tuple[str, ...] = (),
    pinned: bool = False,
    exclusive: bool = False,
    idle: float = 0.0,
    args: tuple[str, ...] = (),
    rpc: tuple[RpcWorker, ...] = (),
) -> ModelConfig:
    memories = memory if isinstance(memory, list) else [memory] * len(contexts)
    variants = tuple(
        variant(i, ctx, port, memory=mem, pools=pools, idle=idle, args=args, rpc=rpc)
        for i, (ctx, mem) in enumerate(zip(contexts, memories, strict=True), 1)
    )
    return ModelConfig(name=name, engine="llama.cpp", variants=variants, pinned=pinned, exclusive=exclusive)


def config(
    models: list[ModelConfig],
    *,
    max_engines: int = 1,
    budget: dict[str, float] | None = None,
    workers: tuple[RpcWorker, ...] = (),
    batch_overtakes: int = ServerConfig.batch_overtakes,
) -> Config:
    server = ServerConfig(
        listen=(("127.0.0.1", 7777),),
        timeouts=TIMEOUTS,
        queue_timeout=60.0,
        max_engines=max_engines,
        memory_budget=tuple(sorted((budget or {}).items())),
        rpc_workers=workers,
        batch_overtakes=batch_overtakes,
    )
    return Config(path="test.lua", server=server, models=tuple(models))


@dataclass
class World:
    """The scheduler plus what its effects did: leases held, starts and stops under way."""

    scheduler: Scheduler
    now: float = 0.0
    granted: dict[int, EngineRecord] = field(default_factory=dict)  # ticket id -> record it holds
    failed: dict[int, GatewayError] = field(default_factory=dict)
    starting: list[EngineRecord] = field(default_factory=list)
    stopping: list[EngineRecord] = field(default_factory=list)
    log: list[Effect] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, cfg: Config, measured: dict[str, dict[str, float]] | None = None) -> World:
        return cls(Scheduler(cfg, MemoryBook(dict(cfg.server.pools), measured)))

    # -- driving --------------------------------------------------------------------------

    def take(self, effects: list[Effect]) -> list[Effect]:
        """Record the effects and check the rules every effect must keep."""
        placement = Placement(self.scheduler.config)
        for effect in effects:
            self.log.append(effect)
            if isinstance(effect, Grant):
                self.granted[effect.ticket.id] = effect.record
            elif isinstance(effect, Fail):
                self.failed[effect.ticket.id] = effect.error
            elif isinstance(effect, Start):
                others = [s for s in self.scheduler.records if s is not effect.record]
                if not placement.fits_beside(others, effect.record):
                    beside = [s.model.name for s in others]
                    self.violations.append(f"start of {effect.record.model.name} beside {beside}")
                self.starting.append(effect.record)
            elif isinstance(effect, Stop):
                if effect.record.in_flight and effect.reason not in ("crashed", "the gateway is shutting down"):
                    self.violations.append(f"busy {effect.record.model.name} stopped: {effect.reason}")
                self.stopping.append(effect.record)
            elif isinstance(effect, Gone):
                pass
        return effects

    def request(
        self,
        m: ModelConfig,
        min_ctx: int = 0,
        priority: Priority = Priority.INTERACTIVE,
        keep_alive: float | None = None,
    ) -> Ticket:
        ticket, effects = self.scheduler.submit(m, min_ctx, self.now, priority=priority, keep_alive=keep_alive)
        self.take(effects)
        return ticket

    def release(self, ticket: Ticket) -> None:
        record = self.granted.pop(ticket.id)
        self.take(self.scheduler.release(record.id, self.now))

    def finish_start(self, record: EngineRecord, n_ctx: int | None = None, ok: bool = True) -> None:
        self.starting.remove(record)
        if ok:
            self.take(self.scheduler.started(record.id, object(), n_ctx or record.variant.slot_context, self.now))
        else:
            error = EngineStartError(f"{record.model.name} failed")
            self.take(self.scheduler.start_failed(record.id, error, self.now))

    def finish_stop(self, record: EngineRecord) -> None:
        self.stopping.remove(record)
        self.take(self.scheduler.stopped(record.id, self.now))

    def settle(self, rounds: int = 20) -> None:
        """Finish every start (successfully) and every stop, until nothing is under way."""
        for _ in range(rounds):
            if not self.starting and not self.stopping:
                return
            for record in list(self.starting):
                self.finish_start(record)
            for record in list(self.stopping):
                self.finish_stop(record)
        raise AssertionError("the world did not settle")

    # -- looking ----------------------------------------------------------------------------

    def running(self) -> list[str]:
        return sorted(s.model.name for s in self.scheduler.records if s.state is EngineState.READY)

    def record_of(self, name: str) -> EngineRecord:
        (record,) = [s for s in self.scheduler.records if s.model.name == name]
        return record

    def holds(self, ticket: Ticket) -> EngineRecord | None:
        return self.granted.get(ticket.id)

    def check(self) -> None:
        """Rules that hold at every moment."""
        assert not self.violations, self.violations
        records = self.scheduler.records
        names = [s.model.name for s in records]
        assert len(names) == len(set(names)), f"two engines of one model: {names}"
        addresses = [s.variant.address for s in records]
        assert len(addresses) == len(set(addresses)), f"two engines on one address: {addresses}"
        workers = [w.name for s in records if s.state is not EngineState.STOPPING for w in s.variant.rpc]
        assert len(workers) == len(set(workers)), f"two engines on one RPC worker: {workers}"
        assert all(s.in_flight >= 0 for s in records)


def names(effects: list[Any], kind: type) -> list[str]:
    return [e.record.model.name for e in effects if isinstance(e, kind)]
