"""The pure Scheduler, driven directly: no processes, no sockets, no event loop."""

from __future__ import annotations

import pytest
from scheduling_world import World, config, model, names

from llmgw.config import Priority
from llmgw.errors import ContextTooLarge, EngineStartError, ModelNotFound, ShuttingDown
from llmgw.runtime import Usage
from llmgw.scheduling.scheduler import EngineState, Phase, Start, Stop


def test_two_models_run_side_by_side_and_requests_to_one_never_wait_for_the_other() -> None:
    a, b = model("a", port=1001), model("b", port=1002)
    w = World.of(config([a, b], max_engines=2))
    ta = w.request(a)
    assert names(w.log, Start) == ["a"]
    w.finish_start(w.record_of("a"))
    assert w.holds(ta) is not None
    tb = w.request(b)  # b starts next to a: nothing stops
    assert names(w.log, Start) == ["a", "b"] and names(w.log, Stop) == []
    assert w.holds(tb) is None
    ta2 = w.request(a)  # while b is still starting
    assert w.holds(ta2) is w.record_of("a")
    w.finish_start(w.record_of("b"))
    assert w.holds(tb) is w.record_of("b")
    w.release(ta), w.release(ta2), w.release(tb)
    for _ in range(5):  # alternating: no start, no stop
        w.release(w.request(a))
        w.release(w.request(b))
    assert names(w.log, Start) == ["a", "b"] and names(w.log, Stop) == []
    w.check()


def test_room_is_made_by_stopping_the_least_recently_used_idle_engine() -> None:
    a, b, c = (model(n, port=p) for n, p in (("a", 1001), ("b", 1002), ("c", 1003)))
    w = World.of(config([a, b, c], max_engines=2))
    for m in (a, b):
        w.now += 1
        t = w.request(m)
        w.settle()
        w.release(t)  # a last used at 1, b at 2
    w.now = 20.0
    w.release(w.request(a))  # a is now the most recently used
    tc = w.request(c)
    assert names(w.log, Stop) == ["b"]  # least recently used
    assert w.scheduler.phase(tc.id) is Phase.STOPPING
    w.settle()
    assert w.running() == ["a", "c"] and w.holds(tc) is w.record_of("c")
    w.check()


def test_a_busy_engine_is_never_stopped_and_an_idle_one_goes_first() -> None:
    a, b, c = (model(n, port=p) for n, p in (("a", 1001), ("b", 1002), ("c", 1003)))
    w = World.of(config([a, b, c], max_engines=2))
    ta = w.request(a)  # held throughout
    w.settle()
    w.now = 5
    tb = w.request(b)
    w.settle()
    w.release(tb)  # b was used more recently than a, but it is idle
    w.request(c)
    assert names(w.log, Stop) == ["b"]  # idle, although a was used less recently
    w.settle()
    assert w.holds(ta) is not None and sorted(w.running()) == ["a", "c"]
    w.check()


def test_when_every_engine_is_busy_the_start_waits_and_the_victim_drains() -> None:
    a, b, c = (model(n, port=p) for n, p in (("a", 1001), ("b", 1002), ("c", 1003)))
    w = World.of(config([a, b, c], max_engines=2))
    ta = w.request(a)
    w.settle()
    w.now = 1
    tb = w.request(b)
    w.settle()
    tc = w.request(c)
    assert names(w.log, Stop) == []
    assert w.scheduler.phase(tc.id) is Phase.DRAINING
    victim = w.record_of("a")  # least recently used of the busy ones
    assert victim.evict_for == tc.id
    # Steady traffic: new requests to the draining engine wait; the other engine still serves.
    ta2 = w.request(a)
    assert w.holds(ta2) is None
    tb2 = w.request(b)
    assert w.holds(tb2) is w.record_of("b")
    w.release(ta)
    assert names(w.log, Stop) == ["a"]
    w.settle()
    assert w.holds(tc) is w.record_of("c")
    assert w.holds(ta2) is None  # a comes back once b or c can go
    w.release(tb), w.release(tb2)
    w.settle()
    assert w.holds(ta2) is not None and w.running() == ["a", "c"]
    w.check()


