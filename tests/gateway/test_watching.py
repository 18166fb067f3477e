"""Watching the gateway end to end: /v1/models status, GET /events, the request history, engine
output, token metrics, and the web page's files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from conftest import Gateway, assert_error, chat_body, get, post

CHAT = "/v1/chat/completions"
GUARD = 15.0  # hang guard; never a performance claim


class EventReader:
    """``GET /events`` on a raw socket (HTTP/1.0: no chunked framing), parsed as it arrives."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = b""
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.comments = 0
        self.head = b""

    @classmethod
    async def open(cls, gw: Gateway, query: str = "", key: str | None = None) -> EventReader:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        writer.write(f"GET /events{query} HTTP/1.0\r\n{auth}\r\n".encode())
        await writer.drain()
        return cls(reader, writer)

    def _parse(self) -> None:
        if not self.head:
            if b"\r\n\r\n" not in self.buffer:
                return
            self.head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            kind, data = "message", None
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    self.comments += 1
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
            if data is not None:
                self.events.append((kind, data))

    async def until(self, condition: Callable[[list[tuple[str, dict[str, Any]]]], bool], what: str) -> None:
        deadline = time.monotonic() + GUARD
        while not condition(self.events):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}: {self.events}")
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                continue
            if not chunk:
                raise AssertionError(f"event stream ended before {what}: {self.events}")
            self.buffer += chunk
            self._parse()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in self.events if k == kind]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def has(kind: str, **fields: Any) -> Callable[[list[tuple[str, dict[str, Any]]]], bool]:
    return lambda events: any(k == kind and all(d.get(f) == v for f, v in fields.items()) for k, d in events)


async def models(http: Any, gw: Gateway) -> dict[str, dict[str, Any]]:
    resp = await get(http, gw.url + "/v1/models")
    assert resp.code == 200
    return {entry["id"]: entry for entry in json.loads(resp.body)["data"]}


async def test_models_carry_the_routers_status(start_gateway, make_model, http) -> None:
    m = make_model("m", [1024, 4096], extra_args=["--fake-load-delay", "1"], model_extra={"aliases": ["gpt-x"]})
    gw = await start_gateway([m])
    listed = await models(http, gw)
    assert listed["m"]["status"] == {"value": "unloaded"} and listed["gpt-x"]["status"] == {"value": "unloaded"}
    assert listed["m"]["context_length"] == 4096 and listed["m"]["meta"]["variants"] == [1024, 4096]
    request = asyncio.ensure_future(post(http, gw.url + CHAT, chat_body("m", max_tokens=16)))
    loading: dict[str, Any] = {}
    for _ in range(500):  # bounded: until the engine is seen loading
        loading = (await models(http, gw))["m"]["status"]
        if loading["value"] == "loading" or request.done():
            break
        await asyncio.sleep(0.01)
    assert loading["value"] == "loading", loading
    assert loading["variant"] == 1 and "elapsed" in loading["progress"]
    assert (await request).code == 200
    status = (await models(http, gw))["gpt-x"]["status"]
    assert (status["value"], status["n_ctx"], status["variant"]) == ("loaded", 1024, 1)
    assert status["args"][1].endswith("fake_llama_server.py") and "1024" in status["args"]
    one = json.loads((await get(http, gw.url + "/v1/models/m")).body)
    assert one["status"]["value"] == "loaded"
    assert (await post(http, gw.url + "/unload", {})).code == 200
    assert (await models(http, gw))["m"]["status"] == {"value": "unloaded"}


async def test_events_stream_engines_requests_queue_and_logs(start_gateway, make_model, http) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=["--fake-tokens", "4"])])
    watcher = await EventReader.open(gw, "?logs=1")
    quiet = await EventReader.open(gw)
    try:
        await watcher.until(has("hello"), "the hello event")
        assert b"text/event-stream" in watcher.head
        assert watcher.of("hello")[0]["running"]["engines"] == []
        resp = await post(http, gw.url + CHAT, chat_body("m", 3, stream=True), headers={"X-Request-Id": "req-42"})
        assert resp.code == 200
        await watcher.until(has("request_end", id="req-42"), "the request's end")
        await watcher.until(has("log", model="m"), "engine output")
        states = [e["state"] for e in watcher.of("engine")]
        assert states[0] == "starting" and "loading" in states and states[-1] == "ready"
        assert watcher.of("queue")  # it waited for the start
        start = next(e for e in watcher.of("request_start") if e["id"] == "req-42")
        assert (start["model"], start["route"], start["stream"]) == ("m", CHAT, True)
        end = next(e for e in watcher.of("request_end") if e["id"] == "req-42")
        assert (end["status"], end["prompt_tokens"], end["generated_tokens"]) == (200, 6, 4)
        assert end["duration"] >= 0 and "decode_tps" in end and "prefill_tps" in end
        assert all(isinstance(line["line"], str) and line["variant"] == 1 for line in watcher.of("log"))
        await quiet.until(has("request_end", id="req-42"), "the request's end (no logs)")
        assert quiet.of("log") == []
    finally:
        await watcher.close()
        await quiet.close()
    for _ in range(200):  # bounded: the handler notices the closed sockets
        if not gw.server.services.bus.watched:
            break
        await asyncio.sleep(0.02)
    assert not gw.server.services.bus.watched


