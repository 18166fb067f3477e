"""EngineManager: variant choice, switching, start-up failures, leases and the queue, unloads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from conftest import FakeModel, ensure_engine, free_port, wait_for, write_config
from llmgw.config import Config
from llmgw.errors import EngineStartError, EngineStartTimeout, QueueTimeout, ShuttingDown
from llmgw.runtime import EngineStatus, ProcessRuntime, RunningEngine
from llmgw.scheduling import EngineManager, ManagerHooks
from llmgw.scheduling.scheduler import EngineState, Phase
from llmgw.upstream.http import EngineHTTPClient

HANG = 10.0  # generous bound for things that take well under a second
MakeModel = Callable[..., FakeModel]


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kinds(model: FakeModel) -> list[str]:
    return [e["event"] for e in model.read_events()]


def pid_of(engine: RunningEngine) -> int:
    pid = engine.process.pid
    assert pid is not None
    return pid


class Holder:
    """A lease held in a background task until :meth:`release`."""

    def __init__(
        self, manager: EngineManager, model: Any, min_ctx: int = 0, label: str = "", order: list[str] | None = None
    ):
        self.acquired = asyncio.Event()
        self._release = asyncio.Event()
        self.engine: RunningEngine | None = None
        self.task = asyncio.ensure_future(self._run(manager, model, min_ctx, label, order))

    async def _run(self, manager: EngineManager, model: Any, min_ctx: int, label: str, order: list[str] | None) -> None:
        async with manager.lease(model, min_ctx) as engine:
            self.engine = engine
            if order is not None:
                order.append(label)
            self.acquired.set()
            await self._release.wait()

    def release(self) -> None:
        self._release.set()

    async def wait_acquired(self) -> RunningEngine:
        waiter = asyncio.ensure_future(self.acquired.wait())
        await asyncio.wait([waiter, self.task], timeout=HANG, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self.task.done() and self.task.exception() is not None:
            raise self.task.exception()  # type: ignore[misc]
        assert self.engine is not None, "lease not acquired in time"
        return self.engine


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.made: list[tuple[EngineManager, EngineHTTPClient]] = []
        self.holders: list[Holder] = []
        self.port = free_port()

    def config(self, models: list[FakeModel], name: str = "c.lua", **server: Any) -> Config:
        return write_config(self.tmp_path / name, models, self.port, **server)

    def manager(self, models: list[FakeModel], hooks: ManagerHooks | None = None, **server: Any) -> EngineManager:
        http = EngineHTTPClient.create()
        manager = EngineManager(self.config(models, **server), ProcessRuntime(http), hooks=hooks)
        self.made.append((manager, http))
        return manager

    def hold(self, manager: EngineManager, model: Any, min_ctx: int = 0, **kwargs: Any) -> Holder:
        holder = Holder(manager, model, min_ctx, **kwargs)
        self.holders.append(holder)
        return holder

    async def close(self) -> None:
        for holder in self.holders:
            holder.release()
        for holder in self.holders:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(holder.task, HANG)
        for manager, http in self.made:
            await manager.shutdown()
            http.close()


@pytest.fixture
def harness(io_loop: Any, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    io_loop.run_sync(h.close, timeout=60)


def current(manager: EngineManager) -> RunningEngine | None:
    """The one ready engine (these tests run one at a time), or None."""
    ready = [record for record in manager.engines if record.ready]
    assert len(ready) <= 1, ready
    return ready[0].handle if ready else None


def serves(manager: EngineManager, name: str, tokens: int) -> bool:
    """A ready engine of the model holds ``tokens``: a request needing that many is granted at once."""
    return any(s.ready and s.model.name == name and (s.n_ctx or 0) >= tokens for s in manager.engines)


def model_of(manager: EngineManager, fake: FakeModel) -> Any:
    model = manager.config.model(fake.name)
    assert model is not None
    return model


# ----------------------------------------------------------------------------- variant choice


async def test_smallest_variant_whatever_the_config_order(
    io_loop: Any, harness: Harness, make_model: MakeModel
) -> None:
    a = make_model("a", [8192, 2048, 4096])
    manager = harness.manager([a])
    model = model_of(manager, a)

    async with manager.lease(model) as engine:
        assert engine.variant.context == 2048
        assert engine.variant.index == 2  # second in the config
        assert engine.n_ctx == 2048
    assert [e["n_ctx"] for e in a.read_events() if e["event"] == "start"] == [2048]

    await manager.unload()
    async with manager.lease(model, 2049) as engine:
        assert engine.variant.context == 4096
    assert [e["n_ctx"] for e in a.read_events() if e["event"] == "start"] == [2048, 4096]


async def test_bigger_running_variant_is_kept(io_loop: Any, harness: Harness, make_model: MakeModel) -> None:
    a = make_model("a", [2048, 8192])
    manager = harness.manager([a])
    model = model_of(manager, a)

    async with manager.lease(model, 5000) as engine:
        assert engine.variant.context == 8192
        pid = pid_of(engine)
    for need in (0, 100, 2048, 8192):
        async with manager.lease(model, need) as engine:
            assert engine.variant.context == 8192
            assert pid_of(engine) == pid
    assert kinds(a) == ["start"]


async def test_bigger_requirement_switches_variant(io_loop: Any, harness: Harness, make_model: MakeModel) -> None:
    a = make_model("a", [2048, 4096])
    manager = harness.manager([a])
    model = model_of(manager, a)

    async with manager.lease(model) as engine:
        old_pid = pid_of(engine)
        assert engine.n_ctx == 2048
    async with manager.lease(model, 3000) as engine:
        assert engine.variant.context == 4096
        assert pid_of(engine) != old_pid
    assert pid_gone(old_pid)
    assert kinds(a) == ["start", "exit", "start"]


async def test_other_model_switches(io_loop: Any, harness: Harness, make_model: MakeModel) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    manager = harness.manager([a, b])

    async with manager.lease(model_of(manager, a)) as engine:
        pid_a = pid_of(engine)
    assert manager.is_running("a")
    async with manager.lease(model_of(manager, b)) as engine:
        assert engine.model.name == "b"
        assert pid_of(engine) != pid_a
    assert pid_gone(pid_a)
    assert manager.is_running("b") and not manager.is_running("a")
    assert kinds(a) == ["start", "exit"]
    assert kinds(b) == ["start"]


async def test_the_slot_context_is_read_from_the_engine_s_log_without_a_props_call(
    io_loop: Any, harness: Harness, make_model: MakeModel, caplog: pytest.LogCaptureFixture
) -> None:
    """llama-server logs n_ctx_slot as it loads: reading it there spares a round trip before the first request."""
    caplog.set_level(logging.INFO)
    a = make_model("a", [4096], extra_args=["-np", "2"])
    manager = harness.manager([a])
    async with manager.lease(model_of(manager, a)) as engine:
        assert engine.n_ctx == 2048
        # A barrier: the fake logs each request once answered, in order; once this one's line is
        # in, a /props call made before it would be too.
        assert (await engine.client.http.json_call(engine.client.base_url + "/health?barrier", timeout=HANG))[0] == 200

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name.startswith("llmgw.engine.output.a")]

    await wait_for(lambda: any("/health?barrier" in line for line in lines()), what="the engine's log of the barrier")
    assert any("n_ctx_slot = 2048" in line for line in lines())
    assert not any("/props" in line for line in lines()), "the engine was asked its context over HTTP"


async def test_parallel_slots_context_is_learned(io_loop: Any, harness: Harness, make_model: MakeModel) -> None:
    a = make_model("a", [4096, 8192], extra_args=["-np", "2"])
    manager = harness.manager([a])
    model = model_of(manager, a)
    small, big = model.variants

    # Before any engine ran, each slot is known to get half the configured context (-np 2).
    assert [manager.effective_context(model, v) for v in model.variants] == [2048, 4096]
    async with manager.lease(model) as engine:
        assert engine.variant is small
        assert engine.n_ctx == 2048  # and the engine says so
    assert manager.effective_context(model, small) == 2048
    assert serves(manager, "a", 2048)
    assert not serves(manager, "a", 3000)

    # 3000 tokens do not fit the small variant's slots: the big one starts, and reports 4096.
    async with manager.lease(model, 3000) as engine:
        assert engine.variant is big
        assert engine.n_ctx == 4096
    assert manager.effective_context(model, big) == 4096
    assert manager.largest_context(model) == 4096


async def test_an_idle_engine_is_killed_at_once_unless_stops_are_graceful(
    io_loop: Any, harness: Harness, make_model: MakeModel
) -> None:
    """The default: an engine with no request in flight has nothing to lose, so a switch does not
    wait for its own shutdown (llama-server takes 80-95 ms); graceful_stop = true asks it to exit."""
    a, b = make_model("a", [2048]), make_model("b", [2048])
    manager = harness.manager([a, b], graceful_stop=False)
    async with manager.lease(model_of(manager, a)) as engine:
        pid_a = pid_of(engine)
    await ensure_engine(manager, model_of(manager, b))
    assert pid_gone(pid_a)
    assert kinds(a) == ["start"]  # killed: the fake had no chance to record its exit

    c, d = make_model("c", [2048]), make_model("d", [2048])
    graceful = harness.manager([c, d], name="graceful.lua", graceful_stop=True)
    await ensure_engine(graceful, model_of(graceful, c))
    await ensure_engine(graceful, model_of(graceful, d))
    assert kinds(c) == ["start", "exit"]  # asked to stop: it exited on its own


# ----------------------------------------------------------------------------- start-up


async def test_exit_at_startup_fails_fast_with_stderr(io_loop: Any, harness: Harness, make_model: MakeModel) -> None:
    a = make_model("a", [2048], extra_args=["--fake-exit-at-startup", "3"])
    manager = harness.manager([a], engine_startup_timeout=600)
    with pytest.raises(EngineStartError) as info:  # the exit is noticed: not a 600 s start-up timeout
        await asyncio.wait_for(ensure_engine(manager, model_of(manager, a)), HANG)
    assert "fake startup failure" in info.value.message
    assert "code 3" in info.value.message
    assert current(manager) is None
    assert manager.queued == 0 and manager.in_flight == 0


async def test_never_healthy_times_out_and_leaves_nothing(
    io_loop: Any, harness: Harness, make_model: MakeModel
) -> None:
    a = make_model("a", [2048], extra_args=["--fake-never-healthy"])
    manager = harness.manager([a], engine_startup_timeout=1.5)
    with pytest.raises(EngineStartTimeout) as info:
        await asyncio.wait_for(ensure_engine(manager, model_of(manager, a)), 1.5 + HANG)
    assert info.value.status == 504
    assert current(manager) is None
    events = a.read_events()
    assert [e["event"] for e in events] == ["start", "exit"]  # stopped, not left loading
    assert pid_gone(events[0]["pid"])
    assert manager.queued == 0 and manager.in_flight == 0


class _Squatter(tornado.web.RequestHandler):
    """Another server on the engine's port that looks healthy: it must not pass for our engine."""

    def get(self) -> None:
        if self.request.path == "/props":
            self.finish({"default_generation_settings": {"n_ctx": 999999}})
        else:
            self.finish({"status": "ok"})