def test_cancelling_the_waiting_request_ends_the_drain() -> None:
    a, b = model("a", port=1001), model("b", port=1002)
    w = World.of(config([a, b]))
    ta = w.request(a)
    w.settle()
    tb = w.request(b)
    assert w.record_of("a").draining
    w.take(w.scheduler.cancel(tb.id, w.now))
    assert not w.record_of("a").draining
    assert w.holds(w.request(a)) is w.record_of("a")  # granted at once again
    w.release(ta)
    assert names(w.log, Stop) == [] and names(w.log, Start) == ["a"]


def test_pinned_engines_are_never_chosen_and_the_blocked_start_says_why() -> None:
    p = model("p", port=1001, pinned=True)
    a, b = model("a", port=1002), model("b", port=1003)
    w = World.of(config([p, a, b], max_engines=2))
    for m in (p, a):
        w.now += 1
        t = w.request(m)
        w.settle()
        w.release(t)
    tb = w.request(b)
    assert names(w.log, Stop) == ["a"]  # p was used less recently, but it is pinned
    w.settle()
    w.release(tb)
    w2 = World.of(config([p, a], max_engines=1))
    tp = w2.request(p)
    w2.settle()
    w2.release(tp)
    ta = w2.request(a)
    assert w2.scheduler.phase(ta.id) is Phase.QUEUED and names(w2.log, Stop) == []
    assert "pinned model(s) 'p' leave no room for 'a'" in ta.blocked_by
    w.check(), w2.check()


def test_an_exclusive_model_runs_alone() -> None:
    a, b = model("a", port=1001), model("b", port=1002, pinned=True)
    x = model("x", port=1003, exclusive=True)
    w = World.of(config([a, b, x], max_engines=3))
    ta, tb = w.request(a), w.request(b)
    w.settle()
    tx = w.request(x)
    assert w.scheduler.phase(tx.id) is Phase.DRAINING  # both busy: they drain (pinned b too)
    assert w.holds(w.request(a)) is None  # no new request on a draining engine
    w.release(ta), w.release(tb)
    assert sorted(names(w.log, Stop)) == ["a", "b"]
    w.settle()
    assert w.running() == ["x"] and w.holds(tx) is not None
    tb3 = w.request(b)  # nothing starts next to x: x must go first
    assert names(w.log, Start).count("b") == 1 and w.record_of("x").draining
    w.release(tx)
    w.settle()
    assert w.holds(tb3) is not None and "x" not in w.running()
    w.check()


def test_models_on_one_address_never_run_together() -> None:
    a, b = model("a", port=1001), model("b", port=1001)
    w = World.of(config([a, b], max_engines=4))
    ta = w.request(a)
    w.settle()
    w.release(ta)
    tb = w.request(b)
    assert names(w.log, Stop) == ["a"]
    w.settle()
    assert w.running() == ["b"] and w.holds(tb) is not None
    w.check()


def test_a_bigger_variant_waits_only_for_its_own_models_requests() -> None:
    a = model("a", (1024, 4096), port=1001)
    b = model("b", port=1002)
    w = World.of(config([a, b], max_engines=2))
    ta, tb = w.request(a), w.request(b)
    w.settle()
    big = w.request(a, 3000)
    assert w.record_of("a").evict_for == big.id and not w.record_of("b").draining
    tb2 = w.request(b)
    assert w.holds(tb2) is w.record_of("b")  # the other model is untouched
    small = w.request(a, 100)
    assert w.holds(small) is None  # behind the switch, in arrival order
    w.release(ta)
    w.settle()
    assert w.record_of("a").variant.context == 4096
    assert w.holds(big) is w.record_of("a") and w.holds(small) is w.record_of("a")  # the big one serves both
    assert w.record_of("b").in_flight == 2
    w.release(big), w.release(small)
    w.release(w.request(a, 10))  # a big enough running variant is kept
    assert names(w.log, Start) == ["a", "b", "a"]
    w.release(tb), w.release(tb2)
    w.check()


