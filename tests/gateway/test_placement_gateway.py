"""Several engines through the gateway, with fake llama-servers as real processes: models side by
side, a memory budget enforced from really measured RSS (the fake holds N MiB), the state file,
/running, /load, /unload, pinned models and metrics labelled by model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from conftest import FakeModel, assert_error, chat_body, events_of, get, post, running, write_config

CHAT = "/v1/chat/completions"
BALLAST = 150  # MiB each fake engine holds (its RSS is that plus ~30 MiB of Python)


def ballast(name: str, make_model: Any, **kwargs: Any) -> FakeModel:
    model: FakeModel = make_model(name, [2048], extra_args=["--fake-memory-mb", str(BALLAST)], **kwargs)
    return model


async def ask(http: Any, gw: Any, name: str) -> None:
    resp = await post(http, gw.url + CHAT, chat_body(name))
    assert resp.code == 200, resp.body


async def test_two_models_stay_loaded_while_requests_alternate(start_gateway, make_model, http) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    gw = await start_gateway([a, b], max_engines=2)
    for _ in range(4):
        await ask(http, gw, "a")
        await ask(http, gw, "b")
    assert [len(events_of(m, "start")) for m in (a, b)] == [1, 1]
    assert events_of(a, "exit") == events_of(b, "exit") == []
    info = await running(http, gw)
    assert sorted((e["model"], e["state"], e["pid"]) for e in info["engines"]) == [
        ("a", "ready", events_of(a, "start")[0]["pid"]),
        ("b", "ready", events_of(b, "start")[0]["pid"]),
    ]


async def test_measured_memory_decides_what_fits_and_is_remembered(
    start_gateway, make_model, http, tmp_path: Path
) -> None:
    a, b = ballast("a", make_model), ballast("b", make_model)
    gw = await start_gateway([a, b], max_engines=2, memory_budget=3 * BALLAST)
    await ask(http, gw, "a")  # never measured: it runs alone, and is measured once ready
    await ask(http, gw, "b")  # unknown too: needs the whole budget, so a makes room
    assert len(events_of(a, "exit")) == 1
    await ask(http, gw, "a")  # both measured (~180 MiB each): they fit side by side now
    for _ in range(3):
        await ask(http, gw, "b")
        await ask(http, gw, "a")
    assert [len(events_of(m, "start")) for m in (a, b)] == [2, 1]
    engines = (await running(http, gw))["engines"]
    for engine in engines:
        assert engine["memory_source"] == "measured"
        assert BALLAST < engine["memory_mib"]["total"] < 2 * BALLAST, engine
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert len(state["memory"]) == 2 and all(v["total"] > BALLAST for v in state["memory"].values())

    # A gateway started later with the same state directory places both at once.
    await gw.server.stop()
    gw2 = await start_gateway([a, b], max_engines=2, memory_budget=3 * BALLAST)
    await ask(http, gw2, "a")
    await ask(http, gw2, "b")
    assert [len(events_of(m, "start")) for m in (a, b)] == [3, 2]
    assert len(events_of(a, "exit")) == 2  # stopped with the first gateway only


async def test_a_budget_too_small_for_both_keeps_one_at_a_time(start_gateway, make_model, http) -> None:
    a, b = ballast("a", make_model), ballast("b", make_model)
    gw = await start_gateway([a, b], max_engines=2, memory_budget=int(1.5 * BALLAST) + 60)
    for _ in range(3):
        await ask(http, gw, "a")
        await ask(http, gw, "b")
    # Measured RSS (~180 MiB each) never fits twice in ~285 MiB: every switch stops the other.
    assert [len(events_of(m, "start")) for m in (a, b)] == [3, 3]
    assert len((await running(http, gw))["engines"]) == 1


async def test_unload_one_model_or_all_and_load_makes_room(start_gateway, make_model, http) -> None:
    a, b, c = make_model("a", [2048]), make_model("b", [2048]), make_model("c", [2048])
    gw = await start_gateway([a, b, c], max_engines=2)
    await ask(http, gw, "a")
    await ask(http, gw, "b")
    resp = await post(http, gw.url + "/unload", {"model": "a"})
    assert resp.code == 200 and json.loads(resp.body) == {"status": "unloaded", "models": ["a"]}
    assert [e["model"] for e in (await running(http, gw))["engines"]] == ["b"]
    await ask(http, gw, "a")
    resp = await post(http, gw.url + "/load", {"model": "c"})  # a and b idle: the least recently used goes
    assert resp.code == 200, resp.body
    assert json.loads(resp.body)["engine"]["model"] == "c"
    assert sorted(e["model"] for e in (await running(http, gw))["engines"]) == ["a", "c"]
    assert_error(await post(http, gw.url + "/unload", {"model": "nope"}), 404, "model_not_found")
    assert_error(await post(http, gw.url + "/unload", {"model": 5}), 400)
    resp = await post(http, gw.url + "/unload", b"")
    assert resp.code == 200 and json.loads(resp.body)["models"] == ["a", "c"]
    assert (await running(http, gw))["engines"] == []


async def test_a_pinned_model_keeps_its_place_and_the_wait_says_why(start_gateway, make_model, http) -> None:
    p = make_model("p", [2048], model_extra={"pinned": True})
    a = make_model("a", [2048])
    gw = await start_gateway([p, a], max_engines=1, queue_timeout=0.5)
    await ask(http, gw, "p")
    resp = await post(http, gw.url + CHAT, chat_body("a"))
    error = assert_error(resp, 503, "queue_timeout")
    assert "pinned model(s) 'p' leave no room for 'a'" in error["message"]
    assert int(resp.headers["Retry-After"]) >= 1
    assert events_of(a, "start") == [] and events_of(p, "exit") == []


async def test_metrics_are_labelled_by_model(start_gateway, make_model, http) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    gw = await start_gateway([a, b], max_engines=2)
    await ask(http, gw, "a")
    await ask(http, gw, "b")
    await post(http, gw.url + "/unload", {"model": "a"})
    resp = await get(http, gw.url + "/metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.body.decode())
        for s in family.samples
    }
    assert samples[("llmgw_engine_starts_total", (("model", "a"),))] == 1
    assert samples[("llmgw_engine_starts_total", (("model", "b"),))] == 1
    assert samples[("llmgw_engine_stops_total", (("model", "a"),))] == 1
    assert samples[("llmgw_engines", (("model", "b"), ("state", "ready")))] == 1
    assert ("llmgw_engines", (("model", "a"), ("state", "ready"))) not in samples
    assert samples[("llmgw_queued_requests", (("model", "a"),))] == 0


async def test_reload_keeps_the_unchanged_engine_and_stops_the_changed_one(
    start_gateway, make_model, http, tmp_path: Path
) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    gw = await start_gateway([a, b], max_engines=2)
    await ask(http, gw, "a")
    await ask(http, gw, "b")
    b.extra_args = ["-np", "1"]
    new = write_config(tmp_path / "config2.lua", [a, b], gw.port, max_engines=2)
    await gw.server.reload(new)
    assert [e["model"] for e in (await running(http, gw))["engines"]] == ["a"]
    assert events_of(a, "exit") == [] and len(events_of(b, "exit")) == 1
    await ask(http, gw, "b")  # the new launch
    assert len(events_of(b, "start")) == 2 and len(events_of(a, "start")) == 1