async def test_port_in_use_is_refused(io_loop: Any, harness: Harness, make_model: MakeModel) -> None:
    a = make_model("a", [2048])
    manager = harness.manager([a])
    squatter = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/.*", _Squatter)]))
    squatter.add_sockets(tornado.netutil.bind_sockets(a.port, "127.0.0.1"))
    try:
        with pytest.raises(EngineStartError) as info:
            await asyncio.wait_for(ensure_engine(manager, model_of(manager, a)), HANG)
    finally:
        squatter.stop()
    assert "already in use" in info.value.message
    assert str(a.port) in info.value.message
    assert current(manager) is None and not manager.is_running("a")
    assert kinds(a) == []  # no engine was even started


async def test_concurrent_leases_start_one_engine(io_loop: Any, harness: Harness, make_model: MakeModel) -> None:
    a = make_model("a", [2048, 4096])
    manager = harness.manager([a])
    model = model_of(manager, a)

    async def lease_once() -> int:
        async with manager.lease(model) as engine:
            await asyncio.sleep(0.01)
            return pid_of(engine)

    calls = [ensure_engine(manager, model) for _ in range(5)] + [lease_once() for _ in range(5)]
    results = await asyncio.wait_for(asyncio.gather(*calls), HANG)
    clients, pids = results[:5], results[5:]
    assert kinds(a) == ["start"]
    assert len({id(c) for c in clients}) == 1 and clients[0] is current(manager).client
    assert set(pids) == {pid_of(current(manager))}  # type: ignore[arg-type]
    assert manager.in_flight == 0 and manager.queued == 0