def test_memory_budget_declared_figures() -> None:
    a = model("a", port=1001, memory={"total": 600})
    b = model("b", port=1002, memory={"total": 600})
    c = model("c", port=1003, memory={"total": 300})
    w = World.of(config([a, b, c], max_engines=3, budget={"total": 1000}))
    ta = w.request(a)
    w.settle()
    w.release(ta)
    tc = w.request(c)
    assert names(w.log, Stop) == []  # 600 + 300 fit
    w.settle()
    w.release(tc)
    tb = w.request(b)
    assert names(w.log, Stop) == ["a"]  # 600 + 300 + 600 do not; a is the least recently used
    w.settle()
    assert w.running() == ["b", "c"] and w.holds(tb) is not None
    w.check()


def test_an_unmeasured_variant_needs_the_whole_budget_until_measured() -> None:
    a = model("a", port=1001, pools=("total",))
    b = model("b", port=1002, pools=("total",))
    w = World.of(config([a, b], max_engines=2, budget={"total": 1000}))
    ta = w.request(a)
    w.settle()
    assert w.record_of("a").need == {"total": 1000}
    w.scheduler.memory.record(a, a.variants[0], Usage(300.0))
    w.take(w.scheduler.measured(w.record_of("a").id, w.now))
    assert w.record_of("a").need == {"total": 300.0}
    w.release(ta)
    tb = w.request(b)  # b is unknown: it needs all 1000, so a must go
    assert names(w.log, Stop) == ["a"]
    w.settle()
    w.scheduler.memory.record(b, b.variants[0], Usage(200.0, {0: 100.0}))  # total = RSS + GPU
    w.take(w.scheduler.measured(w.record_of("b").id, w.now))
    w.release(tb)
    w.request(a)  # both known now: 300 + 300 fit
    assert names(w.log, Stop) == ["a"] and names(w.log, Start) == ["a", "b", "a"]
    w.settle()
    assert w.running() == ["a", "b"]
    w.check()


def test_measured_memory_survives_in_the_book() -> None:
    a = model("a", port=1001, pools=("gpu0", "ram"))
    cfg = config([a], budget={"gpu0": 8000, "ram": 16000})
    w = World.of(cfg, measured={f"a/{a.variants[0].fingerprint}": {"gpu0": 5000.0, "ram": 900.0}})
    w.request(a)
    assert w.record_of("a").need == {"gpu0": 5000.0, "ram": 900.0}


def test_a_growing_figure_unloads_the_least_recently_used_engine() -> None:
    a = model("a", port=1001, pools=("total",))
    b = model("b", port=1002, pools=("total",))
    fingerprints = {f"{m.name}/{m.variants[0].fingerprint}": {"total": 400.0} for m in (a, b)}
    w = World.of(config([a, b], max_engines=2, budget={"total": 1000}), measured=fingerprints)
    ta = w.request(a)
    w.settle()
    w.release(ta)
    w.now = 1
    tb = w.request(b)
    w.settle()
    w.scheduler.memory.record(b, b.variants[0], Usage(700.0))  # b's KV cache filled up
    w.take(w.scheduler.measured(w.record_of("b").id, w.now))
    assert names(w.log, Stop) == ["a"]  # idle and least recently used
    w.settle()
    assert w.running() == ["b"] and w.holds(tb) is not None
    w.check()


def test_a_failed_start_fails_the_requests_waiting_for_it_only() -> None:
    a = model("a", (1024, 4096), port=1001)
    b = model("b", port=1002)
    w = World.of(config([a, b], max_engines=2))
    t1, t2 = w.request(a), w.request(a)
    t_big = w.request(a, 3000)  # needs another variant: not this start's
    tb = w.request(b)
    assert w.scheduler.phase(t_big.id) is Phase.QUEUED
    w.finish_start(w.record_of("a"), ok=False)
    assert isinstance(w.failed[t1.id], EngineStartError) and isinstance(w.failed[t2.id], EngineStartError)
    assert t_big.id not in w.failed and tb.id not in w.failed
    assert names(w.log, Start) == ["a", "b", "a"]  # the big one now starts its own variant
    assert w.record_of("a").variant.context == 4096
    w.check()


