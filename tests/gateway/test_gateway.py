"""Gateway end to end, with fake engines: routes, errors, variant selection, streaming, disconnects, ops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient

from conftest import (
    FakeModel,
    Gateway,
    assert_error,
    assert_no_traceback,
    chat_body,
    events_of,
    get,
    only_engine,
    post,
    running,
    sse_data,
    wait_for,
    wait_until,
)

CHAT = "/v1/chat/completions"
GUARD = 10.0  # hang guard for polls; never a performance claim


# ----------------------------------------------------------------------------- helpers


async def wait_event(
    model: FakeModel, kind: str, where: Callable[[dict[str, Any]], bool] = lambda e: True, timeout: float = GUARD
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for event in model.read_events():
            if event["event"] == kind and where(event):
                return event
        if time.monotonic() > deadline:
            raise AssertionError(f"no {kind!r} event within {timeout} s: {model.read_events()}")
        await asyncio.sleep(0.02)


async def raw_request(gw: Gateway, payload: dict[str, Any]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a chat request on a raw socket (so the test can hang up whenever it wants)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    body = json.dumps(payload).encode()
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    return reader, writer


async def hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


# ----------------------------------------------------------------------------- routes


async def test_models_lists_every_model_in_openai_format(start_gateway, make_model, http) -> None:
    a = make_model("alpha", [4096, 1024])
    b = make_model("beta", [2048])
    gw = await start_gateway([a, b])
    resp = await get(http, gw.url + "/v1/models")
    assert resp.code == 200, resp.body
    assert resp.headers["Content-Type"].startswith("application/json")
    data = json.loads(resp.body)
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["alpha", "beta"]
    for entry in data["data"]:
        assert entry["object"] == "model"
        assert isinstance(entry["created"], int)
        assert isinstance(entry["owned_by"], str) and entry["owned_by"]
    assert [m["context_length"] for m in data["data"]] == [4096, 2048]
    # Listing is answered from the config: it starts no engine.
    assert a.read_events() == [] and b.read_events() == []


async def test_health_is_ok(start_gateway, make_model, http) -> None:
    gw = await start_gateway([make_model("m", [1024])])
    resp = await get(http, gw.url + "/health")
    assert resp.code == 200, resp.body
    assert json.loads(resp.body)["status"] == "ok"


async def test_chat_non_stream_relays_status_body_and_usage(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048], extra_args=["--fake-tokens", "5"])
    gw = await start_gateway([m])
    resp = await post(http, gw.url + CHAT, chat_body("m", 7))
    assert resp.code == 200, resp.body
    assert resp.headers["Content-Type"].startswith("application/json")
    data = json.loads(resp.body)
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "tok0 tok1 tok2 tok3 tok4"}
    assert data["choices"][0]["finish_reason"] == "stop"
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert data["usage"] == {**usage, "prompt_tokens_details": {"cached_tokens": 0}}  # llama-server's usage
    # The body is the engine's own answer, relayed (same completion id as the engine logged).
    (request,) = events_of(m, "request")
    assert data["id"] == request["id"]
    assert request["stream"] is False


INVALID_BODIES = {
    "bad-json": b'{"model": "m", "messages": [',
    "not-utf8": b'{"model": "\xff"}',
    "array-body": json.dumps([{"model": "m"}]).encode(),
    "string-body": b'"hello"',
    "missing-model": json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
    "empty-model": json.dumps(chat_body("")).encode(),
    "model-not-string": json.dumps({**chat_body("m"), "model": 7}).encode(),
    "missing-messages": json.dumps({"model": "m"}).encode(),
    "messages-not-list": json.dumps({"model": "m", "messages": "hi"}).encode(),
    "empty-messages": json.dumps({"model": "m", "messages": []}).encode(),
    "message-without-role": json.dumps({"model": "m", "messages": [{"content": "hi"}]}).encode(),
    "stream-not-bool": json.dumps(chat_body("m", stream="yes")).encode(),
    "max-tokens-negative": json.dumps(chat_body("m", max_tokens=-5)).encode(),
    "max-tokens-not-int": json.dumps(chat_body("m", max_tokens="many")).encode(),
}


@pytest.mark.parametrize("case", list(INVALID_BODIES))
async def test_invalid_chat_request_is_400(start_gateway, make_model, http, case: str) -> None:
    m = make_model("m", [2048])
    gw = await start_gateway([m])
    resp = await post(http, gw.url + CHAT, INVALID_BODIES[case])
    error = assert_error(resp, 400)
    assert error["type"] == "invalid_request_error"
    # A request the gateway can reject by itself must not start (or switch) an engine.
    assert m.read_events() == []


async def test_unknown_model_is_404(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048])
    gw = await start_gateway([m])
    resp = await post(http, gw.url + CHAT, chat_body("nope"))
    error = assert_error(resp, 404, "model_not_found")
    assert "nope" in error["message"]
    assert m.read_events() == []


@pytest.mark.parametrize(("method", "path"), [("GET", "/nothing"), ("POST", "/v1/audio/speech"), ("GET", "/v1")])
async def test_unknown_route_is_404(start_gateway, make_model, http, method: str, path: str) -> None:
    gw = await start_gateway([make_model("m", [2048])])
    body = b"{}" if method == "POST" else None
    resp = await http.fetch(gw.url + path, method=method, body=body, raise_error=False)
    assert_error(resp, 404)


@pytest.mark.parametrize(("method", "path"), [("GET", CHAT), ("PUT", CHAT), ("POST", "/v1/models")])
async def test_wrong_method_is_405(start_gateway, make_model, http, method: str, path: str) -> None:
    gw = await start_gateway([make_model("m", [2048])])
    body = b"{}" if method in ("POST", "PUT") else None
    resp = await http.fetch(gw.url + path, method=method, body=body, raise_error=False)
    assert_error(resp, 405)


async def test_body_over_max_body_size_is_413(start_gateway, make_model, http) -> None:
    m = make_model("m", [8192])
    gw = await start_gateway([m], max_body_size=1000)
    big = json.dumps(chat_body("m", 300)).encode()
    assert len(big) > 1000
    error = assert_error(await post(http, gw.url + CHAT, big), 413)
    assert "1000" in error["message"]
    # Under the limit is served normally.
    small = json.dumps(chat_body("m", 10)).encode()
    assert len(small) < 1000
    assert (await post(http, gw.url + CHAT, small)).code == 200


async def test_chunked_body_over_max_body_size_is_413(start_gateway, make_model) -> None:
    m = make_model("m", [8192])
    gw = await start_gateway([m], max_body_size=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        body = json.dumps(chat_body("m", 300)).encode()
        for i in range(0, 1200, 200):  # just over the limit; the gateway answers without the rest
            writer.write(b"%x\r\n%s\r\n" % (200, body[i : i + 200]))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), GUARD)  # the gateway closes the connection after it
    finally:
        await hang_up(writer)
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), raw
    error = json.loads(payload)["error"]
    assert set(error) == {"message", "type", "code"} and "1000" in error["message"]
    assert m.read_events() == []


async def test_prompt_bigger_than_largest_variant_is_context_length_exceeded(start_gateway, make_model, http) -> None:
    gw = await start_gateway([make_model("m", [1024, 2048])])
    resp = await post(http, gw.url + CHAT, chat_body("m", 3000, max_tokens=100))
    error = assert_error(resp, 400, "context_length_exceeded")
    # llama-server's own type and fields, so clients that parse llama-server's error understand it.
    assert error["type"] == "exceed_context_size_error"
    assert error["n_prompt_tokens"] == 3000 + 3 and error["n_ctx"] == 2048
    assert str(3000 + 3 + 100) in error["message"]  # the prompt plus its (smaller than the reserve) budget
    assert "2048" in error["message"]


async def test_engine_failing_at_startup_is_503(start_gateway, make_model, http) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=["--fake-exit-at-startup", "3"])])
    resp = await post(http, gw.url + CHAT, chat_body("m"))
    error = assert_error(resp, 503)
    assert "exit" in error["message"] and "3" in error["message"]
    assert "'m'" in error["message"]


async def test_engine_startup_timeout_is_504(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048], extra_args=["--fake-never-healthy"])
    gw = await start_gateway([m], engine_startup_timeout=1.5)
    resp = await post(http, gw.url + CHAT, chat_body("m"))
    error = assert_error(resp, 504)
    assert "not ready" in error["message"] or "timeout" in error["message"]
    # The engine that never became ready was stopped (it logs its exit on SIGTERM).
    await wait_event(m, "exit")
    assert only_engine(await running(http, gw)) is None


async def test_engine_dying_mid_stream_ends_with_sse_error_and_gateway_recovers(
    start_gateway, make_model, http
) -> None:
    # Token delay: Tornado's client may drop the chunks still buffered when the engine vanishes,
    # so the engine crashes well after the first chunks (role, tok0...) were relayed.
    args = ["--fake-exit-after-chunks", "3", "--fake-tokens", "10", "--fake-token-delay", "0.1"]
    m = make_model("m", [2048], extra_args=args)
    gw = await start_gateway([m])
    resp = await post(http, gw.url + CHAT, chat_body("m", stream=True))
    assert resp.code == 200, resp.body
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    data = sse_data(resp.body)
    assert "[DONE]" not in data
    chunks = [json.loads(d) for d in data]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[:-1]]
    assert contents, data
    assert contents == [None, "tok0", " tok1", " tok2"][: len(contents)]
    last = chunks[-1]
    assert set(last) == {"error"}
    assert set(last["error"]) == {"message", "type", "code"}
    assert last["error"]["type"] == "server_error"
    assert_no_traceback(resp.body.decode())
    first_pid = events_of(m, "start")[0]["pid"]
    # Still serving: a non-stream request (which the fake does not crash on) restarts the engine.
    again = await post(http, gw.url + CHAT, chat_body("m"))
    assert again.code == 200, again.body
    starts = events_of(m, "start")
    assert len(starts) == 2 and starts[1]["pid"] != first_pid
    assert only_engine(await running(http, gw))["pid"] == starts[1]["pid"]


async def test_request_right_after_a_crash_restarts_the_engine(start_gateway, make_model, http) -> None:
    # The crashed engine's sockets are closed but its process exits only 0.5 s later: a client
    # retrying at once must get a restarted engine, not a "could not count tokens" 502.
    args = ["--fake-exit-after-chunks", "2", "--fake-tokens", "10", "--fake-token-delay", "0.05"]
    m = make_model("m", [2048], extra_args=[*args, "--fake-crash-linger", "0.5"])
    gw = await start_gateway([m])
    resp = await post(http, gw.url + CHAT, chat_body("m", stream=True))
    assert resp.code == 200, resp.body
    assert "error" in json.loads(sse_data(resp.body)[-1])
    again = await post(http, gw.url + CHAT, chat_body("m"))
    assert again.code == 200, again.body
    first, second = events_of(m, "start")
    assert first["pid"] != second["pid"]
    assert [e["stream"] for e in events_of(m, "request")] == [True, False]


async def test_engine_dying_before_answering_is_502(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048], extra_args=["--fake-prompt-delay", "30"])
    gw = await start_gateway([m])
    pending = asyncio.ensure_future(post(http, gw.url + CHAT, chat_body("m")))
    request = await wait_event(m, "request")
    # The request is sent while it is counted: kill the engine once the count is in too, or the
    # gateway sees an engine that died before counting (and restarts it, see test_switch_failures).
    registry = gw.server.services.metrics.registry
    await wait_for(lambda: (registry.get_sample_value("llmgw_tokens_counted_total", {"model": "m"}) or 0) > 0)
    os.kill(events_of(m, "start")[0]["pid"], signal.SIGKILL)
    resp = await asyncio.wait_for(pending, GUARD)
    error = assert_error(resp, 502)
    assert error["type"] == "server_error"
    assert not events_of(m, "done") and request["stream"] is False


async def test_engine_4xx_is_passed_through_unchanged(start_gateway, make_model, http) -> None:
    # One variant whose engine claims 4096 but enforces 1024: the gateway forwards, the engine refuses.
    m = make_model("m", [1024], extra_args=["--fake-reported-n-ctx", "4096"])
    gw = await start_gateway([m])
    resp = await post(http, gw.url + CHAT, chat_body("m", 1500, max_tokens=16))
    assert resp.code == 400, resp.body
    assert resp.headers["Content-Type"].startswith("application/json")
    data = json.loads(resp.body)
    # llama-server's own error, as it sent it (its extra fields included).
    assert data["error"]["type"] == "exceed_context_size_error"
    assert data["error"]["code"] == 400
    assert data["error"]["n_prompt_tokens"] == 1503
    assert data["error"]["n_ctx"] == 1024
    assert len(events_of(m, "request")) == 1  # no retry: there is no bigger variant


# ----------------------------------------------------------------------------- API keys


async def test_api_keys(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048])
    gw = await start_gateway([m], api_keys=["k1", "k2"])
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": "wrong"}, {"Authorization": "k1"}):
        assert_error(await get(http, gw.url + "/v1/models", headers=headers), 401)
        assert_error(await post(http, gw.url + CHAT, chat_body("m"), headers=headers), 401)
        assert_error(await get(http, gw.url + "/running", headers=headers), 401)
    assert m.read_events() == []  # refused requests start nothing
    assert (await get(http, gw.url + "/health")).code == 200
    for headers in ({"Authorization": "Bearer k1"}, {"x-api-key": "k1"}, {"Authorization": "bearer k2"}):
        assert (await get(http, gw.url + "/v1/models", headers=headers)).code == 200
        resp = await post(http, gw.url + CHAT, chat_body("m"), headers=headers)
        assert resp.code == 200, resp.body
    assert len(events_of(m, "done")) == 3


# ----------------------------------------------------------------------------- variant selection


async def test_variant_follows_prompt_size_and_bigger_engine_is_kept(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048, 8192])
    gw = await start_gateway([m])
    answers = []
    # 6 + 1024 (completion reserve) tokens: the small variant.
    answers.append(await post(http, gw.url + CHAT, chat_body("m", 3)))
    info = only_engine(await running(http, gw))
    assert info["context"] == 2048
    # 1503 + 1024 tokens: only the big variant holds it.
    answers.append(await post(http, gw.url + CHAT, chat_body("m", 1500)))
    info = only_engine(await running(http, gw))
    assert info["context"] == 8192
    big_pid = info["pid"]
    # A small prompt again: the big engine serves it, no switch back.
    answers.append(await post(http, gw.url + CHAT, chat_body("m", 3)))
    info = only_engine(await running(http, gw))
    assert info["pid"] == big_pid and info["context"] == 8192
    assert all(a.code == 200 for a in answers), [a.body for a in answers]
    starts = events_of(m, "start")
    assert [e["n_ctx"] for e in starts] == [2048, 8192]
    # Which engine answered each request: the completion id is the fake's request id.
    requests = {e["id"]: e for e in events_of(m, "request")}
    served = [requests[json.loads(a.body)["id"]] for a in answers]
    assert [e["prompt_tokens"] for e in served] == [6, 1503, 6]
    assert [e["t"] > starts[1]["t"] for e in served] == [False, True, True]


async def test_unordered_contexts_pick_smallest_fitting(start_gateway, make_model, http) -> None:
    m = make_model("m", [8192, 2048, 4096])
    gw = await start_gateway([m])
    assert (await post(http, gw.url + CHAT, chat_body("m", 3))).code == 200
    assert only_engine(await running(http, gw))["context"] == 2048
    # 2003 + 1024 tokens: 4096 is the smallest that holds it (not 8192, listed first).
    assert (await post(http, gw.url + CHAT, chat_body("m", 2000))).code == 200
    assert only_engine(await running(http, gw))["context"] == 4096
    assert [e["n_ctx"] for e in events_of(m, "start")] == [2048, 4096]


async def test_engine_context_overflow_retries_on_bigger_variant(start_gateway, make_model, http) -> None:
    # The small variant's engine claims 3000 tokens but holds 1024: the gateway believes 1503 + 16
    # tokens fit, the engine answers exceed_context_size_error, the gateway retries on 4096.
    m = make_model("m", [1024, 4096], variant_extra={1024: {"args": ["--fake-reported-n-ctx", "3000"]}})
    gw = await start_gateway([m])
    resp = await post(http, gw.url + CHAT, chat_body("m", 1500, max_tokens=16))
    assert resp.code == 200, resp.body
    data = json.loads(resp.body)
    assert data["usage"]["prompt_tokens"] == 1503
    assert data["usage"]["completion_tokens"] == 16
    starts = events_of(m, "start")
    assert [e["n_ctx"] for e in starts] == [1024, 4096]
    requests = events_of(m, "request")
    assert len(requests) == 2  # refused by the small engine, then served by the big one
    (done,) = events_of(m, "done")
    assert done["id"] == requests[1]["id"] == data["id"]
    assert only_engine(await running(http, gw))["context"] == 4096


# ----------------------------------------------------------------------------- streaming


async def test_stream_is_relayed_incrementally(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048], extra_args=["--fake-tokens", "20", "--fake-token-delay", "0.1"])
    gw = await start_gateway([m])
    received = bytearray()
    seen_at_first_token: list[list[dict[str, Any]]] = []

    def on_chunk(chunk: bytes) -> None:
        received.extend(chunk)
        if not seen_at_first_token and b'"tok0"' in received:
            seen_at_first_token.append(m.read_events())

    body = json.dumps(chat_body("m", stream=True)).encode()
    resp = await http.fetch(
        gw.url + CHAT, method="POST", body=body, streaming_callback=on_chunk, raise_error=False, request_timeout=60
    )
    assert resp.code == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    # The first token reached the client while the engine was still generating.
    (events,) = seen_at_first_token
    kinds = [e["event"] for e in events]
    assert "request" in kinds and "done" not in kinds
    data = sse_data(bytes(received))
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == " ".join(f"tok{i}" for i in range(20))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(events_of(m, "done")) == 1


# ----------------------------------------------------------------------------- client disconnects


async def _assert_cancelled(m: FakeModel, request: dict[str, Any], http: AsyncHTTPClient, gw: Gateway) -> None:
    cancelled = await wait_event(m, "cancelled", lambda e: e["id"] == request["id"])
    assert cancelled["t"] - request["t"] < 2.0  # hang guard: the engine would have gone on for much longer
    assert not [e for e in events_of(m, "done") if e["id"] == request["id"]]

    async def lease_released() -> bool:
        return (await running(http, gw))["in_flight"] == 0

    await wait_until(lease_released, "the lease of the abandoned request to be released", timeout=GUARD)
    # The gateway goes on serving.
    resp = await post(http, gw.url + CHAT, chat_body("m", max_tokens=2))
    assert resp.code == 200, resp.body


async def test_disconnect_mid_stream_cancels_engine_request(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048], extra_args=["--fake-tokens", "100", "--fake-token-delay", "0.1"])
    gw = await start_gateway([m])
    reader, writer = await raw_request(gw, chat_body("m", stream=True))
    try:
        await asyncio.wait_for(reader.readuntil(b"data:"), GUARD)
        request = events_of(m, "request")[0]
    finally:
        await hang_up(writer)
    await _assert_cancelled(m, request, http, gw)


async def test_disconnect_during_prompt_processing_cancels_engine_request(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048], extra_args=["--fake-prompt-delay", "3"])
    gw = await start_gateway([m])
    _reader, writer = await raw_request(gw, chat_body("m", stream=True))
    try:
        request = await wait_event(m, "request")  # forwarded; the engine is "reading the prompt"
    finally:
        await hang_up(writer)
    await _assert_cancelled(m, request, http, gw)


async def test_disconnect_during_non_stream_request_cancels_engine_request(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048], extra_args=["--fake-tokens", "100", "--fake-token-delay", "0.1"])
    gw = await start_gateway([m])
    _reader, writer = await raw_request(gw, chat_body("m"))
    try:
        request = await wait_event(m, "request")
        await asyncio.sleep(0.3)  # a few tokens into the generation
    finally:
        await hang_up(writer)
    assert request["stream"] is False
    await _assert_cancelled(m, request, http, gw)


# ----------------------------------------------------------------------------- operations


async def test_running_reports_engine(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048])
    gw = await start_gateway([m])
    assert await running(http, gw) == {"engines": [], "queue": [], "in_flight": 0, "queued": 0}
    before = time.time()
    assert (await post(http, gw.url + CHAT, chat_body("m"))).code == 200
    info = await running(http, gw)
    assert info["in_flight"] == 0 and info["queued"] == 0 and info["queue"] == []
    engine = only_engine(info)
    assert engine["model"] == "m"
    assert engine["variant"] == 1
    assert engine["context"] == 2048
    assert engine["pid"] == events_of(m, "start")[0]["pid"]
    assert engine["state"] == "ready"
    assert engine["in_flight"] == 0
    # Measured even without a memory budget (then it only informs): the fake engine's RSS.
    assert engine["memory_source"] == "measured" and 5 < engine["memory_mib"]["total"] < 500
    assert before - 1 <= engine["last_used"] <= time.time() + 1
    assert isinstance(engine["uptime"], (int, float)) and engine["uptime"] >= 0


async def test_load_and_unload(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048, 4096, 8192])
    gw = await start_gateway([m])
    resp = await post(http, gw.url + "/load", {"model": "m", "context": 3000})
    assert resp.code == 200, resp.body
    data = json.loads(resp.body)
    assert data["status"] == "loaded"
    assert data["engine"]["context"] == 4096
    # Straight to the fitting variant: nothing else was started.
    assert [e["n_ctx"] for e in events_of(m, "start")] == [4096]
    assert only_engine(await running(http, gw))["pid"] == events_of(m, "start")[0]["pid"]
    # A request that fits uses the preloaded engine.
    assert (await post(http, gw.url + CHAT, chat_body("m"))).code == 200
    assert len(events_of(m, "start")) == 1

    resp = await post(http, gw.url + "/unload", {})
    assert resp.code == 200, resp.body
    assert json.loads(resp.body)["status"] == "unloaded"
    assert only_engine(await running(http, gw)) is None
    assert len(events_of(m, "exit")) == 1

    assert_error(await post(http, gw.url + "/load", {"model": "m", "context": 100_000}), 400, "context_length_exceeded")
    assert_error(await post(http, gw.url + "/load", {"model": "nope"}), 404, "model_not_found")
    assert_error(await post(http, gw.url + "/load", b"{"), 400)
    assert_error(await post(http, gw.url + "/load", {"model": "m", "context": "big"}), 400)
    assert len(events_of(m, "start")) == 1


async def test_metrics(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048])
    gw = await start_gateway([m])
    assert (await post(http, gw.url + CHAT, chat_body("m"))).code == 200
    assert (await post(http, gw.url + CHAT, chat_body("m"))).code == 200
    assert (await post(http, gw.url + CHAT, chat_body("nope"))).code == 404
    resp = await get(http, gw.url + "/metrics")
    assert resp.code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.body.decode())
        for s in family.samples
    }
    ok = ("llmgw_requests_total", (("model", "m"), ("route", CHAT), ("status", "200")))
    assert samples[ok] == 2
    not_found = [
        value
        for (name, labels), value in samples.items()
        if name == "llmgw_requests_total" and ("route", CHAT) in labels and ("status", "404") in labels
    ]
    assert not_found == [1]
    assert samples[("llmgw_engine_starts_total", (("model", "m"),))] == 1
    assert samples[("llmgw_engines", (("model", "m"), ("state", "ready")))] == 1
    assert samples[("llmgw_in_flight_requests", (("model", "m"),))] == 0
    assert samples[("llmgw_queued_requests", (("model", "m"),))] == 0
