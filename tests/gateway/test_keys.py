"""Keys with scopes, limits and usage, through a gateway of fake engines: who may use what (401,
403, 404 like an unknown model), limits (429 with Retry-After in each dialect), priority in the
queue, usage where an operator looks, and the key itself nowhere."""

from __future__ import annotations

import json
from typing import Any

from test_watching import EventReader, has

from conftest import assert_error, chat_body, events_of, get, post

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