def test_unload_serves_the_requests_that_came_before_it() -> None:
    a = model("a", port=1001)
    w = World.of(config([a]))
    early = w.request(a)  # the engine is starting
    w.take(w.scheduler.unload(None, w.now)[1])
    late = w.request(a)
    w.settle()
    assert w.holds(early) is not None and w.holds(late) is None
    w.release(early)
    assert names(w.log, Stop) == ["a"]
    w.settle()
    assert w.holds(late) is not None  # a new engine for the request after the unload
    assert names(w.log, Start) == ["a", "a"]
    w.check()


def test_unload_of_one_model_leaves_the_others() -> None:
    a, b = model("a", port=1001), model("b", port=1002)
    w = World.of(config([a, b], max_engines=2))
    for m in (a, b):
        t = w.request(m)
        w.settle()
        w.release(t)
    ids, effects = w.scheduler.unload("a", w.now)
    w.take(effects)
    assert ids == [w.record_of("a").id] and names(w.log, Stop) == ["a"]
    w.settle()
    assert w.running() == ["b"]


def test_idle_expiry_stops_only_an_engine_idle_long_enough() -> None:
    a = model("a", port=1001, idle=10.0)
    w = World.of(config([a]))
    t = w.request(a)
    w.settle()
    record = w.record_of("a")
    w.now = 100.0
    assert w.take(w.scheduler.idle_expired(record.id, w.now)) == []  # held
    w.release(t)
    assert w.take(w.scheduler.idle_expired(record.id, 105.0)) == []  # idle 5 s only
    w.now = 111.0
    assert names(w.take(w.scheduler.idle_expired(record.id, w.now)), Stop) == ["a"]


def test_a_crashed_engine_is_cleaned_up_and_the_next_request_restarts_it() -> None:
    a = model("a", port=1001)
    w = World.of(config([a]))
    t = w.request(a)
    w.settle()
    w.take(w.scheduler.crashed(w.record_of("a").id, w.now))
    assert [e.reason for e in w.log if isinstance(e, Stop)] == ["crashed"]
    w.release(t)  # the request that was on it ends (with an error) and gives it back
    w.settle()
    t2 = w.request(a)
    w.settle()
    assert w.holds(t2) is not None and names(w.log, Start) == ["a", "a"]
    w.check()


def test_reload_keeps_unchanged_engines_and_fails_requests_for_removed_models() -> None:
    a, b, c = model("a", port=1001), model("b", port=1002), model("c", port=1003)
    w = World.of(config([a, b, c], max_engines=3))
    ta, tb = w.request(a), w.request(b)
    w.settle()
    w.release(tb)
    tc = w.request(c)  # starting
    changed_b = model("b", (2048,), port=1002)  # another launch (context and args)
    new = config([a, changed_b], max_engines=3)
    w.take(w.scheduler.reload(new, w.now))
    assert isinstance(w.failed[tc.id], ModelNotFound)
    assert w.record_of("a").model is new.models[0] and not w.record_of("a").draining
    assert names(w.log, Stop) == ["b"]  # changed and idle: stopped now
    assert w.record_of("c").unload_from is not None  # removed: stops once started
    w.settle()
    assert w.running() == ["a"] and w.holds(ta) is not None
    w.check()


def test_reload_to_fewer_engines_unloads_the_least_recently_used() -> None:
    a, b = model("a", port=1001), model("b", port=1002)
    w = World.of(config([a, b], max_engines=2))
    for m in (a, b):
        w.now += 1
        t = w.request(m)
        w.settle()
        w.release(t)
    w.take(w.scheduler.reload(config([a, b], max_engines=1), w.now))
    assert names(w.log, Stop) == ["a"]


def test_requests_over_the_largest_context_fail_at_once() -> None:
    a = model("a", (1024, 2048), port=1001)
    w = World.of(config([a]))
    t = w.request(a, 5000)
    assert isinstance(w.failed[t.id], ContextTooLarge) and w.scheduler.queue == []


def test_learned_context_decides_the_variant() -> None:
    a = model("a", (4096, 8192), port=1001)
    w = World.of(config([a]))
    t = w.request(a)
    w.finish_start(w.record_of("a"), n_ctx=2048)  # -np 2: half the configured context per slot
    assert w.scheduler.effective_context(a, a.variants[0]) == 2048
    w.release(t)
    big = w.request(a, 3000)
    assert w.holds(big) is None and names(w.log, Stop) == ["a"]
    w.settle()
    assert w.record_of("a").variant.context == 8192


