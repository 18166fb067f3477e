"""Keys with scopes, limits and usage, through a gateway of fake engines: who may use what (401,
403, 404 like an unknown model), limits (429 with Retry-After in each dialect), priority in the
queue, usage where an operator looks, and the key itself nowhere."""

from __future__ import annotations

from typing import Any

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