async def test_readiness_is_noticed_quickly(io_loop: Any, harness: Harness, make_model: MakeModel) -> None:
    a = make_model("a", [2048], extra_args=["--fake-load-delay", "1.0"])
    manager = harness.manager([a])
    client = await asyncio.wait_for(ensure_engine(manager, model_of(manager, a)), HANG)
    # Not before the engine answers 200 (it answers 503 for its first second). How soon after is a
    # figure for the benchmarks (spawn to ready, benchmarks/switch.py), not for a test.
    assert await client.check_health(2.0)


# ----------------------------------------------------------------------------- queue and switch rules


async def test_switch_waits_for_leases_and_queue_is_fifo(io_loop: Any, harness: Harness, make_model: MakeModel) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    manager = harness.manager([a, b])
    model_a, model_b = model_of(manager, a), model_of(manager, b)
    order: list[str] = []

    first = harness.hold(manager, model_a, label="a1", order=order)
    engine_a = await first.wait_acquired()
    pid_a = pid_of(engine_a)

    switch = harness.hold(manager, model_b, label="b", order=order)
    await wait_for(lambda: manager.queued == 1, what="b to queue")
    late_a = harness.hold(manager, model_a, label="a2", order=order)
    await wait_for(lambda: manager.queued == 2, what="a2 to queue behind b")
    # a is held: b waits for it to drain rather than switching (decided, not merely not yet done),
    # and a2 waits behind b although a runs.
    (record_a,) = manager.engines
    assert record_a.ready and record_a.draining
    assert [t.phase for t in manager.waiting] == [Phase.DRAINING, Phase.QUEUED]  # a2 waits for b's start
    assert order == ["a1"]
    assert not switch.acquired.is_set() and not late_a.acquired.is_set()
    assert current(manager) is engine_a and pid_of(engine_a) == pid_a
    assert kinds(b) == []

    first.release()
    engine_b = await switch.wait_acquired()
    assert engine_b.model.name == "b"
    assert pid_gone(pid_a)
    assert order == ["a1", "b"]
    assert not late_a.acquired.is_set()  # b holds its lease; a2 still waits
    switch.release()

    engine_a2 = await late_a.wait_acquired()
    assert engine_a2.model.name == "a" and pid_of(engine_a2) != pid_a
    assert order == ["a1", "b", "a2"]
    late_a.release()
    await asyncio.wait_for(asyncio.gather(first.task, switch.task, late_a.task), HANG)
    assert kinds(a) == ["start", "exit", "start"]
    assert kinds(b) == ["start", "exit"]