def test_parallel_slots_split_the_context_before_any_engine_reports_it() -> None:
    """llama-server gives each of -np N slots context / N: a 3000-token request needs the 8192
    variant of a model run with -np 2, at once (not a start of the 4096 one, then a switch)."""
    a = model("a", (4096, 8192), port=1001, args=("-np", "2"))
    w = World.of(config([a]))
    assert [w.scheduler.effective_context(a, v) for v in a.variants] == [2048, 4096]
    t = w.request(a, 3000)
    assert [r.variant.context for r in w.scheduler.records] == [8192]
    w.settle()
    assert w.holds(t) is w.record_of("a")
    too_big = w.request(a, 5000)  # more than a slot of the largest variant holds
    error = w.failed[too_big.id]
    assert isinstance(error, ContextTooLarge) and error.largest == 4096


def test_a_unified_kv_cache_gives_every_slot_the_whole_context() -> None:
    a = model("a", (4096, 8192), port=1001, args=("-np", "2", "-kvu"))
    w = World.of(config([a]))
    assert [w.scheduler.effective_context(a, v) for v in a.variants] == [4096, 8192]


def test_shutdown_fails_the_queue_and_stops_everything() -> None:
    a, b = model("a", port=1001), model("b", port=1002)
    w = World.of(config([a, b]))
    ta = w.request(a)
    w.settle()
    tb = w.request(b)
    w.take(w.scheduler.shutdown(w.now))
    assert isinstance(w.failed[tb.id], ShuttingDown)
    assert names(w.log, Stop) == ["a"]  # busy or not: the caller gave it its grace
    t = w.request(a)
    assert isinstance(w.failed[t.id], ShuttingDown)
    w.release(ta)


@pytest.mark.parametrize("state", [EngineState.STARTING, EngineState.READY])
def test_no_model_is_ever_started_twice(state: EngineState) -> None:
    a = model("a", (1024, 4096), port=1001)
    w = World.of(config([a], max_engines=3))
    tickets = [w.request(a, ctx) for ctx in (0, 10, 3000, 0, 4000)]
    if state is EngineState.READY:
        w.finish_start(w.record_of("a"))
    tickets += [w.request(a, ctx) for ctx in (0, 3500)]
    w.check()
    assert len([s for s in w.scheduler.records if s.model.name == "a"]) == 1
    for _ in range(10):  # give every lease back until nothing waits
        for t in tickets:
            if w.holds(t) is not None:
                w.release(t)
        w.settle()
    assert w.scheduler.queue == [] and all(t.id not in w.failed for t in tickets)
    w.check()


def test_a_start_that_must_wait_for_a_starting_engine_holds_later_starts_back() -> None:
    a = model("a", port=1001, memory={"total": 600})
    b = model("b", port=1002, memory={"total": 300})
    c = model("c", port=1003, memory={"total": 700})
    d = model("d", port=1004, memory={"total": 300})
    w = World.of(config([a, b, c, d], max_engines=3, budget={"total": 1000}))
    tb = w.request(b)
    w.settle()
    w.release(tb)
    ta = w.request(a)  # 600 + 300 fit: a starts next to b
    tc = w.request(c)  # 700 needs a gone too, but a is still starting: c cannot be planned yet
    assert w.scheduler.phase(tc.id) is Phase.QUEUED and "to finish starting" in tc.blocked_by
    td = w.request(d)  # d alone would fit by stopping b: it must not jump ahead of c
    assert names(w.log, Stop) == [] and w.scheduler.phase(td.id) is Phase.QUEUED
    w.finish_start(w.record_of("a"))
    assert w.holds(ta) is not None
    assert names(w.log, Stop) == ["b"] and w.record_of("a").evict_for == tc.id  # c goes first
    w.release(ta)
    w.settle()
    assert w.holds(tc) is not None and w.holds(td) is not None and w.running() == ["c", "d"]
    w.check()


# ----------------------------------------------------------------------------- priority

BATCH = Priority.BATCH


