"""Engines that misbehave: garbage from the count routes, truncated bodies, requests never answered,
a flapping health check, a stream that stalls, an engine that freezes. Every case ends with a
502/504 or the protocol's error event (never a hang), no lease is left held, and the gateway goes
on serving. Bounds below are hang guards, not timing claims."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import psutil
import pytest

from conftest import Gateway, assert_error, chat_body, events_of, post, running, sse_data, wait_for

CHAT = "/v1/chat/completions"
GUARD = 30.0


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def no_lease_left(gw: Gateway) -> None:
    manager = gw.server.services.manager
    deadline = time.monotonic() + GUARD
    while manager.in_flight or manager.queued:
        assert time.monotonic() < deadline, (manager.in_flight, manager.queued)
        await asyncio.sleep(0.02)


async def serves(http: Any, gw: Gateway, name: str = "ok") -> None:
    resp = await post(http, gw.url + CHAT, chat_body(name))
    assert resp.code == 200, resp.body


@pytest.mark.parametrize("mode", ["truncated", "content-type", "shape"])
async def test_garbage_from_the_count_routes_is_a_502(start_gateway, make_model, http, mode: str) -> None:
    bad, ok = make_model("bad", [2048], extra_args=["--fake-count-garbage", mode]), make_model("ok", [2048])
    gw = await start_gateway([bad, ok], max_engines=2)
    for path, body in (
        (CHAT, chat_body("bad")),
        ("/v1/messages", {"model": "bad", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"model": "bad", "prompt": "a b c", "max_tokens": 4}),
    ):
        resp = await post(http, gw.url + path, body)
        assert resp.code == 502, (path, resp.body)
        assert b"token_count_failed" in resp.body or b"api_error" in resp.body, resp.body
    await no_lease_left(gw)
    await serves(http, gw)


async def test_a_truncated_body_is_a_502_or_an_error_event(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048], extra_args=["--fake-truncate-body"])
    gw = await start_gateway([m, make_model("ok", [2048])], max_engines=2)
    assert_error(await post(http, gw.url + CHAT, chat_body("m", max_tokens=4)), 502, "engine_unavailable")
    resp = await post(http, gw.url + CHAT, chat_body("m", max_tokens=4, stream=True))
    assert resp.code == 200
    last = json.loads(sse_data(resp.body)[-1])
    assert last["error"]["code"] == "engine_unavailable"
    assert len(events_of(m, "truncated")) == 2
    await no_lease_left(gw)
    await serves(http, gw)


async def test_requests_an_engine_never_answers_end_with_a_502(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048], extra_args=["--fake-hang-requests"])
    gw = await start_gateway([m, make_model("ok", [2048])], max_engines=2, stream_idle_timeout=1)
    for path, body in (
        (CHAT, chat_body("m", max_tokens=4)),  # the count never comes back
        (CHAT, chat_body("m", max_tokens=4, stream=True)),
        ("/tokenize", {"model": "m", "content": "a b"}),  # forwarded at once: its answer never comes
    ):
        resp = await asyncio.wait_for(post(http, gw.url + path, body), GUARD)
        assert resp.code == 502, (path, resp.code, resp.body)
    assert events_of(m, "hung")  # the engine did get them
    await no_lease_left(gw)
    await serves(http, gw)


async def test_a_flapping_health_check_does_not_stop_a_working_engine(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048], extra_args=["--fake-health-flap", "0.2", "--fake-tokens", "40",
                                            "--fake-token-delay", "0.05"])  # fmt: skip
    gw = await start_gateway([m], health_check_timeout=0.3)
    for _ in range(2):  # each lasts ~2 s: several probes, some of them 503
        resp = await post(http, gw.url + CHAT, chat_body("m"))
        assert resp.code == 200 and json.loads(resp.body)["usage"]["completion_tokens"] == 40
    assert len(events_of(m, "start")) == 1 and events_of(m, "exit") == []


async def test_a_stream_that_stalls_ends_with_an_error_event_and_is_aborted(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048], extra_args=["--fake-stall-after-chunks", "2", "--fake-tokens", "10"])
    gw = await start_gateway([m], stream_idle_timeout=1)
    for path, body, marker in (
        (CHAT, chat_body("m", stream=True), b'data: {"error": {'),
        ("/v1/messages", {"model": "m", "max_tokens": 10, "stream": True,
                          "messages": [{"role": "user", "content": "hi"}]}, b"event: error"),
    ):  # fmt: skip
        resp = await asyncio.wait_for(post(http, gw.url + path, body), GUARD)
        assert resp.code == 200 and marker in resp.body and b"stream_idle_timeout" in resp.body, resp.body[-300:]
    assert len(events_of(m, "stalled")) == 2
    await no_lease_left(gw)
    deadline = time.monotonic() + GUARD
    while len(events_of(m, "cancelled")) < 2:  # the engine saw the gateway hang up
        assert time.monotonic() < deadline, m.read_events()
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_frozen_engine_is_noticed_killed_and_restarted(start_gateway, make_model, http, stream: bool) -> None:
    m = make_model("m", [2048], extra_args=["--fake-tokens", "200", "--fake-token-delay", "0.05"])
    gw = await start_gateway([m], health_check_timeout=0.5)
    request = asyncio.ensure_future(post(http, gw.url + CHAT, chat_body("m", stream=stream)))
    deadline = time.monotonic() + GUARD
    while not events_of(m, "request"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    pid = events_of(m, "start")[0]["pid"]
    os.kill(pid, signal.SIGSTOP)  # a stopped process: the kernel still accepts, nothing answers
    try:
        resp = await asyncio.wait_for(request, GUARD)  # noticed, not left waiting for 200 tokens
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGCONT)
    if stream:
        assert resp.code == 200 and b'"error"' in resp.body.split(b"\n\n")[-2], resp.body[-200:]
    else:
        assert_error(resp, 502, "engine_unavailable")
    await wait_for(lambda: gone(pid), GUARD, "the frozen engine to be killed")
    await no_lease_left(gw)
    await serves(http, gw, "m")  # a new engine
    assert len(events_of(m, "start")) == 2
    assert [e["model"] for e in (await running(http, gw))["engines"]] == ["m"]


async def test_an_engine_whose_http_side_hangs_from_the_start_is_a_504(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048], extra_args=["--fake-hang-health"])
    gw = await start_gateway([m, make_model("ok", [2048])], max_engines=2, health_check_timeout=0.5,
                             engine_startup_timeout=2)  # fmt: skip
    resp = await asyncio.wait_for(post(http, gw.url + CHAT, chat_body("m")), GUARD)
    assert_error(resp, 504, "engine_startup_timeout")
    pid = events_of(m, "start")[0]["pid"]
    await wait_for(lambda: gone(pid), GUARD, "the engine to be stopped")
    await no_lease_left(gw)
    await serves(http, gw)
