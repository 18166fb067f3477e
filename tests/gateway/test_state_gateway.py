"""A corrupt state file never stops the gateway from serving."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import chat_body, post, running


async def test_the_gateway_serves_with_a_corrupt_state_file(start_gateway, make_model, http, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_bytes(b'{"version": 1, "memory": {"a/')
    m = make_model("m", [2048])
    gw = await start_gateway([m], memory_budget=4000)
    assert (await post(http, gw.url + "/v1/chat/completions", chat_body("m"))).code == 200
    (engine,) = (await running(http, gw))["engines"]
    assert engine["memory_source"] == "measured"  # measured again, and written
    assert json.loads((state / "state.json").read_text())["memory"]
