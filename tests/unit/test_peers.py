"""The pool's pure parts: a peer's state read defensively, the circuit breaker, the routing decision."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmgw.peers import (
    Breaker,
    BreakerState,
    Candidate,
    ModelState,
    NodeState,
    Rank,
    Start,
    StateError,
    StickyTable,
    conversation_key,
    parse_model_list,
    parse_state,
    route,
)
from llmgw.peers.state import MAX_COUNT, MAX_MODELS, OPENAI, Pool

# ---------------------------------------------------------------------------------- state


def test_a_state_survives_its_own_json() -> None:
    state = NodeState(
        node="gpu-box",
        version="0.1",
        draining=True,
        models=(
            ModelState("qwen", ("q",), ("chat",), (4096, 8192), True, False, 8192, 4, 2, 1, Start.EVICTS),
            ModelState("emb", contexts=(512,), start=Start.FITS),
        ),
        engines=1,
        max_engines=2,
        memory={"gpu0": Pool(24000.0, 9000.0)},
    )
    data = json.loads(json.dumps(state.to_json()))
    assert data["memory"] == {"gpu0": {"budget_mib": 24000.0, "used_mib": 9000.0, "free_mib": 15000.0}}
    assert (data["in_flight"], data["queued"]) == (2, 1)
    parsed = parse_state(data)
    assert parsed == state
    assert parsed.model("q") is parsed.model("qwen") is parsed.models[0]
    assert parsed.names() == ["qwen", "q", "emb"]


@pytest.mark.parametrize("data", [None, [], "x", {"models": []}, {"node": "a"}, {"node": "a", "models": {}}])
def test_what_is_not_a_state_is_refused(data: Any) -> None:
    with pytest.raises(StateError):
        parse_state(data)


def test_a_hostile_state_is_bounded() -> None:
    models: list[Any] = [
        {"name": "x" * 10_000},  # too long: dropped
        {"name": 5},
        "junk",
        {
            "name": "ok",
            "in_flight": 1e300,
            "queued": -4,
            "slots": 0,
            "start": "teleport",
            "loaded": "yes",
            "aliases": ["a", "a", 3, "b"],
            "capabilities": "chat",
            "context": float("nan"),
        },
    ] + [{"name": f"m{i}"} for i in range(MAX_MODELS + 10)]
    state = parse_state({"node": ["x"], "models": models, "memory": {"p": {"budget_mib": "lots"}}, "llmgw": 7})
    ok = state.model("ok")
    assert ok is not None
    assert ok == ModelState("ok", aliases=("a", "b"), in_flight=MAX_COUNT, queued=0, slots=1, context=0)
    assert len(state.models) == MAX_MODELS - 3  # the first MAX_MODELS entries, junk dropped
    assert state.node == "?" and state.version == "" and state.memory == {"p": Pool(0.0, 0.0)}


def test_a_plain_server_lists_models_it_serves() -> None:
    state = parse_model_list("box", {"object": "list", "data": [{"id": "a"}, {"id": "a"}, {"x": 1}, 3, {"id": "b"}]})
    assert state.kind == OPENAI and state.node == "box"
    assert [m.name for m in state.models] == ["a", "b"]
    assert all(m.loaded and m.slots == 1 for m in state.models)
    with pytest.raises(StateError):
        parse_model_list("box", {"models": []})


# ---------------------------------------------------------------------------------- breaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_trips_after_failures_in_a_row_only() -> None:
    breaker = Breaker(trip_after=3, recover_after=2, min_dwell=10.0, clock=Clock())
    assert breaker.failure("refused") is False
    assert breaker.suspect
    assert breaker.failure() is False
    breaker.success(check=False)  # a request that went well
    assert breaker.failures == 0 and breaker.allows
    assert [breaker.failure("timeout") for _ in range(3)] == [False, False, True]
    assert breaker.state is BreakerState.OPEN and not breaker.allows and breaker.trips == 1
    assert breaker.view()["last_error"] == "timeout"


def test_the_breaker_recovers_after_good_checks_and_its_dwell() -> None:
    clock = Clock()
    breaker = Breaker(trip_after=1, recover_after=2, min_dwell=10.0, clock=clock)
    breaker.failure()
    assert breaker.success(check=False) is False and not breaker.allows  # a late request proves nothing
    assert breaker.success() is False and breaker.state is BreakerState.RECOVERING
    breaker.failure()  # a bad check starts the count over
    assert breaker.state is BreakerState.OPEN
    assert breaker.success() is False
    assert breaker.success() is False  # two good checks, but only 0 s of the 10 s dwell
    clock.now = 9.9
    assert breaker.success() is False
    clock.now = 10.0
    assert breaker.success() is True
    assert breaker.state is BreakerState.CLOSED and breaker.allows


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["fail", "ok", "check", "tick"]), st.floats(0, 5)), max_size=60))
def test_breaker_properties(steps: list[tuple[str, float]]) -> None:
    """Open means no traffic; it opens only on a run of trip_after failures and closes only after
    recover_after good checks in a row, min_dwell after it tripped."""
    clock = Clock()
    breaker = Breaker(trip_after=3, recover_after=2, min_dwell=4.0, clock=clock)
    run = good = 0
    for step, dt in steps:
        was_open = not breaker.allows
        if step == "fail":
            tripped = breaker.failure()
            run = 0 if was_open else run + 1
            good = 0
            assert tripped == (not was_open and run == 3)
            if tripped:
                run = 0
        elif step in ("ok", "check"):
            closed = breaker.success(check=step == "check")
            if was_open and step == "check":
                good += 1
            run = 0 if not was_open else run
            if closed:
                assert step == "check" and good >= 2 and breaker.tripped_at is not None
                assert clock.now - breaker.tripped_at >= 4.0
                good = 0
            else:
                assert not (was_open and step == "ok" and breaker.allows)
        else:
            clock.now += dt
        assert breaker.allows == (breaker.state is BreakerState.CLOSED)


# ---------------------------------------------------------------------------------- routing


def warm(name: str = "m", in_flight: int = 0, queued: int = 0, slots: int = 2) -> ModelState:
    return ModelState(name, loaded=True, context=4096, slots=slots, in_flight=in_flight, queued=queued)


def cold(start: Start = Start.FITS, name: str = "m") -> ModelState:
    return ModelState(name, start=start)


def test_warm_first_then_the_issue_order() -> None:
    nodes = [
        Candidate("local", True, cold(Start.FITS)),
        Candidate("b", False, warm(in_flight=1)),
        Candidate("c", False, warm(in_flight=0)),
        Candidate("d", False, cold(Start.FITS)),
        Candidate("e", False, cold(Start.EVICTS)),
        Candidate("f", False, cold(Start.WAITS)),
        Candidate("g", False, ModelState("m", loading=True)),
    ]
    decided = route(nodes)
    assert decided.nodes == ("c", "b", "g", "local", "d", "e", "f")
    assert decided.ranks == (Rank.WARM, Rank.WARM, Rank.LOADING, Rank.START, Rank.START, Rank.START_EVICTING, Rank.WAIT)


def test_a_local_warm_engine_with_room_comes_first() -> None:
    decided = route([Candidate("b", False, warm()), Candidate("local", True, warm(in_flight=1))])
    assert decided.nodes == ("local", "b")


def test_busy_warm_nodes_share_by_load_and_weight() -> None:
    local = Candidate("local", True, warm(in_flight=2, queued=1))  # waiting 1 < spill 2
    heavy = Candidate("b", False, warm(in_flight=4, queued=0), weight=4.0)  # 2 waiting, load 1 per weight
    assert route([local, heavy], spill=2).nodes == ("local", "b")
    assert route([local, heavy], spill=5).nodes == ("b", "local")  # both short queues: load 3 vs 1
    # A long queue everywhere warm: a cold start elsewhere is better.
    swamped = Candidate("c", False, warm(in_flight=2, queued=5))
    assert route([swamped, Candidate("d", False, cold())], spill=2).nodes == ("d", "c")


def test_pending_requests_spread_equal_peers() -> None:
    b, c = Candidate("b", False, warm(slots=1)), Candidate("c", False, warm(slots=1))
    assert route([b, c]).first == "b"
    assert route([Candidate("b", False, warm(slots=1), pending=1), c]).first == "c"
    # Sent while its state was read: in neither the state nor the pending count, still counted.
    assert route([Candidate("b", False, warm(slots=1), ours=1), c]).first == "c"


def test_a_loading_node_takes_what_it_can_hold() -> None:
    loading = Candidate("b", False, ModelState("m", loading=True, slots=2, queued=4))
    fresh = Candidate("c", False, cold())
    assert route([loading, fresh], spill=2).nodes == ("c", "b")  # 2 would wait beyond its first 2 slots
    light = Candidate("b", False, ModelState("m", loading=True, slots=2, queued=3))
    assert route([light, fresh], spill=2).nodes == ("b", "c")  # 1 would


def test_tripped_draining_and_forwarded() -> None:
    nodes = [
        Candidate("b", False, warm(), available=False),
        Candidate("c", False, warm(), draining=True),
        Candidate("d", False, cold()),
        Candidate("local", True, cold(Start.WAITS)),
    ]
    assert route(nodes).nodes == ("d", "local")
    assert route(nodes, forwarded=True).nodes == ("local",)
    assert route(nodes[:3], forwarded=True).nodes == ()


def test_capabilities_filter_nodes() -> None:
    nodes = [
        Candidate("b", False, ModelState("m", capabilities=("embeddings",), loaded=True)),
        Candidate("c", False, cold()),
    ]
    assert route(nodes, capability="chat").nodes == ("c",)
    assert route(nodes, capability="embeddings").nodes == ("b", "c")


def test_a_conversation_sticks_until_its_node_spills() -> None:
    local = Candidate("local", True, warm())
    b = Candidate("b", False, warm(in_flight=2, queued=1))  # one would wait there
    assert route([local, b], sticky="b", spill=2).nodes == ("b", "local")
    assert route([local, b], sticky="b", spill=2).sticky
    assert route([local, b], sticky="b", spill=1).nodes == ("local", "b")  # spilled
    assert not route([local, b], sticky="b", spill=1).sticky
    cold_b = Candidate("b", False, cold())
    assert route([local, cold_b], sticky="b").nodes == ("local", "b")  # its KV cache is gone


def test_conversation_keys() -> None:
    turn1 = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
    turn2 = {
        "messages": [*turn1["messages"], {"role": "assistant", "content": "hello"}, {"role": "user", "content": "?"}]
    }
    assert conversation_key("k", turn1) == conversation_key("k", turn2)
    bare1 = {"messages": [{"role": "user", "content": "hi"}]}
    bare2 = {"messages": [*bare1["messages"], {"role": "assistant", "content": "yo"}, {"role": "user", "content": "?"}]}
    assert conversation_key("k", bare1) == conversation_key("k", bare2) != conversation_key("k", turn1)
    assert conversation_key("k", turn1) != conversation_key("other", turn1)
    other = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "yo"}]}
    assert conversation_key("k", turn1) != conversation_key("k", other)
    assert conversation_key("k", {"prompt": "abc"}) is not None
    assert conversation_key("k", {"input": "abc"}) is not None
    assert conversation_key("k", {"stream": True}) is None


def test_the_sticky_table_forgets() -> None:
    table = StickyTable(size=2, ttl=10.0)
    table.put("a", "b", 0.0)
    table.put("b", "c", 1.0)
    assert table.get("a", 5.0) == "b"  # read: now the most recently used
    table.put("c", "d", 2.0)  # "b" was the least recently used
    assert table.get("b", 5.0) is None and len(table) == 2
    assert table.get("a", 10.5) is None  # too old
    assert table.get(None, 0.0) is None


_models = st.builds(
    ModelState,
    name=st.just("m"),
    capabilities=st.sampled_from([None, ("chat",), ("embeddings",)]),
    loaded=st.booleans(),
    loading=st.booleans(),
    slots=st.integers(1, 4),
    in_flight=st.integers(0, 6),
    queued=st.integers(0, 4),
    start=st.sampled_from(list(Start)),
)
_candidates = st.lists(
    st.builds(
        Candidate,
        node=st.sampled_from(["a", "b", "c", "d", "e"]),
        local=st.just(False),
        model=_models,
        weight=st.sampled_from([0.5, 1.0, 3.0]),
        pending=st.integers(0, 3),
        ours=st.integers(0, 3),
        available=st.booleans(),
        draining=st.booleans(),
    ),
    max_size=6,
    unique_by=lambda c: c.node,
)


@settings(max_examples=300, deadline=None)
@given(
    peers=_candidates,
    local=st.one_of(st.none(), _models),
    capability=st.sampled_from([None, "chat", "embeddings"]),
    forwarded=st.booleans(),
    sticky=st.sampled_from([None, "a", "b", "local"]),
    spill=st.integers(1, 4),
)
def test_routing_properties(
    peers: list[Candidate],
    local: ModelState | None,
    capability: str | None,
    forwarded: bool,
    sticky: str | None,
    spill: int,
) -> None:
    candidates = [*peers, *([Candidate("local", True, local)] if local is not None else [])]
    decided = route(candidates, capability=capability, forwarded=forwarded, sticky=sticky, spill=spill)
    by_node = {c.node: c for c in candidates}
    # Never a tripped or draining peer, never a peer for a forwarded request, each node once.
    assert len(set(decided.nodes)) == len(decided.nodes)
    for node in decided.nodes:
        c = by_node[node]
        assert c.local or (c.available and not c.draining and not forwarded)
        assert c.model.serves(capability)
    # Every node that may serve it is tried (failover goes down the whole list).
    eligible = {
        c.node
        for c in candidates
        if (c.local or (c.available and not c.draining and not forwarded)) and c.model.serves(capability)
    }
    assert set(decided.nodes) == eligible
    # Ranks never get worse down the list, but for a conversation put first.
    rest = decided.ranks[1:] if decided.sticky else decided.ranks
    assert list(rest) == sorted(rest)
    # This node with a warm engine with room is first, unless a conversation sticks elsewhere.
    if "local" in eligible and decided.ranks[decided.nodes.index("local")] is Rank.WARM and not decided.sticky:
        assert decided.first == "local"