async def test_queue_timeout_while_engine_is_held(io_loop: Any, harness: Harness, make_model: MakeModel) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    manager = harness.manager([a, b], queue_timeout=0.5)
    holder = harness.hold(manager, model_of(manager, a))
    pid_a = pid_of(await holder.wait_acquired())

    with pytest.raises(QueueTimeout) as info:
        await asyncio.wait_for(ensure_engine(manager, model_of(manager, b)), HANG)
    assert info.value.status == 503
    assert info.value.retry_after is not None and info.value.retry_after > 0
    assert manager.queued == 0
    assert manager.is_running("a") and current(manager) is not None and pid_of(current(manager)) == pid_a
    assert kinds(b) == []

    holder.release()
    await asyncio.wait_for(holder.task, HANG)
    # The queue is clean: the same switch now goes through.
    await asyncio.wait_for(ensure_engine(manager, model_of(manager, b)), HANG)
    assert manager.is_running("b")


async def test_unload_waits_for_in_flight_leases(io_loop: Any, harness: Harness, make_model: MakeModel) -> None:
    a = make_model("a", [2048])
    manager = harness.manager([a])
    holder = harness.hold(manager, model_of(manager, a))
    pid = pid_of(await holder.wait_acquired())

    unload = asyncio.ensure_future(manager.unload())
    await wait_for(lambda: all(record.draining for record in manager.engines), what="the engine to drain")
    # The unload is decided, and its stop waits for the lease: the engine is draining, not stopping.
    (record,) = manager.engines
    assert record.state is EngineState.READY and record.busy and not unload.done()
    assert current(manager) is not None and kinds(a) == ["start"]  # still up, serving its lease

    holder.release()
    await asyncio.wait_for(unload, HANG)
    assert current(manager) is None
    assert pid_gone(pid)
    assert kinds(a) == ["start", "exit"]
    await manager.unload()  # nothing running: a no-op


