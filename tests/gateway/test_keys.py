"""Keys with scopes, limits and usage, through a gateway of fake engines: who may use what (401,
403, 404 like an unknown model), limits (429 with Retry-After in each dialect), priority in the
queue, usage where an operator looks, and the key itself nowhere."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_watching import EventReader, has

from conftest import assert_error, chat_body, events_of, get, post, sse_data, wait_for
from llmgw.config import ConfigError, ConfigLoader

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


TEAM: dict[str, Any] = {
    "alice": {"key": "alice-key", "models": ["a"]},
    "root": {"key": "root-key", "admin": True},
}


async def test_keys_by_name_and_the_old_list_side_by_side(start_gateway, make_model, http) -> None:
    a = make_model("a", [2048])
    gw = await start_gateway([a], keys=TEAM, api_keys=["old-key"])
    for headers in ({}, bearer("wrong"), {"x-api-key": "alice-key "[:-2]}, {"Authorization": "alice-key"}):
        assert_error(await post(http, gw.url + CHAT, chat_body("a"), headers=headers), 401, "invalid_api_key")
        assert_error(await get(http, gw.url + "/v1/models", headers=headers), 401)
    assert a.read_events() == []  # refused requests start nothing
    for headers in (bearer("alice-key"), {"x-api-key": "root-key"}, bearer("old-key")):
        resp = await post(http, gw.url + CHAT, chat_body("a", max_tokens=2), headers=headers)
        assert resp.code == 200, resp.body
    assert len(events_of(a, "done")) == 3
    assert (await get(http, gw.url + "/health")).code == 200


# ----------------------------------------------------------------------------- allow-lists


async def test_a_model_outside_the_keys_list_is_an_unknown_model(start_gateway, make_model, http) -> None:
    a, b = make_model("a", [2048], model_extra={"aliases": ["a-alias"]}), make_model("b", [2048])
    gw = await start_gateway([a, b], keys=TEAM)
    alice, root = bearer("alice-key"), bearer("root-key")

    hidden = assert_error(await post(http, gw.url + CHAT, chat_body("b"), headers=alice), 404, "model_not_found")
    unknown = assert_error(await post(http, gw.url + CHAT, chat_body("zz"), headers=alice), 404, "model_not_found")
    assert hidden["message"] == unknown["message"].replace("'zz'", "'b'")  # the same answer: nothing to probe
    assert "'b'" in hidden["message"] and ", b" not in hidden["message"] and "available: a" in hidden["message"]
    resp = await post(http, gw.url + MESSAGES, {"model": "b", "max_tokens": 2, "messages": []}, headers=alice)
    assert resp.code == 404 and json.loads(resp.body)["error"]["type"] == "not_found_error"
    assert b.read_events() == []  # no engine started for it
    resp = await post(http, gw.url + CHAT, chat_body("a-alias", max_tokens=2), headers=alice)
    assert resp.code == 200, resp.body  # an alias of an allowed model is allowed

    listed = json.loads((await get(http, gw.url + "/v1/models", headers=alice)).body)
    assert [m["id"] for m in listed["data"]] == ["a", "a-alias"]
    listed = json.loads((await get(http, gw.url + "/models", headers=alice)).body)
    assert [m["id"] for m in listed["data"]] == ["a", "a-alias"]
    one = await get(http, gw.url + "/v1/models/b", headers=alice)
    nothing = await get(http, gw.url + "/v1/models/zz", headers=alice)
    assert (one.code, nothing.code) == (404, 404)
    assert json.loads(one.body)["error"]["message"] == json.loads(nothing.body)["error"]["message"].replace("zz", "b")
    assert (await get(http, gw.url + "/v1/models/a-alias", headers=alice)).code == 200

    listed = json.loads((await get(http, gw.url + "/v1/models", headers=root)).body)
    assert [m["id"] for m in listed["data"]] == ["a", "a-alias", "b"]  # a key without a list sees every model
    assert (await post(http, gw.url + CHAT, chat_body("b", max_tokens=2), headers=root)).code == 200


# ----------------------------------------------------------------------------- admin

OPERATIONS = ["/running", "/metrics", "/events", "/api/requests", "/api/logs", "/slots"]


async def test_operations_need_an_admin_key(start_gateway, make_model, http) -> None:
    a = make_model("a", [2048])
    gw = await start_gateway([a], keys=TEAM, api_keys=["old-key"])
    alice = bearer("alice-key")
    for path in OPERATIONS:
        error = assert_error(await get(http, gw.url + path, headers=alice), 403, "permission_denied")
        assert "'alice'" in error["message"] and "admin" in error["message"]
    for path in ("/load", "/unload"):
        assert_error(await post(http, gw.url + path, {"model": "a"}, headers=alice), 403, "permission_denied")
    assert a.read_events() == []  # /load refused: nothing started
    assert (await get(http, gw.url + "/props?model=a", headers=alice)).code == 503  # a model route: not running
    assert (await get(http, gw.url + "/nope", headers=alice)).code == 404
    for admin in (bearer("root-key"), bearer("old-key")):
        assert (await post(http, gw.url + "/load", {"model": "a"}, headers=admin)).code == 200
        for path in OPERATIONS:
            if path != "/events":  # a stream: its start is enough
                resp = await get(http, gw.url + path + ("?model=a" if path == "/slots" else ""), headers=admin)
                assert resp.code == 200, (path, resp.body)
        assert (await post(http, gw.url + "/unload", {}, headers=admin)).code == 200
    watcher = await EventReader.open(gw, key="root-key")
    try:
        await watcher.until(has("hello"), "hello for an admin key")
    finally:
        await watcher.close()


# ----------------------------------------------------------------------------- limits


class Stream:
    """A streamed chat request on a raw connection, read as far as the test wants."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.data = b""

    @classmethod
    async def open(cls, gw: Any, key: str, body: dict[str, Any]) -> Stream:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        payload = json.dumps({**body, "stream": True}).encode()
        head = (
            f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        await writer.drain()
        return cls(reader, writer)

    async def until(self, mark: bytes) -> None:
        async with asyncio.timeout(20):  # a hang guard
            while mark not in self.data:
                chunk = await self.reader.read(65536)
                assert chunk, self.data[-300:]
                self.data += chunk

    def close(self) -> None:
        self.writer.close()


def retry_after(resp: Any) -> int:
    value = int(resp.headers["Retry-After"])
    assert value >= 1
    return value


async def test_requests_per_minute_answers_429_with_retry_after_in_each_dialect(
    start_gateway, make_model, http
) -> None:
    a = make_model("a", [2048])
    gw = await start_gateway([a], keys={"ci": {"key": "ci-key", "requests_per_minute": 2}, **TEAM})
    ci = bearer("ci-key")
    for _ in range(2):
        assert (await post(http, gw.url + CHAT, chat_body("a", max_tokens=2), headers=ci)).code == 200
    resp = await post(http, gw.url + CHAT, chat_body("a", max_tokens=2), headers=ci)
    error = assert_error(resp, 429, "rate_limit_exceeded")
    assert error["type"] == "requests" and "requests_per_minute" in error["message"] and "'ci'" in error["message"]
    assert 1 <= retry_after(resp) <= 60
    resp = await post(http, gw.url + MESSAGES, {"model": "a", "max_tokens": 2, "messages": [{"role": "user",
                      "content": "hi"}]}, headers=ci)  # fmt: skip
    body = json.loads(resp.body)
    assert resp.code == 429 and body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert 1 <= retry_after(resp) <= 60
    assert len(events_of(a, "request")) == 2  # refused requests never reach the engine
    # Other keys, and the key's other routes, are not limited by it.
    assert (await post(http, gw.url + CHAT, chat_body("a", max_tokens=2), headers=bearer("alice-key"))).code == 200
    assert (await get(http, gw.url + "/v1/models", headers=ci)).code == 200


async def test_max_concurrent_counts_requests_in_flight_and_a_client_leaving_frees_its_place(
    start_gateway, make_model, http
) -> None:
    a = make_model("a", [2048], extra_args=["--fake-stall-after-chunks", "1", "-np", "2"])  # streams stall
    gw = await start_gateway([a], keys={"bob": {"key": "bob-key", "max_concurrent": 1}})
    keys = gw.server.services.keys
    stream = await Stream.open(gw, "bob-key", chat_body("a", max_tokens=5))
    try:
        await stream.until(b"tok0")
        resp = await post(http, gw.url + CHAT, chat_body("a", max_tokens=2), headers=bearer("bob-key"))
        error = assert_error(resp, 429, "rate_limit_exceeded")
        assert "max_concurrent" in error["message"] and retry_after(resp) == 1
    finally:
        stream.close()
    await wait_for(lambda: keys.limiter.in_flight("bob") == 0, what="the stream's place given back")
    resp = await post(http, gw.url + CHAT, chat_body("a", max_tokens=2), headers=bearer("bob-key"))
    assert resp.code == 200, resp.body


async def test_tokens_per_day_never_cuts_a_running_request_and_survives_a_restart(
    start_gateway, make_model, http
) -> None:
    a = make_model("a", [2048], extra_args=["--fake-stall-after-chunks", "2", "--fake-stall-seconds", "1.5",
                                            "-np", "2"])  # fmt: skip
    team = {"dan": {"key": "dan-key", "tokens_per_day": 1}, **TEAM}
    gw = await start_gateway([a], keys=team)
    keys, dan = gw.server.services.keys, bearer("dan-key")
    long = await Stream.open(gw, "dan-key", chat_body("a", 3, max_tokens=6, stream_options={"include_usage": True}))
    try:
        await long.until(b"tok1")  # admitted and running
        first = await post(http, gw.url + CHAT, chat_body("a", max_tokens=2), headers=dan)  # admitted: 0 used
        assert first.code == 200, first.body
        usage = json.loads(first.body)["usage"]
        assert keys.usage.of("dan").tokens_today == usage["prompt_tokens"] + usage["completion_tokens"]
        resp = await post(http, gw.url + CHAT, chat_body("a", max_tokens=2), headers=dan)
        error = assert_error(resp, 429, "rate_limit_exceeded")
        assert error["type"] == "tokens" and "tokens_per_day" in error["message"]
        now = time.time()
        assert abs(retry_after(resp) - (86400 - now % 86400)) <= 5  # until 00:00 UTC
        await long.until(b"data: [DONE]")  # the request already running went to its end
    finally:
        long.close()
    chunks = [json.loads(c) for c in sse_data(long.data.split(b"\r\n\r\n", 1)[1]) if c.startswith("{")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.split() == [f"tok{i}" for i in range(6)]  # every token it asked for
    streamed = next(c["usage"] for c in chunks if c.get("usage"))
    await wait_for(lambda: keys.limiter.in_flight("dan") == 0, what="the stream's end")
    total = usage["prompt_tokens"] + usage["completion_tokens"]
    assert keys.usage.of("dan").tokens_today == total + streamed["prompt_tokens"] + streamed["completion_tokens"]
    used = keys.usage.of("dan").tokens_today

    await gw.server.stop(grace=1.0)  # today's tokens go to the state file
    again = await start_gateway([a], keys=team)
    assert again.server.services.keys.usage.tokens_today("dan", keys.usage.day) == used
    resp = await post(http, again.url + CHAT, chat_body("a", max_tokens=2), headers=dan)
    assert_error(resp, 429, "rate_limit_exceeded")
    assert (await post(http, again.url + CHAT, chat_body("a", max_tokens=2), headers=bearer("alice-key"))).code == 200


async def test_key_files_are_read_again_on_reload(start_gateway, make_model, http, tmp_path) -> None:
    a = make_model("a", [2048])
    key_file = tmp_path / "eve.key"
    key_file.write_text("eve-first\n")
    gw = await start_gateway([a], keys={"eve": {"key_file": str(key_file)}})
    assert (await post(http, gw.url + CHAT, chat_body("a", max_tokens=2), headers=bearer("eve-first"))).code == 200
    key_file.write_text("eve-second\n")
    await gw.server.reload(ConfigLoader(gw.config.path).load())  # what SIGHUP does
    assert_error(await post(http, gw.url + CHAT, chat_body("a"), headers=bearer("eve-first")), 401)
    assert (await post(http, gw.url + CHAT, chat_body("a", max_tokens=2), headers=bearer("eve-second"))).code == 200
    key_file.unlink()
    with pytest.raises(ConfigError, match=f'server.keys.eve.key_file cannot be read: "{key_file}"'):
        ConfigLoader(gw.config.path).load()  # a reload that fails keeps the keys in force


# ----------------------------------------------------------------------------- priority


async def test_interactive_keys_go_before_batch_keys_waiting_for_an_engine(start_gateway, make_model, http) -> None:
    a = make_model("a", [2048], extra_args=["--fake-stall-after-chunks", "1"])  # holds the only engine place
    b, c = make_model("b", [2048]), make_model("c", [2048])
    keys = {"batch": {"key": "batch-key", "priority": "batch"}, **TEAM}
    gw = await start_gateway([a, b, c], keys=keys, max_engines=1)
    manager = gw.server.services.manager
    holder = await Stream.open(gw, "root-key", chat_body("a", max_tokens=5))
    done: list[str] = []

    async def ask(model: str, key: str) -> None:
        resp = await post(http, gw.url + CHAT, chat_body(model, max_tokens=2), headers=bearer(key))
        assert resp.code == 200, resp.body
        done.append(model)

    try:
        await holder.until(b"tok0")
        batch = asyncio.ensure_future(ask("b", "batch-key"))
        await wait_for(lambda: manager.queued == 1, what="the batch request queued")
        interactive = asyncio.ensure_future(ask("c", "root-key"))  # arrives later
        await wait_for(lambda: manager.queued == 2, what="the interactive request queued")
        queue = json.loads((await get(http, gw.url + "/running", headers=bearer("root-key"))).body)["queue"]
        assert [(t["model"], t["priority"]) for t in queue] == [("c", "interactive"), ("b", "batch")]
    finally:
        holder.close()  # a's request ends: the engine place goes to the interactive request first
    await asyncio.wait_for(asyncio.gather(batch, interactive), 30)
    assert done == ["c", "b"]
    assert events_of(c, "start")[0]["t"] < events_of(b, "start")[0]["t"]


# ----------------------------------------------------------------------------- usage, and the key nowhere


async def test_usage_per_key_in_metrics_and_the_request_history(start_gateway, make_model, http) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    keys = {"ci": {"key": "ci-key", "requests_per_minute": 2, "priority": "batch"}, **TEAM}
    gw = await start_gateway([a, b], keys=keys, api_keys=["old-key"])
    answers = []
    for key in ("alice-key", "alice-key", "ci-key", "ci-key", "ci-key", "old-key"):
        answers.append(await post(http, gw.url + CHAT, chat_body("a", max_tokens=3), headers=bearer(key)))
    assert [r.code for r in answers] == [200, 200, 200, 200, 429, 200]
    usage = [json.loads(r.body)["usage"] for r in answers if r.code == 200]
    assert (await post(http, gw.url + CHAT, chat_body("b"), headers=bearer("alice-key"))).code == 404
    root = bearer("root-key")

    text = (await get(http, gw.url + "/metrics", headers=root)).body.decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip
    assert samples[("llmgw_key_requests_total", (("key", "alice"),))] == 2
    assert samples[("llmgw_key_requests_total", (("key", "ci"),))] == 2
    assert samples[("llmgw_key_requests_total", (("key", "api_keys[1]"),))] == 1
    assert samples[("llmgw_key_requests_total", (("key", "root"),))] == 0
    assert samples[("llmgw_key_prompt_tokens_total", (("key", "alice"),))] == sum(u["prompt_tokens"] for u in usage[:2])
    assert samples[("llmgw_key_generated_tokens_total", (("key", "alice"),))] == 6
    assert samples[("llmgw_key_rate_limited_total", (("key", "ci"), ("limit", "requests_per_minute")))] == 1
    assert samples[("llmgw_key_rate_limited_total", (("key", "alice"), ("limit", "requests_per_minute")))] == 0
    assert samples[("llmgw_key_tokens_today", (("key", "ci"),))] == sum(
        u["prompt_tokens"] + u["completion_tokens"] for u in usage[2:4]
    )

    history = json.loads((await get(http, gw.url + "/api/requests", headers=root)).body)
    assert [(r["key"], r["status"]) for r in history["requests"]][:3] == [("alice", 404), ("api_keys[1]", 200),
                                                                          ("ci", 429)]  # fmt: skip
    rows = {row["key"]: row for row in history["keys"]}
    assert set(rows) == {"alice", "ci", "root", "api_keys[1]"}
    assert rows["ci"]["requests"] == 2 and rows["ci"]["rate_limited"] == 1 and rows["ci"]["priority"] == "batch"
    assert rows["alice"]["models"] == ["a"] and rows["alice"]["generated_tokens"] == 6
    assert rows["ci"]["requests_per_minute"] == 2 and rows["root"]["admin"] is True


async def test_the_key_itself_appears_nowhere(start_gateway, make_model, http, caplog, tmp_path) -> None:
    secrets = {"alice": "alice-SECRET-1", "ci": "ci-SECRET-2", "root": "root-SECRET-3"}
    key_file = tmp_path / "ci.key"
    key_file.write_text(secrets["ci"] + "\n")
    keys = {
        "alice": {"key": secrets["alice"], "models": ["a"], "max_concurrent": 1, "tokens_per_day": 50},
        "ci": {"key_file": str(key_file), "requests_per_minute": 1},
        "root": {"key": secrets["root"], "admin": True},
    }
    a, b = make_model("a", [2048]), make_model("b", [2048])
    caplog.set_level(logging.DEBUG)
    gw = await start_gateway([a, b], keys=keys, api_keys=["old-SECRET-4"])
    watcher = await EventReader.open(gw, "?logs=1", key=secrets["root"])
    seen: list[bytes] = []
    try:
        await watcher.until(has("hello"), "hello")
        for key in [*secrets.values(), "old-SECRET-4", "wrong-SECRET-5"]:
            for model in ("a", "b"):
                for _ in range(2):
                    for path, body in ((CHAT, chat_body(model, max_tokens=40)),
                                       (MESSAGES, {"model": model, "max_tokens": 40, "messages": [
                                           {"role": "user", "content": "hi"}]})):  # fmt: skip
                        resp = await post(http, gw.url + path, body, headers=bearer(key))
                        seen.append(resp.body + str(resp.headers).encode())
            for path in ("/v1/models", "/running", "/metrics", "/api/requests", "/api/logs?model=a", "/slots"):
                resp = await get(http, gw.url + path, headers={"x-api-key": key})
                seen.append(resp.body + str(resp.headers).encode())
        await watcher.until(lambda events: sum(1 for kind, _ in events if kind == "request_end") >= 40, "ends")
        for path in ("/metrics", "/api/requests", "/running", "/ui/", "/ui/app.js"):
            seen.append((await get(http, gw.url + path, headers=bearer(secrets["root"]))).body)
        seen.append(json.dumps(watcher.events).encode())
    finally:
        await watcher.close()
    await gw.server.stop(grace=1.0)
    seen.append((tmp_path / "state" / "state.json").read_bytes())
    seen.append("\n".join(r.getMessage() for r in caplog.records).encode())
    seen.append(repr(gw.config).encode())
    everything = b"\n".join(seen)
    assert b"alice" in everything and b"tokens_per_day" in everything  # names and limits do show
    for secret in [*secrets.values(), "old-SECRET-4", "wrong-SECRET-5"]:  # a wrong key is not echoed either
        assert secret.encode() not in everything, secret
