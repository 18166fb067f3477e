"""Gateways in a pool, in one process on loopback: routing to where a model is warm, failover only
before the first byte, the hop and served-by headers, breakers, keys never shown."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fake_peer import FakePeer
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPResponse

from conftest import Gateway, assert_error, chat_body, get, post, sse_data, wait_for, write_config
from fake_engine.configs import free_port
from llmgw import ps
from llmgw.config import ConfigLoader

CHAT = "/v1/chat/completions"
GUARD = 10.0  # hang guard of polls, not a timing claim
FAST = {  # checks often, trips and recovers fast: tests wait for states, never sleep for them
    "peer_check_interval": 0.2,
    "peer_trip_after": 2,
    "peer_recover_after": 1,
    "peer_min_dwell": 0.3,
}
SERVED_BY = "X-Llmgw-Served-By"

StartGateway = Callable[..., Awaitable[Gateway]]


def peers(**urls: str | dict[str, Any]) -> dict[str, Any]:
    table = {name: ({"url": value} if isinstance(value, str) else value) for name, value in urls.items()}
    return {"peers": table, **FAST}


async def knows(gw: Gateway, peer: str, model: str, loaded: bool | None = None) -> None:
    """Wait until ``gw`` has read ``peer``'s state and it lists ``model`` (loaded, if asked)."""
    pool = gw.server.services.pool

    def seen() -> bool:
        link = pool.links.get(peer)
        state = link.routes(model) if link is not None else None
        return state is not None and (loaded is None or state.loaded == loaded) and link.breaker.allows

    await wait_for(seen, GUARD, f"{peer} listing {model}")


def served_by(resp: HTTPResponse) -> str:
    return str(resp.headers.get(SERVED_BY))


@pytest.fixture
def start_node(start_gateway: StartGateway, tmp_path: Path) -> StartGateway:
    """``start_gateway`` for one node of a pool: its own state directory, named after the node."""

    async def start(models: list[Any], node_name: str, **server: Any) -> Gateway:
        server.setdefault("state_dir", str(tmp_path / f"state-{node_name}"))
        return await start_gateway(models, node_name=node_name, **server)

    return start


@pytest.fixture
def fake_peers(io_loop: Any) -> Any:
    started: list[FakePeer] = []

    def make(name: str, **kwargs: Any) -> FakePeer:
        peer = FakePeer(name, **kwargs)
        peer.start()
        started.append(peer)
        return peer

    yield make
    for peer in started:
        io_loop.run_sync(peer.stop, timeout=10)


# ----------------------------------------------------------------------------- two gateways


async def test_a_model_only_a_peer_has_is_served_by_it(start_node: StartGateway, make_model, http) -> None:
    m = make_model("m", [4096])
    b = await start_node([m], node_name="b")
    a = await start_node([], node_name="a", **peers(b=b.url))
    await knows(a, "b", "m")
    models = json.loads((await get(http, a.url + "/v1/models")).body)["data"]
    assert [(e["id"], e["served_by"]) for e in models] == [("m", ["b"])]
    assert models[0]["context_length"] == 4096
    resp = await post(http, a.url + CHAT, chat_body("m"))
    assert resp.code == 200, resp.body
    assert served_by(resp) == "b"
    assert json.loads(resp.body)["model"] == "m"
    streamed = await post(http, a.url + CHAT, chat_body("m", stream=True))
    assert streamed.code == 200 and served_by(streamed) == "b"
    assert sse_data(streamed.body)[-1] == "[DONE]"
    # What B saw: forwarded once, with A's name in the hop header and the client's request id.
    resp = await post(http, a.url + CHAT, chat_body("m"), headers={"X-Request-Id": "req-42"})
    assert resp.headers["X-Request-Id"] == "req-42"
    requests = b.server.services.activity.recent(None)
    assert requests[0]["id"] == "req-42"
    # B's own answers name B; A's own answers (its errors, its lists) name A.
    assert served_by(await get(http, b.url + "/v1/models")) == "b"
    unknown = await post(http, a.url + CHAT, chat_body("nope"))
    assert_error(unknown, 404, "model_not_found")
    assert served_by(unknown) == "a"
    assert "available: m" in json.loads(unknown.body)["error"]["message"]