async def test_idle_engine_is_unloaded_but_never_while_leased(
    io_loop: Any, harness: Harness, make_model: MakeModel
) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    manager = harness.manager([a, b], engine_idle_timeout=0.5, max_engines=2)
    async with manager.lease(model_of(manager, a)) as engine:
        pid = pid_of(engine)
    # The release armed the idle timer; a lease taken now must keep the engine however long it lasts.
    holder = harness.hold(manager, model_of(manager, a))
    assert pid_of(await holder.wait_acquired()) == pid
    # b, used once after a's lease began, is the control: once its idle timer fired, a's would have.
    await ensure_engine(manager, model_of(manager, b))
    await wait_for(lambda: not manager.is_running("b"), what="b's idle unload")
    assert manager.is_running("a") and next(r.handle for r in manager.engines if r.ready).process.pid == pid
    assert kinds(a) == ["start"]
    await wait_for(lambda: all(r.model.name == "a" for r in manager.engines), what="b's engine to be gone")

    holder.release()
    await asyncio.wait_for(holder.task, HANG)
    await wait_for(lambda: current(manager) is None, what="the idle unload")
    await wait_for(lambda: pid_gone(pid), what="the engine to exit")
    assert kinds(a) == ["start", "exit"]

    # A new lease starts it again, and the timer re-arms after that one too.
    async with manager.lease(model_of(manager, a)) as engine:
        pid2 = pid_of(engine)
    await wait_for(lambda: current(manager) is None, what="the second idle unload")
    await wait_for(lambda: pid_gone(pid2), what="the second engine to exit")


async def test_shutdown_stops_engine_and_refuses_leases(io_loop: Any, harness: Harness, make_model: MakeModel) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    manager = harness.manager([a, b])
    holder = harness.hold(manager, model_of(manager, a))
    pid = pid_of(await holder.wait_acquired())
    queued = asyncio.ensure_future(ensure_engine(manager, model_of(manager, b)))
    await wait_for(lambda: manager.queued == 1, what="b to queue")

    await asyncio.wait_for(manager.shutdown(), HANG)
    assert current(manager) is None
    assert pid_gone(pid)
    with pytest.raises(ShuttingDown):
        await asyncio.wait_for(queued, HANG)
    with pytest.raises(ShuttingDown) as info:
        await ensure_engine(manager, model_of(manager, a))
    assert info.value.status == 503
    assert kinds(b) == []
    holder.release()


async def test_engine_crashed_while_idle_is_restarted(io_loop: Any, harness: Harness, make_model: MakeModel) -> None:
    a = make_model("a", [2048])
    manager = harness.manager([a])
    model = model_of(manager, a)
    async with manager.lease(model) as engine:
        process = engine.process
        pid = pid_of(engine)

    os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: process.status is EngineStatus.CRASHED, what="the crash to be noticed")
    assert not manager.is_running("a")

    async with manager.lease(model) as engine:
        assert pid_of(engine) != pid
        assert engine.process.status is EngineStatus.RUNNING
    assert [e["event"] for e in a.read_events()] == ["start", "start"]


