"""The official anthropic client against the gateway's /v1/messages (as Claude Code talks to it)."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import pytest

from conftest import Gateway

HI = [{"role": "user", "content": "Say hi"}]


async def in_thread(gw: Gateway, call: Any, api_key: str = "x") -> Any:
    client = anthropic.Anthropic(base_url=gw.url, api_key=api_key, max_retries=0, timeout=60)
    try:
        return await asyncio.to_thread(call, client)
    finally:
        client.close()


async def test_messages_stream_and_count_tokens(start_gateway, make_model) -> None:
    m = make_model("local", [2048, 8192], extra_args=["--fake-tokens", "4"], model_extra={"aliases": ["claude-x"]})
    gw = await start_gateway([m])

    def run(client: anthropic.Anthropic) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["message"] = client.messages.create(model="claude-x", max_tokens=32000, messages=HI, system="Be brief.")
        with client.messages.stream(model="claude-x", max_tokens=4, messages=HI) as stream:
            out["text"] = "".join(stream.text_stream)
            out["final"] = stream.get_final_message()
        out["count"] = client.messages.count_tokens(model="claude-x", messages=HI, system="Be brief.")
        return out

    out = await in_thread(gw, run)
    message = out["message"]
    assert message.type == "message" and message.role == "assistant" and message.model == "claude-x"
    assert message.content[0].type == "text" and message.content[0].text
    assert out["text"] == "tok0 tok1 tok2 tok3"
    assert out["final"].model == "claude-x" and out["final"].stop_reason == "max_tokens"
    assert out["count"].input_tokens > 3


async def test_error_types(start_gateway, make_model) -> None:
    gw = await start_gateway([make_model("m", [1024])], api_keys=["secret"])

    def create(model: str, content: str) -> Any:
        return lambda c: c.messages.create(model=model, max_tokens=4, messages=[{"role": "user", "content": content}])

    with pytest.raises(anthropic.AuthenticationError):
        await in_thread(gw, create("m", "hi"), api_key="wrong")
    with pytest.raises(anthropic.NotFoundError) as not_found:
        await in_thread(gw, create("nope", "hi"), api_key="secret")
    assert not_found.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as too_long:
        await in_thread(gw, create("m", " ".join(["w"] * 3000)), api_key="secret")
    assert too_long.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "prompt is too long" in too_long.value.message
