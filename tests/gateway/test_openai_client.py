"""The official openai client against the gateway (it runs in a thread: the gateway's loop must keep going)."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from conftest import Gateway, chat_body

MESSAGES = chat_body("m", 5)["messages"]  # 5 words: 8 prompt tokens for the fake engine


def client_for(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=60)


async def in_thread(gw: Gateway, call: Any) -> Any:
    client = client_for(gw)
    try:
        return await asyncio.to_thread(call, client)
    finally:
        client.close()


async def test_non_stream_completion(start_gateway, make_model) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=["--fake-tokens", "4"])])
    completion = await in_thread(gw, lambda c: c.chat.completions.create(model="m", messages=MESSAGES))
    assert completion.object == "chat.completion"
    assert completion.model == "m"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "tok0 tok1 tok2 tok3"
    assert choice.finish_reason == "stop"
    assert completion.usage.prompt_tokens == 8
    assert completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == 12


async def test_stream_completion(start_gateway, make_model) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=["--fake-tokens", "6", "--fake-token-delay", "0.02"])])

    def run(client: openai.OpenAI) -> tuple[list[str], list[str | None], Any]:
        deltas: list[str] = []
        finish: list[str | None] = []
        usage = None
        stream = client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        with stream:
            for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        deltas.append(choice.delta.content)
                    finish.append(choice.finish_reason)
        return deltas, finish, usage

    deltas, finish, usage = await in_thread(gw, run)
    assert deltas == ["tok0", " tok1", " tok2", " tok3", " tok4", " tok5"]
    assert finish[-1] == "stop"
    assert all(reason is None for reason in finish[:-1])
    assert usage is not None and usage.prompt_tokens == 8 and usage.completion_tokens == 6


async def test_list_models(start_gateway, make_model) -> None:
    gw = await start_gateway([make_model("m", [2048, 4096]), make_model("n", [1024])])
    page = await in_thread(gw, lambda c: c.models.list())
    models = {m.id: m for m in page.data}
    assert set(models) == {"m", "n"}
    assert models["m"].model_extra["context_length"] == 4096


async def test_unknown_model_raises_not_found(start_gateway, make_model) -> None:
    gw = await start_gateway([make_model("m", [2048])])
    with pytest.raises(openai.NotFoundError) as caught:
        await in_thread(gw, lambda c: c.chat.completions.create(model="nope", messages=MESSAGES))
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"


async def test_oversize_prompt_raises_bad_request(start_gateway, make_model) -> None:
    gw = await start_gateway([make_model("m", [1024, 2048])])
    messages = chat_body("m", 2500)["messages"]
    with pytest.raises(openai.BadRequestError) as caught:
        await in_thread(gw, lambda c: c.chat.completions.create(model="m", messages=messages, max_tokens=10))
    assert caught.value.status_code == 400
    assert caught.value.code == "context_length_exceeded"
    assert "2048" in caught.value.message


async def test_completions_embeddings_and_responses(start_gateway, make_model) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=["--embeddings", "--fake-tokens", "3"])])

    def run(client: openai.OpenAI) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["completion"] = client.completions.create(model="m", prompt="Once upon a time", max_tokens=3)
        stream = client.completions.create(model="m", prompt="Once upon a time", max_tokens=3, stream=True)
        out["completion_stream"] = [choice.text for chunk in stream for choice in chunk.choices]
        out["embeddings"] = client.embeddings.create(model="m", input=["a b", "c d e"])
        out["response"] = client.responses.create(model="m", input="Say hi", max_output_tokens=3)
        events = list(client.responses.create(model="m", input="Say hi", max_output_tokens=3, stream=True))
        out["response_events"] = events
        return out

    out = await in_thread(gw, run)
    completion = out["completion"]
    assert completion.object == "text_completion" and completion.model == "m"
    assert completion.choices[0].text == "tok0 tok1 tok2" and completion.usage.completion_tokens == 3
    assert "".join(out["completion_stream"]) == "tok0 tok1 tok2"
    embeddings = out["embeddings"]
    assert embeddings.model == "m" and [d.index for d in embeddings.data] == [0, 1]
    assert all(len(d.embedding) > 0 for d in embeddings.data)
    response = out["response"]
    assert response.model == "m" and response.output_text == "tok0 tok1 tok2"
    kinds = [event.type for event in out["response_events"]]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in out["response_events"] if e.type == "response.output_text.delta") == (
        "tok0 tok1 tok2"
    )
    assert out["response_events"][-1].response.model == "m"