async def test_adopt_config_keeps_or_unloads(io_loop: Any, harness: Harness, make_model: MakeModel) -> None:
    a = make_model("a", [2048, 4096])
    manager = harness.manager([a])
    async with manager.lease(model_of(manager, a), 3000) as engine:
        pid = pid_of(engine)

    # Same launch (and a new, unrelated variant): kept, and it points into the new config.
    a.contexts = [2048, 4096, 8192]
    new_config = harness.config([a], name="c2.lua")
    await asyncio.wait_for(manager.adopt_config(new_config), HANG)
    assert manager.config is new_config
    assert current(manager) is not None and pid_of(current(manager)) == pid
    new_model = model_of(manager, a)
    assert current(manager).model is new_model
    assert current(manager).variant in new_model.variants and current(manager).variant.context == 4096
    assert kinds(a) == ["start"]

    # Its arguments change: unloaded.
    a.extra_args = ["--some-new-flag"]
    await asyncio.wait_for(manager.adopt_config(harness.config([a], name="c3.lua")), HANG)
    assert current(manager) is None
    assert pid_gone(pid)
    assert kinds(a) == ["start", "exit"]


async def test_cancelled_waiter_leaves_the_queue(io_loop: Any, harness: Harness, make_model: MakeModel) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    manager = harness.manager([a, b])
    model_a = model_of(manager, a)
    holder = harness.hold(manager, model_a)
    pid = pid_of(await holder.wait_acquired())

    waiter = asyncio.ensure_future(ensure_engine(manager, model_of(manager, b)))
    await wait_for(lambda: manager.queued == 1, what="b to queue")
    waiter.cancel()  # e.g. the client went away
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(waiter, HANG)
    assert manager.queued == 0

    # Nothing blocks the running model any more, and no switch happens.
    async with manager.lease(model_a) as engine:
        assert pid_of(engine) == pid
    holder.release()
    await asyncio.wait_for(holder.task, HANG)
    assert kinds(b) == []


async def test_shutdown_during_start_up_stops_the_loading_engine(
    io_loop: Any, harness: Harness, make_model: MakeModel
) -> None:
    a = make_model("a", [2048], extra_args=["--fake-load-delay", "60"])
    manager = harness.manager([a], engine_startup_timeout=120)
    starting = asyncio.ensure_future(ensure_engine(manager, model_of(manager, a)))
    await wait_for(lambda: kinds(a) == ["start"], what="the engine to start loading")

    await asyncio.wait_for(manager.shutdown(), HANG)  # not the 120 s start-up timeout, nor the 60 s load
    with pytest.raises(ShuttingDown):
        await asyncio.wait_for(starting, HANG)
    assert current(manager) is None
    events = a.read_events()
    assert [e["event"] for e in events] == ["start", "exit"]
    assert pid_gone(events[0]["pid"])


async def test_switch_and_start_observers(io_loop: Any, harness: Harness, make_model: MakeModel) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    stops: list[str] = []
    starts: list[str] = []
    hooks = ManagerHooks(
        engine_started=lambda name, seconds: starts.append(name), engine_stopped=lambda name, reason: stops.append(name)
    )
    manager = harness.manager([a, b], hooks=hooks)

    await ensure_engine(manager, model_of(manager, a))
    await ensure_engine(manager, model_of(manager, a))  # already running: no switch
    await ensure_engine(manager, model_of(manager, b))
    await manager.unload()
    assert starts == ["a", "b"]
    assert stops == ["a", "b"]


async def test_concurrent_leases_on_a_broken_engine_try_once(
    io_loop: Any, harness: Harness, make_model: MakeModel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    a = make_model("a", [2048], extra_args=["--fake-exit-at-startup", "3"])
    manager = harness.manager([a], engine_startup_timeout=60)
    calls = [ensure_engine(manager, model_of(manager, a)) for _ in range(5)]
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), HANG)
    assert all(isinstance(r, EngineStartError) for r in results), results
    assert all("fake startup failure" in r.message for r in results)  # type: ignore[union-attr]
    failures = [r for r in caplog.records if r.getMessage() == "[a#1] error: fake startup failure"]
    assert len(failures) == 1  # one start attempt for the requests queued together
    assert manager.queued == 0 and manager.in_flight == 0 and current(manager) is None