async def test_warm_first(start_node: StartGateway, make_model, http) -> None:
    """Both serve m: a request to A goes to B while only B has it loaded; once A has it loaded too,
    A serves it itself."""
    mb, ma = make_model("m", [4096]), make_model("m", [4096])
    port_a, port_b = free_port(), free_port()
    b = await start_node([mb], port=port_b, node_name="b", **peers(a=f"http://127.0.0.1:{port_a}"))
    a = await start_node([ma], port=port_a, node_name="a", **peers(b=b.url))
    assert (await post(http, b.url + "/load", {"model": "m"})).code == 200
    await knows(a, "b", "m", loaded=True)
    for words in (1, 2, 3):  # three conversations
        resp = await post(http, a.url + CHAT, chat_body("m", words))
        assert resp.code == 200 and served_by(resp) == "b", resp.body
    assert not a.server.services.manager.engines  # nothing started on A
    assert (await post(http, a.url + "/load", {"model": "m"})).code == 200
    resp = await post(http, a.url + CHAT, chat_body("m", 4))
    assert served_by(resp) == "a"
    # A conversation stays where its KV cache is while that node is warm and not swamped.
    turn = chat_body("m", 2)
    turn["messages"] += [{"role": "assistant", "content": "tok0"}, {"role": "user", "content": "more"}]
    assert served_by(await post(http, a.url + CHAT, turn)) == "b"
    # B lists A too: a request to B for m stays on B, where it is warm.
    resp = await post(http, b.url + CHAT, chat_body("m", 5))
    assert served_by(resp) == "b"
    models = json.loads((await get(http, a.url + "/v1/models")).body)["data"]
    assert [(e["id"], e["served_by"]) for e in models] == [("m", ["a", "b"])]


async def test_a_cold_model_starts_locally_before_a_peer_starts_it(start_node: StartGateway, make_model, http) -> None:
    b = await start_node([make_model("m", [4096])], node_name="b")
    a = await start_node([make_model("m", [4096])], node_name="a", **peers(b=b.url))
    await knows(a, "b", "m", loaded=False)
    resp = await post(http, a.url + CHAT, chat_body("m"))
    assert served_by(resp) == "a"
    assert not b.server.services.manager.engines


# ----------------------------------------------------------------------------- hop, keys


async def test_a_forwarded_request_is_never_forwarded_again(
    start_node: StartGateway, make_model, fake_peers, http
) -> None:
    b = fake_peers("b")
    a = await start_node([], node_name="a", **peers(b=b.url))
    await knows(a, "b", "m")
    resp = await post(http, a.url + CHAT, chat_body("m"))
    assert resp.code == 200 and served_by(resp) == "b"
    assert [seen.headers.get("X-Llmgw-Hop") for seen in b.requests()] == ["a"]
    # A request that a peer forwarded here is served here or nowhere.
    resp = await post(http, a.url + CHAT, chat_body("m"), headers={"X-Llmgw-Hop": "c"})
    assert_error(resp, 404, "model_not_found")
    assert len(b.requests()) == 1


