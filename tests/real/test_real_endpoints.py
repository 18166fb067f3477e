"""The real llama-server with gemma-3 270M behind the gateway: a chat model and an embedding model
side by side, every protocol through the official SDKs, and llama.cpp's native routes.
(tox env ``real``; marker ``real_engine``.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from tornado.httpclient import AsyncHTTPClient

from conftest import free_port, lua
from llmgw.config import ConfigLoader
from llmgw.demo import RealEngine
from llmgw.server import GatewayServer

pytestmark = [pytest.mark.real_engine, pytest.mark.timeout(seconds=600)]  # a CPU shared with other jobs

SMALL, LARGE = 512, 2048


def config(tmp_path: Path, files: RealEngine, port: int) -> Any:
    chat_port, embed_port = free_port(), free_port()

    def variant(ctx: int, engine_port: int, *extra: str) -> dict[str, Any]:
        args = ["-m", files.model, "--host", "127.0.0.1", "--port", str(engine_port), "-c", str(ctx), "-np", "1",
                "--no-webui", *extra]  # fmt: skip
        return {"binary": files.binary, "args": args, "context": ctx, "env": files.env}

    server = {
        "listen_v4": f"127.0.0.1:{port}",
        "listen_v6": "none",
        "engine_startup_timeout": 120,
        "engine_stop_timeout": 10,
        "max_engines": 2,
        "state_dir": str(tmp_path / "state"),
    }
    models = [
        {"name": "gemma", "engine": "llama.cpp", "connect": f"http://127.0.0.1:{chat_port}",
         "aliases": ["claude-haiku"], "variants": [variant(SMALL, chat_port), variant(LARGE, chat_port)]},
        {"name": "gemma-embed", "engine": "llama.cpp", "connect": f"http://127.0.0.1:{embed_port}",
         "endpoints": ["embeddings", "tokenize"],
         "variants": [variant(LARGE, embed_port, "--embeddings", "--pooling", "mean")]},
    ]  # fmt: skip
    path = tmp_path / "real.lua"
    path.write_text(f"server = {lua(server)}\nmodels = {lua(models)}\n")
    return ConfigLoader(str(path)).load()


@pytest.fixture
def gateway(io_loop: Any, tmp_path: Path, engine_files: RealEngine) -> Any:
    port = free_port()
    server = GatewayServer(config(tmp_path, engine_files, port))
    io_loop.run_sync(server.start)
    yield server, f"http://127.0.0.1:{port}"
    io_loop.run_sync(lambda: server.stop(grace=1.0), timeout=60)


async def fetch(url: str, body: Any = None) -> tuple[int, Any]:
    client = AsyncHTTPClient(force_instance=True, defaults={"request_timeout": 300})
    try:
        if body is None:
            resp = await client.fetch(url, raise_error=False)
        else:
            resp = await client.fetch(url, method="POST", body=json.dumps(body), raise_error=False)
        try:
            return resp.code, json.loads(resp.body)
        except ValueError:
            return resp.code, resp.body
    finally:
        client.close()


async def pids(url: str) -> dict[str, int]:
    _, running = await fetch(url + "/running")
    return {engine["model"]: engine["pid"] for engine in running["engines"]}


async def test_chat_and_embedding_models_stay_loaded_side_by_side(gateway: Any) -> None:
    _, url = gateway
    chat = {"model": "gemma", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
    embed = {"model": "gemma-embed", "input": ["the cat sat", "on the mat"]}
    first: dict[str, int] = {}
    for round_ in range(3):
        status, answer = await fetch(url + "/v1/chat/completions", chat)
        assert status == 200 and answer["model"] == "gemma", answer
        status, vectors = await fetch(url + "/v1/embeddings", embed)
        assert status == 200 and len(vectors["data"]) == 2 and vectors["model"] == "gemma-embed", vectors
        assert len(vectors["data"][0]["embedding"]) > 100
        if round_ == 0:
            first = await pids(url)
    assert set(first) == {"gemma", "gemma-embed"}
    assert await pids(url) == first  # no restart while alternating


async def test_official_sdks_on_every_protocol(gateway: Any) -> None:
    _, url = gateway

    def run_openai() -> dict[str, Any]:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300)
        out: dict[str, Any] = {}
        with client:
            hi = [{"role": "user", "content": "Say hi"}]
            out["chat"] = client.chat.completions.create(model="gemma", messages=hi, max_tokens=4)
            out["chat_stream"] = list(client.chat.completions.create(model="gemma", messages=hi, max_tokens=4,
                                                                     stream=True))  # fmt: skip
            out["completion"] = client.completions.create(model="gemma", prompt="Once upon a time", max_tokens=4)
            out["completion_stream"] = list(
                client.completions.create(model="gemma", prompt="Once upon a time", max_tokens=4, stream=True)
            )
            out["embeddings"] = client.embeddings.create(model="gemma-embed", input="Once upon a time")
            out["response"] = client.responses.create(model="gemma", input="Say hi", max_output_tokens=4)
            out["response_stream"] = list(
                client.responses.create(model="gemma", input="Say hi", max_output_tokens=4, stream=True)
            )
        return out

    def run_anthropic() -> dict[str, Any]:
        client = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=300)
        out: dict[str, Any] = {}
        with client:
            hi = [{"role": "user", "content": "Say hi"}]
            # 32000 tokens fit no variant: the largest one runs; a stop sequence ends the answer early
            # (the small base model would otherwise write until the context is full).
            out["message"] = client.messages.create(
                model="claude-haiku", max_tokens=32000, messages=hi, stop_sequences=["\n", "."]
            )
            with client.messages.stream(model="claude-haiku", max_tokens=4, messages=hi) as stream:
                out["text"] = "".join(stream.text_stream)
                out["final"] = stream.get_final_message()
            out["count"] = client.messages.count_tokens(model="claude-haiku", messages=hi)
            try:
                client.messages.create(model="nope", max_tokens=4, messages=hi)
            except anthropic.NotFoundError as exc:
                out["not_found"] = exc
            long = [{"role": "user", "content": "word " * 3000}]
            try:
                client.messages.create(model="claude-haiku", max_tokens=4, messages=long)
            except anthropic.BadRequestError as exc:
                out["too_long"] = exc
        return out

    oa = await asyncio.to_thread(run_openai)
    assert oa["chat"].model == "gemma" and oa["chat"].usage.completion_tokens > 0
    assert {c.model for c in oa["chat_stream"]} == {"gemma"} and oa["chat_stream"][-1].choices[0].finish_reason
    assert oa["completion"].model == "gemma" and oa["completion"].choices[0].text
    assert {c.model for c in oa["completion_stream"]} == {"gemma"}
    assert oa["embeddings"].model == "gemma-embed" and len(oa["embeddings"].data[0].embedding) > 100
    assert oa["response"].model == "gemma" and oa["response"].output_text
    assert oa["response_stream"][-1].type == "response.completed"
    assert oa["response_stream"][-1].response.model == "gemma"

    an = await asyncio.to_thread(run_anthropic)
    assert an["message"].model == "claude-haiku" and an["message"].content[0].text
    assert an["final"].model == "claude-haiku" and an["text"]
    _, running = await fetch(url + "/running")
    assert [e["context"] for e in running["engines"] if e["model"] == "gemma"] == [LARGE]  # the largest ran
    assert an["count"].input_tokens > 3
    assert an["not_found"].body["error"]["type"] == "not_found_error"
    assert "prompt is too long" in an["too_long"].message


async def test_native_routes_and_engine_questions(gateway: Any) -> None:
    _, url = gateway
    status, tokens = await fetch(url + "/tokenize", {"model": "gemma", "content": "Hello world"})
    assert status == 200 and len(tokens["tokens"]) >= 2
    status, text = await fetch(url + "/detokenize", {"model": "gemma", "tokens": tokens["tokens"]})
    assert status == 200 and "Hello" in text["content"]
    hi = [{"role": "user", "content": "hi"}]
    status, prompt = await fetch(url + "/apply-template", {"model": "gemma", "messages": hi})
    assert status == 200 and "hi" in prompt["prompt"]
    status, completion = await fetch(url + "/completion", {"model": "gemma", "prompt": "Once upon", "n_predict": 4})
    assert status == 200 and completion["model"] == "gemma" and completion["tokens_predicted"] > 0
    status, native = await fetch(url + "/embedding", {"model": "gemma-embed", "content": "Hello"})
    assert status == 200 and isinstance(native, list) and native[0]["embedding"]
    status, infill = await fetch(url + "/infill", {"model": "gemma", "input_prefix": "def f(", "input_suffix": ")"})
    assert status == 501 and infill["error"]["type"] == "not_supported_error"  # gemma has no FIM tokens
    status, props = await fetch(url + "/props?model=gemma")
    assert status == 200 and props["default_generation_settings"]["n_ctx"] in (SMALL, LARGE)
    status, slots = await fetch(url + "/slots?model=gemma")
    assert status == 200 and isinstance(slots, list)


async def test_a_long_messages_prompt_lands_on_the_larger_variant(gateway: Any) -> None:
    _, url = gateway
    body = {"model": "gemma", "max_tokens": 4, "messages": [{"role": "user", "content": "word " * 600}]}
    status, message = await fetch(url + "/v1/messages", body)
    assert status == 200, message
    assert message["usage"]["input_tokens"] + message["usage"].get("cache_read_input_tokens", 0) > SMALL
    _, running = await fetch(url + "/running")
    assert [e["context"] for e in running["engines"] if e["model"] == "gemma"] == [LARGE]