async def test_events_for_some_models_logs_and_unknown_ones(start_gateway, make_model, http) -> None:
    gw = await start_gateway([make_model("a", [2048]), make_model("b", [2048])], max_engines=2)
    resp = await get(http, gw.url + "/events?logs=nope")
    assert_error(resp, 404, "model_not_found")
    watcher = await EventReader.open(gw, "?logs=b")
    try:
        await watcher.until(has("hello"), "hello")
        assert watcher.of("hello")[0]["logs"] == ["b"]
        for name in ("a", "b"):
            assert (await post(http, gw.url + CHAT, chat_body(name))).code == 200
        await watcher.until(has("log", model="b"), "b's output")
        assert {line["model"] for line in watcher.of("log")} == {"b"}
    finally:
        await watcher.close()


async def test_request_history_and_engine_output(start_gateway, make_model, http) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=["--fake-tokens", "5"])])
    for i in range(3):
        body = chat_body("m", 2) if i != 1 else {"model": "m", "prompt": "a b c", "max_tokens": 2}
        path = CHAT if i != 1 else "/v1/completions"
        assert (await post(http, gw.url + path, body, headers={"X-Request-Id": f"h{i}"})).code == 200
    assert (await post(http, gw.url + CHAT, {"model": "nope", "messages": []})).code == 404
    history = json.loads((await get(http, gw.url + "/api/requests")).body)
    assert history["in_flight"] == []
    records = history["requests"]
    assert [(r["id"], r["route"], r["status"]) for r in records[1:]] == [
        ("h2", CHAT, 200),
        ("h1", "/v1/completions", 200),
        ("h0", CHAT, 200),
    ]
    assert (records[0]["status"], records[0]["model"]) == (404, "")
    assert (records[1]["prompt_tokens"], records[1]["generated_tokens"]) == (5, 5)
    assert (records[2]["prompt_tokens"], records[2]["generated_tokens"]) == (4, 2)
    limited = json.loads((await get(http, gw.url + "/api/requests?limit=1")).body)["requests"]
    assert [r["status"] for r in limited] == [404]
    assert_error(await get(http, gw.url + "/api/requests?limit=x"), 400)
    logs = json.loads((await get(http, gw.url + "/api/logs?model=m")).body)
    assert logs["model"] == "m" and any("log_server_r" in line["line"] for line in logs["lines"])
    assert json.loads((await get(http, gw.url + "/api/logs")).body) == {"models": ["m"]}
    assert_error(await get(http, gw.url + "/api/logs?model=zzz"), 404, "model_not_found")


async def test_token_metrics_per_model(start_gateway, make_model, http) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=["--fake-tokens", "5", "--fake-token-delay", "0.01"])])
    for _ in range(2):
        assert (await post(http, gw.url + CHAT, chat_body("m", 3, max_tokens=5))).code == 200
    text = (await get(http, gw.url + "/metrics")).body.decode()
    samples = {
        (s.name, s.labels.get("model")): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }
    assert samples[("llmgw_prompt_tokens_total", "m")] == 12
    assert samples[("llmgw_generated_tokens_total", "m")] == 10
    assert samples[("llmgw_decode_tokens_per_second_count", "m")] == 2
    assert samples[("llmgw_prefill_tokens_per_second_count", "m")] == 2


async def test_watching_needs_the_api_key_but_the_page_does_not(start_gateway, make_model, http) -> None:
    gw = await start_gateway([make_model("m", [2048])], api_keys=["sekrit"])
    for path in ("/events", "/api/requests", "/api/logs", "/running"):
        assert_error(await get(http, gw.url + path), 401)
    page = await get(http, gw.url + "/ui/")
    assert page.code == 200 and b"<title>llmgw</title>" in page.body
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert (await get(http, gw.url + "/ui", follow_redirects=False)).code == 301
    for name in ("app.js", "style.css"):
        assert (await get(http, gw.url + "/ui/" + name)).code == 200
    assert (await get(http, gw.url + "/ui/../state.py")).code in (403, 404)
    watcher = await EventReader.open(gw, key="sekrit")
    try:
        await watcher.until(has("hello"), "hello with the key")
    finally:
        await watcher.close()


async def test_events_of_some_kinds_only(start_gateway, make_model, http) -> None:
    """``?only=engine,queue`` (what a peer follows): engine changes, not every request's start and end."""
    gw = await start_gateway([make_model("m", [4096])])
    only = await EventReader.open(gw, "?only=engine,queue")
    every = await EventReader.open(gw)
    try:
        await only.until(has("hello"), "hello")
        await every.until(has("hello"), "hello")
        assert (await post(http, gw.url + CHAT, chat_body("m"))).code == 200
        await every.until(has("request_end"), "the request's end")
        await only.until(has("engine", state="ready"), "the engine ready")
        assert (await post(http, gw.url + CHAT, chat_body("m"))).code == 200
        await every.until(lambda events: len([k for k, _ in events if k == "request_end"]) == 2, "two ends")
        assert {kind for kind, _ in only.events} <= {"hello", "engine", "queue"}
    finally:
        await only.close()
        await every.close()