async def test_keys_go_where_they_belong_and_are_never_shown(
    start_node: StartGateway, make_model, fake_peers, http, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    b = fake_peers("b", key="peer-secret-key")
    a = await start_node(
        [], node_name="a", api_keys=["client-key"], **peers(b={"url": b.url, "api_key": "peer-secret-key"})
    )
    await knows(a, "b", "m")
    auth = {"Authorization": "Bearer client-key"}
    resp = await post(http, a.url + CHAT, chat_body("m"), headers=auth)
    assert resp.code == 200 and served_by(resp) == "b"
    forwarded = b.requests()[0]
    assert forwarded.headers["Authorization"] == "Bearer peer-secret-key"  # the peer's key, not the client's
    assert "client-key" not in json.dumps(forwarded.headers)
    shown = [
        (await get(http, a.url + path, headers=auth)).body.decode()
        for path in ("/running", "/api/state", "/metrics", "/v1/models", "/api/requests")
    ]
    shown.append(a.config.summary())
    for text in [*shown, caplog.text]:
        assert "peer-secret-key" not in text
    # A wrong key at the peer: nothing is routed there, and the gateway says why.
    link = a.server.services.pool.links["b"]
    link.config = dataclasses.replace(link.config, api_key="wrong-key")
    await wait_for(lambda: a.server.services.pool.links["b"].refused, GUARD, "the key refused")
    assert "refused this gateway's api_key" in caplog.text and "wrong-key" not in caplog.text
    resp = await post(http, a.url + CHAT, chat_body("m"), headers=auth)
    assert_error(resp, 404, "model_not_found")


# ----------------------------------------------------------------------------- failover


async def test_failover_before_the_first_byte(start_node: StartGateway, make_model, fake_peers, http) -> None:
    """B fails (5xx, a dropped connection) before answering: C serves; a peer's 503 (busy) goes
    on too, without counting against it."""
    b, c = fake_peers("b"), fake_peers("c")
    a = await start_node([], node_name="a", **peers(b=b.url, c={"url": c.url, "weight": 0.5}))
    await knows(a, "b", "m")
    await knows(a, "c", "m")
    for words, mode in enumerate(("status:502", "drop", "status:503"), 1):
        b.mode = mode
        resp = await post(http, a.url + CHAT, chat_body("m", words))  # a new conversation each: no stickiness
        assert resp.code == 200 and served_by(resp) == "c", (mode, resp.body)
    link = a.server.services.pool.links["b"]
    assert link.failures >= 2
    # Every node failed: the last peer's own answer.
    c.mode = "status:500"
    b.mode = "status:503"
    resp = await post(http, a.url + CHAT, chat_body("m", 9))
    assert resp.code == 500 and served_by(resp) == "c", resp.body


async def test_no_retry_after_the_first_byte(start_node: StartGateway, make_model, fake_peers, http) -> None:
    b, c = fake_peers("b", mode="stream_break"), fake_peers("c")
    a = await start_node([], node_name="a", **peers(b=b.url, c={"url": c.url, "weight": 0.5}))
    await knows(a, "b", "m")
    await knows(a, "c", "m")
    resp = await post(http, a.url + CHAT, chat_body("m", stream=True))
    assert resp.code == 200 and served_by(resp) == "b"
    events = sse_data(resp.body)
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "hi"
    assert "error" in json.loads(events[-1])  # the stream ends with an error event...
    assert c.requests() == []  # ...and is never sent again elsewhere


async def test_a_local_failure_goes_to_a_peer(start_node: StartGateway, make_model, fake_peers, http) -> None:
    broken = make_model("m", [4096], extra_args=["--fake-exit-at-startup", "3"])
    b = fake_peers("b", loaded=False)
    a = await start_node([broken], node_name="a", **peers(b=b.url))
    await knows(a, "b", "m")
    resp = await post(http, a.url + CHAT, chat_body("m"))  # A starts it (a local start first): it fails
    assert resp.code == 200 and served_by(resp) == "b", resp.body


# ----------------------------------------------------------------------------- breakers


async def test_a_silent_peer_trips_and_recovers(
    start_node: StartGateway, make_model, fake_peers, http, capsys: pytest.CaptureFixture[str]
) -> None:
    b = fake_peers("b")
    a = await start_node([], node_name="a", **peers(b=b.url))
    await knows(a, "b", "m")
    b.health = 500
    link = a.server.services.pool.links["b"]
    await wait_for(lambda: not link.breaker.allows, GUARD, "b tripped")
    resp = await post(http, a.url + CHAT, chat_body("m"))
    error = assert_error(resp, 503, "no_node_available")
    assert "b (open" in error["message"] or "b (recovering" in error["message"]
    assert int(resp.headers["Retry-After"]) >= 1
    assert b.requests() == []
    running = json.loads((await get(http, a.url + "/running")).body)
    assert running["node"] == "a"
    assert running["peers"][0]["name"] == "b" and running["peers"][0]["breaker"]["state"] in ("open", "recovering")
    state = json.loads((await get(http, a.url + "/api/state")).body)
    assert state["peers"][0]["breaker"] in ("open", "recovering")
    metrics = (await get(http, a.url + "/metrics")).body.decode()
    samples = {
        (s.name, s.labels.get("peer"), s.labels.get("state")): s.value
        for f in text_string_to_metric_families(metrics)
        for s in f.samples
        if s.name.startswith("llmgw_peer")
    }
    assert samples[("llmgw_peer_up", "b", None)] == 0
    assert samples[("llmgw_peer_trips_total", "b", None)] >= 1
    assert await asyncio.to_thread(ps.main, ["--url", a.url]) == 0
    shown = capsys.readouterr().out
    assert "node a: 1 peer(s)" in shown and re.search(r"^b +(open|recovering) +m ", shown, re.MULTILINE), shown
    b.health = 200
    await wait_for(lambda: link.breaker.allows, GUARD, "b recovered")
    resp = await post(http, a.url + CHAT, chat_body("m"))
    assert resp.code == 200 and served_by(resp) == "b"


async def test_a_hung_peer_trips_and_its_requests_go_elsewhere(
    start_node: StartGateway, make_model, fake_peers, http
) -> None:
    """B takes the request and never answers (nor its checks): when it trips, the request that
    had not begun to be answered goes to C."""
    b, c = fake_peers("b", mode="hang"), fake_peers("c")
    a = await start_node([], node_name="a", **peers(b=b.url, c={"url": c.url, "weight": 0.5}))
    await knows(a, "b", "m")
    await knows(a, "c", "m")
    request = asyncio.ensure_future(post(http, a.url + CHAT, chat_body("m")))
    await wait_for(lambda: len(b.requests()) == 1, GUARD, "b got the request")
    b.health = 500  # its checks fail now too (a frozen process answers nothing)
    resp = await asyncio.wait_for(request, GUARD)
    assert resp.code == 200 and served_by(resp) == "c", resp.body


async def test_a_plain_openai_server_as_a_peer(start_node: StartGateway, make_model, http) -> None:
    """A llama-server (the fake) as a peer: its /v1/models and /health only; model names rewritten."""
    m = make_model("plain", [4096])
    b = await start_node([m], node_name="b")  # only to run the fake engine
    assert (await post(http, b.url + "/load", {"model": "plain"})).code == 200
    engine_url = f"http://127.0.0.1:{m.port}"
    listed = json.loads((await get(http, engine_url + "/v1/models")).body)["data"][0]["id"]
    a = await start_node([], node_name="a", **peers(box=engine_url))
    await knows(a, "box", listed)
    assert a.server.services.pool.links["box"].kind == "openai"
    body = chat_body(listed)
    resp = await post(http, a.url + CHAT, body)
    assert resp.code == 200 and served_by(resp) == "box", resp.body
    assert json.loads(resp.body)["model"] == listed


async def test_reload_adds_and_removes_peers(start_node: StartGateway, make_model, fake_peers, http) -> None:
    b = fake_peers("b")
    a = await start_node([make_model("local", [4096])], node_name="a")
    assert not a.server.services.pool.links
    write_config(Path(a.config.path), [], a.port, node_name="a", **peers(b=b.url))
    await a.server.reload(ConfigLoader(a.config.path).load())
    await knows(a, "b", "m")
    resp = await post(http, a.url + CHAT, chat_body("m"))
    assert served_by(resp) == "b"
    write_config(Path(a.config.path), [], a.port, node_name="a", **peers(c=b.url))
    await a.server.reload(ConfigLoader(a.config.path).load())
    assert list(a.server.services.pool.links) == ["c"]
    await knows(a, "c", "m")
    assert served_by(await post(http, a.url + CHAT, chat_body("m"))) == "c"


async def test_a_peers_changes_arrive_by_its_events(start_node: StartGateway, make_model, http) -> None:
    """Checked only every 30 s, B's changes still reach A at once: A follows B's /events."""
    b = await start_node([make_model("m", [4096])], node_name="b")
    a = await start_node([], node_name="a", peers={"b": {"url": b.url}}, peer_check_interval=30)
    await knows(a, "b", "m", loaded=False)
    assert (await post(http, b.url + "/load", {"model": "m"})).code == 200
    await knows(a, "b", "m", loaded=True)
    # B begins to drain (it shuts down): A stops sending it anything new.
    b.server.services.node.draining = True
    b.server.services.bus.publish("node", draining=True)
    link = a.server.services.pool.links["b"]
    await wait_for(lambda: link.state is not None and link.state.draining, GUARD, "b draining")
    assert_error(await post(http, a.url + CHAT, chat_body("m")), 503, "no_node_available")
    assert (await get(http, b.url + "/health")).code == 503


async def test_a_shutdown_lets_forwarded_requests_finish(
    start_node: StartGateway, make_model, fake_peers, http
) -> None:
    """Requests forwarded to a peer hold no engine here, and still get the shutdown's grace."""
    b = fake_peers("b", mode="hang")
    a = await start_node([], node_name="a", **peers(b=b.url))
    await knows(a, "b", "m")
    request = asyncio.ensure_future(post(http, a.url + CHAT, chat_body("m")))
    await wait_for(lambda: len(b.requests()) == 1, GUARD, "b got the request")
    stopping = asyncio.ensure_future(a.server.stop(grace=5.0))
    await asyncio.sleep(0.3)
    assert not stopping.done() and not request.done()  # the forwarded request is waited for
    b.mode = "ok"
    b.hanging[0].set_result(None)  # the peer answers now (the fake finishes the hung request empty)
    resp = await asyncio.wait_for(request, GUARD)
    await asyncio.wait_for(stopping, GUARD)
    assert resp.code == 200, resp.body


async def test_a_peer_key_sees_what_the_peer_lets_it(start_node: StartGateway, make_model, http) -> None:
    """B gives A a key limited to m1, without admin rights: A routes m1 to B, never m2, and reads
    B's state without following its /events (an admin route)."""
    keys = {"from-a": {"key": "peer-key", "models": ["m1"]}, "ops": {"key": "ops-key", "admin": True}}
    b = await start_node([make_model("m1", [4096]), make_model("m2", [4096])], node_name="b", keys=keys)
    a = await start_node([], node_name="a", **peers(b={"url": b.url, "api_key": "peer-key"}))
    await knows(a, "b", "m1")
    state = json.loads((await get(http, b.url + "/api/state", headers={"Authorization": "Bearer peer-key"})).body)
    assert [m["name"] for m in state["models"]] == ["m1"]
    assert served_by(await post(http, a.url + CHAT, chat_body("m1"))) == "b"
    assert_error(await post(http, a.url + CHAT, chat_body("m2")), 404, "model_not_found")
    assert [e["id"] for e in json.loads((await get(http, a.url + "/v1/models")).body)["data"]] == ["m1"]
    assert (await get(http, b.url + "/events", headers={"Authorization": "Bearer peer-key"})).code == 403
