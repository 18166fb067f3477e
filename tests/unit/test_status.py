"""The event bus and the engine watch, without sockets: bounded subscribers, engine and queue events,
load times kept across restarts, where a waiting request stands, and /v1/models' status."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fake_runtime import FakeRuntime, settle
from scheduling_world import config, model

from conftest import wait_for
from llmgw.events import DROPPED, LOG, EventBus
from llmgw.scheduling import EngineManager, ManagerHooks, new_scheduler
from llmgw.scheduling.memory import launch_key
from llmgw.scheduling.scheduler import Ticket
from llmgw.server.status import LOAD_SECTION, StatusTracker, _percent
from llmgw.state import StateStore

HANG = 10.0  # hang guard only


# ----------------------------------------------------------------------------- the bus


async def test_subscriber_gets_events_in_order_and_only_the_logs_it_asked_for() -> None:
    bus = EventBus()
    everything = bus.subscribe(logs="*")
    quiet = bus.subscribe()
    only_a = bus.subscribe(logs=["a"])
    bus.publish("engine", model="a", state="starting")
    bus.publish(LOG, model="a", line="hello from a")
    bus.publish(LOG, model="b", line="hello from b")
    bus.publish("engine", model="a", state="ready")
    assert [(e.kind, e.data.get("line")) for e in everything.drain()] == [
        ("engine", None),
        (LOG, "hello from a"),
        (LOG, "hello from b"),
        ("engine", None),
    ]
    assert [e.kind for e in quiet.drain()] == ["engine", "engine"]
    assert [e.data.get("line") for e in only_a.drain()] == [None, "hello from a", None]
    assert bus.watching_logs("a") and bus.watching_logs("b")
    everything.close()
    assert bus.watching_logs("a") and not bus.watching_logs("b")


async def test_slow_subscriber_loses_events_with_a_marker_and_never_grows() -> None:
    bus = EventBus(queue_limit=5)
    slow = bus.subscribe()
    for i in range(100):
        bus.publish("request_end", n=i)
    events = slow.drain()
    assert [e.data.get("n") for e in events[:-1]] == [0, 1, 2, 3, 4]
    assert events[-1].kind == DROPPED and events[-1].data["count"] == 95
    bus.publish("request_end", n=100)
    assert [e.data["n"] for e in slow.drain()] == [100]  # the marker is not repeated


async def test_closing_the_bus_ends_every_wait() -> None:
    bus = EventBus()
    subscription = bus.subscribe()
    waiter = asyncio.ensure_future(subscription.next(timeout=HANG))
    await asyncio.sleep(0)
    bus.close()
    assert await asyncio.wait_for(waiter, HANG) == []
    assert subscription.closed and not bus.watched
    bus.publish("engine", model="x")  # nobody listens: nothing kept anywhere
    assert subscription.drain() == []


# ----------------------------------------------------------------------------- the status tracker


def watched(tmp_path: Path, **kwargs: Any) -> tuple[EngineManager, FakeRuntime, StatusTracker, EventBus, Any]:
    cfg = config([model("a", (1024, 4096), port=9101), model("b", port=9102)], **kwargs)
    runtime = FakeRuntime(cfg.server.max_engines)
    state = StateStore(tmp_path)
    scheduler = new_scheduler(cfg, state)
    bus = EventBus()
    watch = StatusTracker(scheduler, bus, state)
    manager = EngineManager(cfg, runtime, state, scheduler, ManagerHooks(changed=watch.changed))
    return manager, runtime, watch, bus, cfg


def engine_states(events: list[Any]) -> list[tuple[str, str]]:
    return [(e.data["model"], e.data["state"]) for e in events if e.kind == "engine"]


async def test_engine_lifecycle_and_queue_become_events_and_load_time_is_kept(tmp_path: Path) -> None:
    manager, runtime, watch, bus, cfg = watched(tmp_path)
    a, b = cfg.models
    events = bus.subscribe()
    gate = runtime.gate("a")
    waiting: list[Ticket] = []

    async def use(m: Any, ctx: int = 0) -> None:
        async with manager.reserve(m, ctx) as reservation:
            if reservation.waiting:
                waiting.append(reservation.ticket)
            await reservation.granted()

    first = asyncio.ensure_future(use(a))
    await wait_for(lambda: bool(waiting), HANG, "the request to wait")
    assert watch.status(a)["value"] == "loading" and watch.status(b) == {"value": "unloaded"}
    queued = [e for e in events.drain() if e.kind == "queue"]
    assert queued and queued[-1].data["queue"][0]["model"] == "a"
    gate.set()
    await asyncio.wait_for(first, HANG)
    status = watch.status(a)
    assert status["value"] == "loaded" and status["n_ctx"] == 1024 and status["variant"] == 1
    await asyncio.wait_for(use(b), HANG)  # one engine at a time: a stops for b
    await manager.unload()
    await settle()
    assert engine_states(events.drain()) == [
        ("a", "ready"),
        ("a", "stopping"),
        ("b", "starting"),
        ("a", "stopped"),
        ("b", "ready"),
        ("b", "stopping"),
        ("b", "stopped"),
    ]
    assert [e.data["queue"] for e in events.drain() if e.kind == "queue"] == []
    saved = json.loads((tmp_path / "state.json").read_text())[LOAD_SECTION]
    assert set(saved) == {launch_key(a, a.variants[0]), launch_key(b, b.variants[0])}
    assert all(seconds > 0 for seconds in saved.values())
    await manager.shutdown()


async def test_failed_start_is_an_event_and_shows_in_the_status(tmp_path: Path) -> None:
    manager, runtime, watch, bus, cfg = watched(tmp_path)
    a = cfg.models[0]
    events = bus.subscribe()
    runtime.fail.add("a")
    with pytest.raises(Exception, match="fake start failure"):
        async with manager.lease(a):
            pass
    assert engine_states(events.drain()) == [("a", "starting"), ("a", "failed")]
    assert watch.status(a) == {"value": "unloaded", "failed": True}
    runtime.fail.clear()
    async with manager.lease(a):
        pass
    assert watch.status(a)["value"] == "loaded"  # a success clears it
    await manager.unload()
    assert "failed" not in watch.status(a)
    await manager.shutdown()


async def test_progress_of_a_waiting_request(tmp_path: Path) -> None:
    # A load time learned before a restart (a long one: the estimate stays low while the test runs).
    big_variant = model("a", (1024, 4096), port=9101).variants[1]
    StateStore(tmp_path).put(LOAD_SECTION, {launch_key(model("a", port=9101), big_variant): 1000.0})
    manager, runtime, watch, _, cfg = watched(tmp_path)
    a, b = cfg.models
    tickets: list[Ticket] = []
    gate = runtime.gate("a")
    big = asyncio.ensure_future(_hold(manager, a, 2000, tickets))
    second = asyncio.ensure_future(_hold(manager, b, 0, tickets))
    await wait_for(lambda: len(tickets) == 2, HANG, "two waiting requests")
    first = watch.progress(tickets[0])
    assert first is not None
    assert (first.phase, first.position, first.queued, first.model) == ("starting", 1, 2, "a")
    assert (first.variant, first.context, first.expected) == (2, 4096, 1000.0)
    assert first.percent is not None and 0 <= first.percent < 99
    behind = watch.progress(tickets[1])
    assert behind is not None
    assert (behind.phase, behind.position, behind.model, behind.percent) == ("queued", 2, "b", None)
    # The engine's process runs: "loading" from now on.
    record = manager.engines[0]
    watch.spawned(record.model, record.variant, 4242)
    loading = watch.progress(tickets[0])
    assert loading is not None and loading.phase == "loading"
    gate.set()
    await asyncio.wait_for(asyncio.gather(big, second), HANG)
    assert watch.progress(tickets[0]) is None  # granted: it left the queue
    await manager.shutdown()


async def _hold(manager: EngineManager, m: Any, ctx: int, tickets: list[Ticket]) -> None:
    async with manager.reserve(m, ctx) as reservation:
        if reservation.waiting:
            tickets.append(reservation.ticket)
        await reservation.granted()


def test_percent_is_elapsed_over_the_last_load_capped_until_ready() -> None:
    assert _percent(5.0, 10.0) == 50
    assert _percent(0.0, 10.0) == 0
    assert _percent(30.0, 10.0) == 99
    assert _percent(5.0, None) is None