def test_an_interactive_start_goes_before_a_batch_one_that_arrived_earlier() -> None:
    a, b, c = (model(n, port=p) for n, p in (("a", 1001), ("b", 1002), ("c", 1003)))
    w = World.of(config([a, b, c]))
    ta = w.request(a)
    w.settle()
    tb = w.request(b, priority=BATCH)  # b must wait for a's request
    tc = w.request(c)  # interactive, later: it takes the next start
    assert [t.id for t in w.scheduler.queue] == [tc.id, tb.id] and tb.overtaken == 1
    assert w.record_of("a").evict_for == tc.id
    w.release(ta)
    w.settle()
    assert w.holds(tc) is not None and w.holds(tb) is None and names(w.log, Start) == ["a", "c"]
    w.release(tc)
    w.settle()
    assert w.holds(tb) is not None and names(w.log, Start) == ["a", "c", "b"]
    w.check()


def test_a_batch_request_lets_at_most_batch_overtakes_interactive_ones_go_ahead() -> None:
    a, b = model("a", port=1001), model("b", port=1002)
    w = World.of(config([a, b], batch_overtakes=2))
    ta = w.request(a)
    w.settle()
    tb = w.request(b, priority=BATCH)  # a drains for it
    early = [w.request(a), w.request(a)]  # interactive: ahead of the batch request, served by a
    assert all(w.holds(t) is w.record_of("a") for t in early) and tb.overtaken == 2
    late = w.request(a)  # the third waits behind it: a still drains for b
    assert w.holds(late) is None and [t.id for t in w.scheduler.queue] == [tb.id, late.id]
    assert w.record_of("a").evict_for == tb.id
    for t in (ta, *early):
        w.release(t)
    w.settle()
    assert w.holds(tb) is w.record_of("b") and w.holds(late) is None  # b ran for the batch request
    w.release(tb)
    w.settle()
    assert w.holds(late) is w.record_of("a") and names(w.log, Start) == ["a", "b", "a"]
    w.check()


def test_batch_overtakes_zero_is_arrival_order() -> None:
    a, b, c = (model(n, port=p) for n, p in (("a", 1001), ("b", 1002), ("c", 1003)))
    w = World.of(config([a, b, c], batch_overtakes=0))
    ta = w.request(a)
    w.settle()
    tb = w.request(b, priority=BATCH)
    tc = w.request(c)
    assert [t.id for t in w.scheduler.queue] == [tb.id, tc.id] and tb.overtaken == 0
    w.release(ta)
    w.settle()
    assert w.holds(tb) is not None and names(w.log, Start) == ["a", "b"]


def test_batch_requests_keep_their_order_and_interactive_ones_theirs() -> None:
    a, b, c = (model(n, port=p) for n, p in (("a", 1001), ("b", 1002), ("c", 1003)))
    w = World.of(config([a, b, c], batch_overtakes=1))
    w.request(a)
    w.settle()
    b1 = w.request(b, priority=BATCH)
    c1 = w.request(c)  # passes b1 (b1: 1)
    b2 = w.request(b, priority=BATCH)
    c2 = w.request(c)  # passes b2, stops at b1 (full)
    b3 = w.request(c, priority=BATCH)
    assert [t.id for t in w.scheduler.queue] == [c1.id, b1.id, c2.id, b2.id, b3.id]
    assert (b1.overtaken, b2.overtaken, b3.overtaken) == (1, 1, 0)


def test_an_engine_that_becomes_ready_serves_its_waiting_requests_first() -> None:
    """Without this, an interactive request ahead in the queue would stop the idle, just-started
    engine for its own start, and the batch request it was started for would wait for another."""
    a, b = model("a", port=1001), model("b", port=1002)
    w = World.of(config([a, b]))
    tb = w.request(b, priority=BATCH)  # nothing runs: b starts for it
    ta = w.request(a)  # interactive, ahead of it; it cannot stop b while b starts
    assert [t.id for t in w.scheduler.queue] == [ta.id, tb.id]
    w.finish_start(w.record_of("b"))
    assert w.holds(tb) is w.record_of("b")  # served before a's start is decided
    assert names(w.log, Stop) == [] and w.record_of("b").evict_for == ta.id  # then b drains for a
    w.release(tb)
    w.settle()
    assert w.holds(ta) is w.record_of("a") and names(w.log, Start) == ["b", "a"]
    w.check()
