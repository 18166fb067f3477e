"""Concurrency: shared engine, waiting for a switch, queue fairness, queue timeout, a multi-model storm.

Orderings are read from the fake engines' event files (one clock: time.time() of each process),
never inferred from durations.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
from tornado.httpclient import AsyncHTTPClient

from conftest import (
    FakeModel,
    Gateway,
    chat_body,
    events_of,
    only_engine,
    post,
    running,
    sse_data,
    wait_until,
)

CHAT = "/v1/chat/completions"
GUARD = 15.0  # hang guard for polls; never a performance claim


def has_event(model: FakeModel, kind: str, count: int = 1) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(events_of(model, kind)) >= count

    return check


def queued(http: AsyncHTTPClient, gw: Gateway, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await running(http, gw))["queued"] == count

    return check


def by_id(model: FakeModel, kind: str) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in events_of(model, kind)}


# ----------------------------------------------------------------------------- tests


async def test_same_model_requests_share_the_engine_concurrently(start_gateway, make_model, http) -> None:
    m = make_model("m", [8192], extra_args=["--fake-tokens", "10", "--fake-token-delay", "0.2", "-np", "4"])
    gw = await start_gateway([m])
    responses = await asyncio.gather(*(post(http, gw.url + CHAT, chat_body("m", 3 + i, stream=True)) for i in range(4)))
    for resp in responses:
        assert resp.code == 200, resp.body
        assert sse_data(resp.body)[-1] == "[DONE]"
    requests, dones = by_id(m, "request"), by_id(m, "done")
    assert len(requests) == 4 and set(dones) == set(requests)
    # Every request was in the engine before any of them finished: they all overlapped.
    assert max(e["t"] for e in requests.values()) < min(e["t"] for e in dones.values())
    assert len(events_of(m, "start")) == 1


async def test_other_model_waits_for_running_request_then_switches(start_gateway, make_model, http) -> None:
    a = make_model("a", [2048], extra_args=["--fake-tokens", "10", "--fake-token-delay", "0.1"])
    b = make_model("b", [2048])
    gw = await start_gateway([a, b])
    first = asyncio.ensure_future(post(http, gw.url + CHAT, chat_body("a", stream=True)))
    await wait_until(has_event(a, "request"), "a's request to reach its engine", timeout=GUARD)
    second = asyncio.ensure_future(post(http, gw.url + CHAT, chat_body("b")))
    await wait_until(queued(http, gw, 1), "b's request to queue", timeout=GUARD)
    assert not events_of(a, "done")  # b really waits while a is still generating
    ra, rb = await asyncio.wait_for(asyncio.gather(first, second), GUARD)
    assert ra.code == 200 and sse_data(ra.body)[-1] == "[DONE]"
    assert rb.code == 200, rb.body
    (a_done,) = events_of(a, "done")
    (a_exit,) = events_of(a, "exit")
    (b_start,) = events_of(b, "start")
    assert a_done["t"] < a_exit["t"] < b_start["t"]
    assert only_engine(await running(http, gw))["model"] == "b"


async def test_a_client_that_leaves_while_queued_starts_nothing(start_gateway, make_model, http) -> None:
    a = make_model("a", [2048], extra_args=["--fake-tokens", "10", "--fake-token-delay", "0.1"])
    b = make_model("b", [2048])
    gw = await start_gateway([a, b])
    first = asyncio.ensure_future(post(http, gw.url + CHAT, chat_body("a", stream=True)))
    await wait_until(has_event(a, "request"), "a's request to reach its engine", timeout=GUARD)
    body = json.dumps(chat_body("b")).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    await wait_until(queued(http, gw, 1), "b's request to queue", timeout=GUARD)
    writer.close()  # the client gives up while b's request waits for a to drain
    await wait_until(queued(http, gw, 0), "b's request to leave the queue", timeout=GUARD)
    ra = await asyncio.wait_for(first, GUARD)
    assert ra.code == 200
    # a is no longer draining for b: another request to a is served at once, on the same engine.
    assert (await post(http, gw.url + CHAT, chat_body("a", max_tokens=1))).code == 200
    assert events_of(b, "start") == [] and len(events_of(a, "start")) == 1 and events_of(a, "exit") == []


async def test_queue_is_fair_across_models(start_gateway, make_model, http) -> None:
    a = make_model("a", [2048], extra_args=["--fake-tokens", "10", "--fake-token-delay", "0.1"])
    b = make_model("b", [2048])
    gw = await start_gateway([a, b])
    a1 = asyncio.ensure_future(post(http, gw.url + CHAT, chat_body("a", stream=True)))
    await wait_until(has_event(a, "request"), "a1 to reach its engine", timeout=GUARD)
    b1 = asyncio.ensure_future(post(http, gw.url + CHAT, chat_body("b")))
    await wait_until(queued(http, gw, 1), "b1 to queue", timeout=GUARD)
    # a's engine runs and could serve a2 at once, but b1 asked first: a2 lines up behind it.
    a2 = asyncio.ensure_future(post(http, gw.url + CHAT, chat_body("a", 4, max_tokens=2)))
    await wait_until(queued(http, gw, 2), "a2 to queue", timeout=GUARD)
    assert not events_of(a, "done")
    results = await asyncio.wait_for(asyncio.gather(a1, b1, a2), GUARD)
    for resp in results:
        assert resp.code == 200, resp.body
    a_requests = events_of(a, "request")
    assert [e["prompt_tokens"] for e in a_requests] == [6, 7]  # a1, then a2
    (b_request,) = events_of(b, "request")
    (b_done,) = events_of(b, "done")
    a1_done = events_of(a, "done")[0]
    assert a1_done["t"] < b_request["t"] < b_done["t"] < a_requests[1]["t"]
    # a2 needed a's engine again: b's engine came and went in between.
    assert len(events_of(a, "start")) == 2


async def test_queue_timeout_is_503_with_retry_after(start_gateway, make_model, http) -> None:
    a = make_model("a", [2048], extra_args=["--fake-tokens", "20", "--fake-token-delay", "0.1"])
    b = make_model("b", [2048])
    gw = await start_gateway([a, b], queue_timeout=0.5)
    first = asyncio.ensure_future(post(http, gw.url + CHAT, chat_body("a", stream=True)))
    await wait_until(has_event(a, "request"), "a's request to reach its engine", timeout=GUARD)
    rb = await post(http, gw.url + CHAT, chat_body("b"))
    assert rb.code == 503, rb.body
    assert int(rb.headers["Retry-After"]) >= 1
    error = json.loads(rb.body)["error"]
    assert set(error) == {"message", "type", "code"}
    assert error["code"] == "queue_timeout"
    assert not events_of(a, "done")  # it gave up while a was still busy, not after
    ra = await asyncio.wait_for(first, GUARD)
    assert ra.code == 200 and sse_data(ra.body)[-1] == "[DONE]"
    assert b.read_events() == []  # b's engine was never started
    info = await running(http, gw)
    assert only_engine(info)["model"] == "a" and info["queued"] == 0 and info["in_flight"] == 0


def _live_engines() -> list[int]:
    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and any("fake_llama_server" in a for a in child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


async def test_storm_over_three_models_one_engine_at_a_time(start_gateway, make_model, http) -> None:
    models = [make_model(f"m{i}", [2048], extra_args=["--fake-tokens", "3"]) for i in range(3)]
    assert len({m.port for m in models}) == 3
    gw = await start_gateway(models)
    most_alive = 0
    storm_over = asyncio.Event()

    async def sample() -> None:
        nonlocal most_alive
        while not storm_over.is_set():
            most_alive = max(most_alive, len(_live_engines()))
            await asyncio.sleep(0.01)

    sampler = asyncio.ensure_future(sample())
    payloads = [chat_body(f"m{i % 3}", 3 + i, stream=i % 2 == 0) for i in range(12)]
    try:
        results = await asyncio.wait_for(asyncio.gather(*(post(http, gw.url + CHAT, p) for p in payloads)), 60)
    finally:
        storm_over.set()
        await sampler
    for payload, resp in zip(payloads, results, strict=True):
        assert resp.code == 200, resp.body
        if payload["stream"]:
            data = sse_data(resp.body)
            assert data[-1] == "[DONE]"
            assert json.loads(data[0])["model"] == payload["model"]
        else:
            assert json.loads(resp.body)["model"] == payload["model"]
    for m in models:
        assert len(events_of(m, "done")) == 4
    assert most_alive == 1
    # From the engines' own logs: every start comes after the previous engine's exit.
    lifecycle = sorted((e["t"], e["event"]) for m in models for e in m.read_events() if e["event"] in ("start", "exit"))
    kinds = [kind for _, kind in lifecycle]
    assert kinds[0] == "start"
    assert all(x != y for x, y in itertools.pairwise(kinds)), kinds
    assert kinds.count("start") >= 3

    await gw.server.stop(grace=1.0)
    deadline = time.monotonic() + GUARD
    while _live_engines() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _live_engines() == []
    assert kinds.count("start") == sum(len(events_of(m, "exit")) for m in models)
