"""One model over RPC workers, through a gateway, on the fake tier: real agents
(``python -m llmgw agent``) supervising fake ``ggml-rpc-server`` workers (fake_engine/fake_rpc.py),
and the fake llama-server as the coordinator (it connects to its workers and aborts, as
llama-server does, when one went away). The real thing runs in tests/real/test_rpc.py."""

from __future__ import annotations

import os
import signal
import socket

import pytest
from rpc_agents import agents_fixture  # noqa: F401 (the fixture "agents")

from conftest import assert_error, chat_body, events_of, post, running, wait_for

CHAT = "/v1/chat/completions"


async def test_a_model_over_two_workers_is_served_and_holds_both(start_gateway, make_model, http, agents) -> None:
    w1, w2 = agents("w1", api_key="k1"), agents("w2")
    m = make_model("m", [2048], model_extra={"rpc": ["w1", "w2"]})
    gw = await start_gateway([m], memory_budget={"ram": 4000}, rpc_workers={"w1": w1.table(500), "w2": w2.table(500)})
    resp = await post(http, gw.url + CHAT, chat_body("m"))
    assert resp.code == 200, resp.body
    (start,) = events_of(m, "start")
    for agent in (w1, w2):
        worker = agent.worker()
        assert worker["held"] and worker["clients"], worker  # the coordinator's connection
    manager = gw.server.services.manager
    await wait_for(lambda: manager.memory.source(gw.config.models[0], gw.config.models[0].variants[0]) == "measured")
    (engine,) = (await running(http, gw))["engines"]
    assert set(engine["memory_measured_mib"]) == {"ram", "w1", "w2"}, engine  # the workers' too, from their agents
    assert engine["memory_measured_mib"]["w1"] == pytest.approx(w1.worker()["memory_mib"], rel=0.5)
    assert start["pid"] == engine["pid"]


async def test_two_engines_never_share_a_worker(start_gateway, make_model, http, agents) -> None:
    w1 = agents("w1")
    a = make_model("a", [2048], model_extra={"rpc": ["w1"]})
    b = make_model("b", [2048], model_extra={"rpc": ["w1"]})
    gw = await start_gateway([a, b], max_engines=2, rpc_workers={"w1": w1.table()})
    for name in ("a", "b", "a"):
        resp = await post(http, gw.url + CHAT, chat_body(name))
        assert resp.code == 200, resp.body
    # Room for two engines, but one worker: each start stopped the other.
    assert len(events_of(a, "exit")) == 1 and len(events_of(b, "exit")) == 1
    assert [e["model"] for e in (await running(http, gw))["engines"]] == ["a"]


async def test_a_killed_worker_gives_a_503_then_the_restarted_one_serves(
    start_gateway, make_model, http, agents
) -> None:
    w1 = agents("w1", restart_delay=8.0)  # the agent starts it again after 8 s; the gateway waits 1 s
    m = make_model("m", [2048], model_extra={"rpc": ["w1"]})
    gw = await start_gateway([m], queue_timeout=1, rpc_workers={"w1": w1.table()})
    assert (await post(http, gw.url + CHAT, chat_body("m"))).code == 200
    os.kill(w1.worker()["pid"], signal.SIGKILL)
    w1.wait_for(lambda w: w["state"] == "restarting", "the agent to see it die")
    resp = await post(http, gw.url + CHAT, chat_body("m"))
    error = assert_error(resp, 503, "rpc_worker_unavailable")
    assert "RPC worker 'w1'" in error["message"] and "killed by signal 9" in error["message"], error
    assert int(resp.headers["Retry-After"]) >= 1
    assert len(events_of(m, "start")) == 1  # the new engine was never spawned: it waited for its worker
    w1.wait_for(lambda w: w["state"] == "running", "the agent to start it again", timeout=60)
    resp = await post(http, gw.url + CHAT, chat_body("m"))
    assert resp.code == 200, resp.body
    assert len(events_of(m, "start")) == 2


async def test_a_worker_whose_agent_is_down_is_named_in_a_503(start_gateway, make_model, http, agents) -> None:
    w1, w2 = agents("w1"), agents("w2")
    m = make_model("m", [2048], model_extra={"rpc": ["w1", "w2"]})
    gw = await start_gateway([m], rpc_workers={"w1": w1.table(), "w2": w2.table()})
    w2.stop()
    resp = await post(http, gw.url + CHAT, chat_body("m"))
    error = assert_error(resp, 503, "rpc_worker_unavailable")
    assert "RPC worker 'w2'" in error["message"] and "does not answer" in error["message"], error
    assert events_of(m, "start") == []  # never spawned


async def test_a_worker_stuck_on_a_dead_client_from_this_host_is_restarted(
    start_gateway, make_model, http, agents
) -> None:
    """A coordinator of ours whose host vanished leaves the worker waiting on its connection for
    ever: the gateway, which runs no engine on it, has the agent restart it."""
    w1 = agents("w1")
    stale = socket.create_connection(("127.0.0.1", w1.worker_port))  # a client that never leaves
    try:
        before = w1.wait_for(lambda w: w["held"], "the stale client to hold it")
        m = make_model("m", [2048], model_extra={"rpc": ["w1"]})
        gw = await start_gateway([m], rpc_workers={"w1": w1.table()})
        resp = await post(http, gw.url + CHAT, chat_body("m"))
        assert resp.code == 200, resp.body
        after = w1.worker()
        assert after["pid"] != before["pid"] and after["last_exit"]["reason"] == "restarted", after
    finally:
        stale.close()
