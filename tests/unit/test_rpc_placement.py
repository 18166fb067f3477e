"""RPC workers in placement, and the memory estimate in the book: pure, without processes."""

from __future__ import annotations

from scheduling_world import World, config, model, names

from llmgw.config import RpcWorker
from llmgw.runtime import Usage
from llmgw.scheduling.memory import MemoryBook
from llmgw.scheduling.scheduler import Phase, Start, Stop

W1 = RpcWorker("w1", "10.0.0.2:50052", memory=8000)
W2 = RpcWorker("w2", "10.0.0.3:50052", memory=8000)


def test_two_engines_never_share_a_worker_even_with_room_for_both() -> None:
    a = model("a", port=1001, rpc=(W1,))
    b = model("b", port=1002, rpc=(W1, W2))
    c = model("c", port=1003, rpc=(W2,))
    w = World.of(config([a, b, c], max_engines=3, workers=(W1, W2)))
    for m in (a, c):  # c: another worker, beside a
        t = w.request(m)
        w.settle()
        w.release(t)
    assert w.running() == ["a", "c"] and names(w.log, Stop) == []
    tb = w.request(b)  # needs w1 and w2: both holders make room
    assert sorted(names(w.log, Stop)) == ["a", "c"]
    w.settle()
    assert w.running() == ["b"] and w.holds(tb) is w.record_of("b")
    w.check()


def test_a_busy_worker_holder_drains_before_the_next_engine_gets_the_worker() -> None:
    a = model("a", port=1001, rpc=(W1,))
    b = model("b", port=1002, rpc=(W1,))
    w = World.of(config([a, b], max_engines=2, workers=(W1,)))
    ta = w.request(a)
    w.settle()
    tb = w.request(b)
    assert names(w.log, Start) == ["a"] and w.scheduler.phase(tb.id) is Phase.DRAINING
    w.release(ta)
    w.settle()
    assert w.running() == ["b"] and w.holds(tb) is not None
    w.check()


def test_a_pinned_holder_of_the_worker_is_named_in_the_wait() -> None:
    a = model("a", port=1001, rpc=(W1,), pinned=True)
    b = model("b", port=1002, rpc=(W1,))
    w = World.of(config([a, b], max_engines=2, workers=(W1,)))
    ta = w.request(a)
    w.settle()
    w.release(ta)
    tb = w.request(b)
    assert w.scheduler.phase(tb.id) is Phase.QUEUED
    (ticket,) = w.scheduler.queue
    assert ticket.blocked_by == "RPC worker 'w1' is held by the pinned model 'a'"


def test_a_worker_s_memory_is_its_own_pool() -> None:
    """w1 lends 8000 MiB: a variant that needs more there never starts, and says why."""
    big = model("big", port=1001, rpc=(W1,), pools=("w1",), memory={"w1": 9000})
    w = World.of(config([big], max_engines=2, workers=(W1,)))
    w.request(big)
    assert names(w.log, Start) == []
    (ticket,) = w.scheduler.queue
    assert ticket.blocked_by == "'big' needs 9000 MiB on w1 (declared), more than its budget (8000 MiB)"


def test_the_estimate_fills_in_until_measured_figures_win() -> None:
    a = model("a", port=1001, pools=("ram", "w1"), rpc=(W1,))
    book = MemoryBook({"ram": 1000.0, "w1": 8000.0})
    v = a.variants[0]
    assert book.need(a, v) == {"ram": 1000.0, "w1": 8000.0} and book.source(a, v) == "unknown"
    assert book.estimated(a, v, {"ram": 300.0, "w1": 2000.0})
    assert not book.estimated(a, v, {"ram": 300.0, "w1": 2000.0})  # unchanged
    assert book.need(a, v) == {"ram": 300.0, "w1": 2000.0} and book.source(a, v) == "estimated"
    book.record(a, v, Usage(280.0))  # the host measured; w1 not yet
    assert book.need(a, v) == {"ram": 280.0, "w1": 2000.0} and book.source(a, v) == "estimated"
    book.record(a, v, Usage(280.0, remote={"w1": 1900.0}))
    assert book.need(a, v) == {"ram": 280.0, "w1": 1900.0} and book.source(a, v) == "measured"
    assert book.estimate_of(a, v) == {"ram": 300.0, "w1": 2000.0}
    assert book.measured_of(a, v) == {"ram": 280.0, "w1": 1900.0}


def test_an_estimate_learned_while_engines_run_makes_room_for_a_queued_start() -> None:
    """Never measured, a takes the whole budget and b waits; a's estimate says both fit."""
    a = model("a", port=1001, pools=("total",))
    b = model("b", port=1002, pools=("total",), memory={"total": 400})
    w = World.of(config([a, b], max_engines=2, budget={"total": 1000}))
    ta = w.request(a)
    w.settle()
    tb = w.request(b)
    assert w.scheduler.phase(tb.id) is Phase.DRAINING  # a (busy) must go for b
    w.scheduler.memory.estimated(a, a.variants[0], {"total": 500.0})
    w.take(w.scheduler.estimated(w.now))
    w.settle()
    assert w.running() == ["a", "b"] and w.holds(ta) is not None and w.holds(tb) is not None
    assert names(w.log, Stop) == []
    w.check()
