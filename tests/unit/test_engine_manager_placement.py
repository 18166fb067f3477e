"""EngineManager with several engines, against a fake runtime: independence, fairness, memory,
idle unload, crashes, unloads, reloads and shutdown, plus random traffic checked by hypothesis.

Orderings are recorded as they happen; nothing here asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fake_runtime import FakeRuntime, settle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scheduling_world import config, model

from conftest import ensure_engine, wait_for
from llmgw.config import Config, ModelConfig, ServerConfig
from llmgw.errors import QueueTimeout, ShuttingDown
from llmgw.runtime import RunningEngine, Usage
from llmgw.scheduling import EngineManager
from llmgw.state import StateStore

HANG = 10.0  # hang guard only


def with_server(cfg: Config, **changes: Any) -> Config:
    server = ServerConfig(**{**cfg.server.__dict__, **changes})
    return Config(cfg.path, server, cfg.models)


def make(cfg: Config, runtime: FakeRuntime | None = None, state: StateStore | None = None) -> EngineManager:
    return EngineManager(cfg, runtime or FakeRuntime(cfg.server.max_engines), state)


@contextlib.asynccontextmanager
async def leased(manager: EngineManager, m: ModelConfig, min_ctx: int = 0) -> AsyncIterator[RunningEngine]:
    """A lease the fake runtime knows about, so stopping its engine meanwhile is caught."""
    runtime = manager.runtime
    assert isinstance(runtime, FakeRuntime)
    async with manager.lease(m, min_ctx) as engine:
        runtime.use(engine, +1)
        try:
            yield engine
        finally:
            runtime.use(engine, -1)


@pytest.fixture
def managers(io_loop: Any) -> Any:
    made: list[EngineManager] = []
    yield made
    for manager in made:
        io_loop.run_sync(manager.shutdown, timeout=HANG)
        runtime = manager.runtime
        assert isinstance(runtime, FakeRuntime)
        assert runtime.running == {}, "an engine outlived its manager"
        assert not runtime.violations, runtime.violations


async def test_two_models_stay_loaded_and_alternate_without_restarts(io_loop: Any, managers: list) -> None:
    a, b = model("a", port=2001), model("b", port=2002)
    manager = make(config([a, b], max_engines=2))
    managers.append(manager)
    engines = set()
    for _ in range(5):
        for m in (a, b):
            async with leased(manager, m) as engine:
                engines.add(id(engine))
    runtime = manager.runtime
    assert isinstance(runtime, FakeRuntime)
    assert runtime.starts == ["a", "b"] and runtime.stops == [] and len(engines) == 2
    assert runtime.names() == ["a", "b"]


async def test_a_request_to_a_running_engine_never_waits_for_another_start(io_loop: Any, managers: list) -> None:
    a, b = model("a", port=2001), model("b", port=2002)
    runtime = FakeRuntime(2)
    manager = make(config([a, b], max_engines=2), runtime)
    managers.append(manager)
    await ensure_engine(manager, a)
    gate = runtime.gate("b")
    starting_b = asyncio.ensure_future(ensure_engine(manager, b))
    await wait_for(lambda: runtime.starts == ["a", "b"], what="b to start")
    async with leased(manager, a) as engine:  # granted while b's start is still held
        assert engine.model.name == "a" and not gate.is_set() and not starting_b.done()
    gate.set()
    await asyncio.wait_for(starting_b, HANG)
    assert runtime.names() == ["a", "b"]


async def test_steady_traffic_does_not_starve_a_pending_start(io_loop: Any, managers: list) -> None:
    a, b = model("a", port=2001), model("b", port=2002)
    runtime = FakeRuntime(1)
    manager = make(config([a, b], max_engines=1), runtime)
    managers.append(manager)
    served: list[tuple[str, bool]] = []  # (who, asked after b did)
    b_asked, five_served = asyncio.Event(), asyncio.Event()

    async def one_a() -> None:
        after_b = b_asked.is_set()
        async with leased(manager, a):
            served.append(("a", after_b))
            if len(served) == 5:
                five_served.set()
            for _ in range(3):  # overlaps the next request: a is never idle
                await asyncio.sleep(0)

    async def traffic(n: int) -> None:
        requests = []
        for _ in range(n):
            requests.append(asyncio.ensure_future(one_a()))
            await asyncio.sleep(0)
        await asyncio.gather(*requests)

    async def want_b() -> None:
        await five_served.wait()
        b_asked.set()
        async with leased(manager, b):
            served.append(("b", True))

    await asyncio.wait_for(asyncio.gather(traffic(60), want_b()), HANG)
    b_at = served.index(("b", True))
    assert not any(after for who, after in served[:b_at] if who == "a")  # no later a went before b
    assert any(who == "a" for who, _ in served[b_at + 1 :])  # a's traffic went on after b
    assert runtime.starts == ["a", "b", "a"]


async def test_a_start_blocked_by_a_pinned_engine_times_out_with_the_reason(io_loop: Any, managers: list) -> None:
    p, a = model("p", port=2001, pinned=True), model("a", port=2002)
    manager = make(with_server(config([p, a], max_engines=1), queue_timeout=0.3))
    managers.append(manager)
    await ensure_engine(manager, p)
    with pytest.raises(QueueTimeout) as info:
        await asyncio.wait_for(ensure_engine(manager, a), HANG)
    assert info.value.status == 503 and info.value.retry_after
    assert "pinned model(s) 'p' leave no room for 'a'" in info.value.message
    assert manager.queued == 0
    await manager.unload("p")  # an explicit unload does stop a pinned model
    await asyncio.wait_for(ensure_engine(manager, a), HANG)


async def test_many_concurrent_requests_start_each_engine_once(io_loop: Any, managers: list) -> None:
    models = [model(f"m{i}", (1024, 4096), port=2001 + i) for i in range(4)]
    runtime = FakeRuntime(2)
    manager = make(config(models, max_engines=2), runtime)
    managers.append(manager)
    rng = random.Random(7)

    async def one(i: int) -> str:
        m = rng.choice(models)
        async with leased(manager, m, rng.choice([0, 0, 2000])) as engine:
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
            return engine.model.name

    served = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(80))), HANG)
    assert len(served) == 80 and not runtime.violations
    assert manager.in_flight == 0 and manager.queued == 0


async def test_idle_engines_are_unloaded_pinned_ones_too(io_loop: Any, managers: list) -> None:
    a = model("a", port=2001, idle=0.2)
    p = model("p", port=2002, idle=0.2, pinned=True)
    runtime = FakeRuntime(2)
    manager = make(config([a, p], max_engines=2), runtime)
    managers.append(manager)
    async with leased(manager, a), leased(manager, p):
        await asyncio.sleep(0.5)  # held past the idle timeout: nothing stops
        assert runtime.stops == []
    await wait_for(lambda: runtime.running == {}, what="the idle unloads")
    assert sorted(runtime.stops) == ["a", "p"]


async def test_a_crashed_engine_is_stopped_and_restarted_by_the_next_request(io_loop: Any, managers: list) -> None:
    a, b = model("a", port=2001), model("b", port=2002)
    runtime = FakeRuntime(2)
    manager = make(config([a, b], max_engines=2), runtime)
    managers.append(manager)
    await ensure_engine(manager, a)
    await ensure_engine(manager, b)
    runtime.crash("a")
    await wait_for(lambda: not manager.is_running("a"), what="the crash to be handled")
    assert manager.is_running("b")
    async with leased(manager, a) as engine:
        assert engine.process.is_running
    assert runtime.starts == ["a", "b", "a"]


async def test_measured_memory_places_engines_and_survives_a_restart(
    io_loop: Any, managers: list, tmp_path: Path
) -> None:
    a = model("a", port=2001, pools=("total",))
    b = model("b", port=2002, pools=("total",))
    cfg = config([a, b], max_engines=2, budget={"total": 1000})
    runtime = FakeRuntime(2)
    runtime.usage = {"a": Usage(200.0, {0: 100.0}), "b": Usage(300.0)}
    manager = make(cfg, runtime, StateStore(tmp_path))
    managers.append(manager)
    await ensure_engine(manager, a)  # never measured: it runs alone, then it is measured
    await wait_for(lambda: manager.memory.source(a, a.variants[0]) == "measured", what="a's measurement")
    await ensure_engine(manager, b)  # unknown: needs the whole budget, so a makes room
    assert runtime.names() == ["b"] and runtime.stops == ["a"]
    await wait_for(lambda: manager.memory.source(b, b.variants[0]) == "measured", what="b's measurement")
    await ensure_engine(manager, a)  # 300 + 300 fit now
    assert runtime.names() == ["a", "b"]
    saved = json.loads((tmp_path / "state.json").read_text())["memory"]
    assert saved == {
        f"a/{a.variants[0].fingerprint}": {"total": 300.0},
        f"b/{b.variants[0].fingerprint}": {"total": 300.0},
    }

    # A new gateway reads the figures back: both load side by side at once.
    runtime2 = FakeRuntime(2)
    manager2 = make(cfg, runtime2, StateStore(tmp_path))
    managers.append(manager2)
    await manager.shutdown()
    await ensure_engine(manager2, a)
    await ensure_engine(manager2, b)
    assert runtime2.names() == ["a", "b"] and runtime2.stops == []


async def test_unload_one_model_or_all(io_loop: Any, managers: list) -> None:
    a, b, c = model("a", port=2001), model("b", port=2002), model("c", port=2003)
    runtime = FakeRuntime(3)
    manager = make(config([a, b, c], max_engines=3), runtime)
    managers.append(manager)
    for m in (a, b, c):
        await ensure_engine(manager, m)
    assert await manager.unload("b") == ["b"]
    assert runtime.names() == ["a", "c"]
    assert sorted(await manager.unload()) == ["a", "c"]
    assert runtime.running == {}


async def test_reload_keeps_unchanged_engines_and_stops_changed_ones(io_loop: Any, managers: list) -> None:
    a, b = model("a", port=2001), model("b", port=2002)
    runtime = FakeRuntime(2)
    manager = make(config([a, b], max_engines=2), runtime)
    managers.append(manager)
    await ensure_engine(manager, a)
    await ensure_engine(manager, b)
    kept = runtime.running["127.0.0.1:2001"]
    new_b = model("b", (2048,), port=2002)
    async with leased(manager, b):
        reload = asyncio.ensure_future(manager.adopt_config(config([a, new_b], max_engines=2)))
        await settle()
        assert not reload.done() and runtime.names() == ["a", "b"]  # b drains first
    await asyncio.wait_for(reload, HANG)
    assert runtime.names() == ["a"] and runtime.running["127.0.0.1:2001"] is kept
    assert kept.model is manager.config.models[0]


async def test_shutdown_during_a_start_fails_its_waiters_and_leaves_nothing(io_loop: Any, managers: list) -> None:
    a = model("a", port=2001)
    runtime = FakeRuntime(1)
    manager = make(config([a]), runtime)
    runtime.gate("a")
    waiter = asyncio.ensure_future(ensure_engine(manager, a))
    await wait_for(lambda: runtime.starts == ["a"], what="the start")
    await asyncio.wait_for(manager.shutdown(), HANG)
    with pytest.raises(ShuttingDown):
        await asyncio.wait_for(waiter, HANG)
    assert runtime.running == {} and manager.engines == []
    with pytest.raises(ShuttingDown):
        await ensure_engine(manager, a)


@st.composite
def traffic_plans(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(2, 4))
    shared = draw(st.booleans())
    models = [
        model(
            f"m{i}",
            (1024, 4096),
            port=3000 if shared and i < 2 else 3001 + i,
            pinned=i == 0 and draw(st.booleans()),
        )
        for i in range(count)
    ]
    requests = draw(
        st.lists(
            st.tuples(st.integers(0, count - 1), st.sampled_from([0, 0, 2000]), st.integers(0, 4), st.integers(0, 3)),
            min_size=1,
            max_size=25,
        )
    )
    return {"models": models, "max_engines": draw(st.integers(1, 3)), "requests": requests}


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(plan=traffic_plans())
def test_random_traffic_keeps_the_rules(io_loop: Any, plan: dict[str, Any]) -> None:
    """Random arrivals, hold times and start delays: every request is served, and the runtime
    never sees two engines on one address, too many engines, or a busy engine stopped."""
    models: list[ModelConfig] = plan["models"]
    runtime = FakeRuntime(plan["max_engines"])
    manager = make(with_server(config(models, max_engines=plan["max_engines"]), queue_timeout=0.2), runtime)
    timeouts: list[str] = []

    async def one(index: int, need: int, hold: int, delay: int) -> None:
        for _ in range(delay):
            await asyncio.sleep(0)
        try:
            async with leased(manager, models[index], need):
                for _ in range(hold):
                    await asyncio.sleep(0)
        except QueueTimeout as exc:  # only a pinned engine may keep a request out for good
            timeouts.append(exc.message)

    async def body() -> None:
        try:
            tasks = [one(*request) for request in plan["requests"]]
            await asyncio.wait_for(asyncio.gather(*tasks), HANG)
            assert manager.in_flight == 0 and manager.queued == 0
        finally:
            await manager.shutdown()

    io_loop.run_sync(body, timeout=HANG + 5)
    assert all("pinned" in message for message in timeouts), timeouts
    assert not runtime.violations, runtime.violations
    assert runtime.running == {}


async def test_a_busy_engine_that_stops_answering_is_killed(io_loop: Any, managers: list) -> None:
    a = model("a", port=2001)
    runtime = FakeRuntime(1)
    manager = make(config([a]), runtime)
    managers.append(manager)
    async with leased(manager, a) as engine:
        runtime.frozen.add("a")
        await wait_for(lambda: not engine.process.is_running, what="the hung engine to be killed")
    assert runtime.killed == ["a"]
    runtime.frozen.clear()
    async with leased(manager, a) as engine:
        assert engine.process.is_running
    assert runtime.starts == ["a", "a"]
