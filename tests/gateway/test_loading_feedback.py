"""Loading feedback in the stream, end to end with fake engines: comments (the default), reasoning in
each protocol's shape (checked with the official SDKs), nothing when the engine is ready or the
mode is "none", and the protocol's error event when the load fails after the stream began."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import openai

from conftest import Gateway, chat_body, get, post, sse_data

CHAT = "/v1/chat/completions"
SLOW = ["--fake-load-delay", "1.5", "--fake-tokens", "3"]  # the engine answers 503 "Loading model" at first


def comments(body: bytes) -> list[str]:
    return [line for line in body.decode().split("\n") if line.startswith(": llmgw")]


def before_first_data(body: bytes) -> str:
    text = body.decode()
    return text[: text.index("data:")]


async def test_cold_stream_gets_progress_comments_before_the_answer(start_gateway, make_model, http) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=SLOW)])
    resp = await post(http, gw.url + CHAT, chat_body("m", stream=True))
    assert resp.code == 200, resp.body
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    head = before_first_data(resp.body)
    assert ": llmgw Loading model 'm' (variant 1, context 2048):" in head, resp.body
    events = sse_data(resp.body)
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "tok0 tok1 tok2"
    # The engine is ready now: the next stream comes straight from it, with no progress.
    again = await post(http, gw.url + CHAT, chat_body("m", stream=True))
    assert again.code == 200 and comments(again.body) == []
    # Its load time is known from now on: the next cold start shows an estimated percentage.
    assert (await post(http, gw.url + "/unload", {"model": "m"})).code == 200
    cold = await post(http, gw.url + CHAT, chat_body("m", stream=True))
    first = comments(cold.body)[0]
    assert first.startswith(": llmgw Loading model 'm' (variant 1, context 2048), about ") and first.endswith("%")


async def test_no_feedback_when_the_mode_is_none_or_the_request_does_not_stream(
    start_gateway, make_model, http
) -> None:
    quiet = make_model("quiet", [2048], extra_args=SLOW, model_extra={"loading_feedback": "none"})
    plain = make_model("plain", [2048], extra_args=SLOW)
    gw = await start_gateway([quiet, plain], max_engines=2)
    streamed, unstreamed = await asyncio.gather(
        post(http, gw.url + CHAT, chat_body("quiet", stream=True)), post(http, gw.url + CHAT, chat_body("plain"))
    )
    assert streamed.code == 200 and comments(streamed.body) == [] and sse_data(streamed.body)[-1] == "[DONE]"
    assert unstreamed.code == 200 and json.loads(unstreamed.body)["object"] == "chat.completion"


async def test_failed_load_after_feedback_is_the_protocols_error_event(start_gateway, make_model, http) -> None:
    broken = make_model(
        "m", [2048], extra_args=["--fake-exit-at-startup", "3"], model_extra={"loading_feedback": "reasoning"}
    )
    gw = await start_gateway([broken])
    chat = await post(http, gw.url + CHAT, chat_body("m", stream=True))
    assert chat.code == 200, chat.body
    events = sse_data(chat.body)
    assert "reasoning_content" in events[0]
    error = json.loads(events[-1])["error"]
    assert error["code"] == "engine_start_failed" and "fake startup failure" in error["message"]
    assert "[DONE]" not in events and '"content"' not in chat.body.decode()

    messages = await post(
        http,
        gw.url + "/v1/messages",
        {"model": "m", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert messages.code == 200
    blocks = messages.body.decode().strip().split("\n\n")
    assert blocks[0].startswith("event: message_start")
    assert blocks[-1].startswith("event: error")
    assert json.loads(blocks[-1].split("data: ", 1)[1])["error"]["type"] == "overloaded_error"
    assert "message_stop" not in messages.body.decode()

    history = json.loads((await get(http, gw.url + "/api/requests")).body)["requests"]
    assert [(r["route"], r["status"]) for r in history] == [("/v1/messages", 503), (CHAT, 503)]


async def in_thread(call: Any) -> Any:
    return await asyncio.to_thread(call)


async def test_reasoning_in_openai_chat(start_gateway, make_model) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=SLOW, model_extra={"loading_feedback": "reasoning"})])
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=60)

    def run() -> tuple[str, str]:
        reasoning, content = [], []
        with client.chat.completions.create(model="m", messages=chat_body("m")["messages"], stream=True) as stream:
            for chunk in stream:
                delta = chunk.choices[0].delta
                reasoning.append((delta.model_extra or {}).get("reasoning_content") or "")
                content.append(delta.content or "")
        return "".join(reasoning), "".join(content)

    try:
        reasoning, content = await in_thread(run)
    finally:
        client.close()
    assert reasoning.startswith("Loading model 'm' (variant 1, context 2048):")
    assert "Ready after" in reasoning
    assert content == "tok0 tok1 tok2"


async def test_reasoning_in_anthropic_messages_is_a_thinking_block(start_gateway, make_model) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=SLOW, model_extra={"loading_feedback": "reasoning"})])
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0, timeout=60)

    def run() -> Any:
        with client.messages.stream(model="m", max_tokens=3, messages=[{"role": "user", "content": "a b c"}]) as stream:
            text = "".join(stream.text_stream)
            return text, stream.get_final_message()

    try:
        text, message = await in_thread(run)
    finally:
        client.close()
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking.startswith("Loading model 'm' (variant 1, context 2048)")
    assert "Ready after" in message.content[0].thinking
    assert text == message.content[1].text == "tok0 tok1 tok2"
    assert message.model == "m" and message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


async def test_reasoning_in_responses_is_a_reasoning_item(start_gateway, make_model) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=SLOW, model_extra={"loading_feedback": "reasoning"})])
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=60)

    def run() -> list[Any]:
        with client.responses.create(model="m", input="a b c", stream=True) as stream:
            return list(stream)

    try:
        events = await in_thread(run)
    finally:
        client.close()
    kinds = [event.type for event in events]
    assert kinds.count("response.created") == 1 and kinds.count("response.in_progress") == 1
    first_text = kinds.index("response.output_text.delta")
    assert "response.reasoning_text.delta" in kinds[:first_text]
    assert kinds.index("response.output_item.done") < first_text  # our reasoning item is closed first
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert reasoning.startswith("Loading model 'm' (variant 1, context 2048)") and "Ready after" in reasoning
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "tok0 tok1 tok2"
    assert kinds[-1] == "response.completed"


async def test_reasoning_mode_on_a_route_without_reasoning_sends_comments(start_gateway, make_model, http) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=SLOW, model_extra={"loading_feedback": "reasoning"})])
    resp = await post(http, gw.url + "/v1/completions", {"model": "m", "prompt": "a b", "stream": True})
    assert resp.code == 200
    assert ": llmgw Loading model 'm'" in before_first_data(resp.body)
    assert sse_data(resp.body)[-1] == "[DONE]"


async def test_queue_position_while_another_model_holds_the_only_place(start_gateway, make_model, http) -> None:
    busy = make_model("busy", [2048], extra_args=["--fake-tokens", "40", "--fake-token-delay", "0.05"])
    waiting = make_model("waiting", [2048], extra_args=["--fake-tokens", "2"])
    gw: Gateway = await start_gateway([busy, waiting])
    first = asyncio.ensure_future(post(http, gw.url + CHAT, chat_body("busy")))
    for _ in range(500):  # bounded: until the busy model's request holds its engine
        running = json.loads((await get(http, gw.url + "/running")).body)
        if running["in_flight"]:
            break
        await asyncio.sleep(0.02)
    second = await post(http, gw.url + CHAT, chat_body("waiting", stream=True))
    assert (await first).code == 200
    lines = comments(second.body)
    waiting_line = "Waiting for model 'waiting' (variant 1, context 2048): waiting for the requests on the engines"
    assert lines and waiting_line in lines[0] and lines[0].endswith("finish, position 1 of 1")
    assert sse_data(second.body)[-1] == "[DONE]"
