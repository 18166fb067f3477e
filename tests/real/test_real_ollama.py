"""Ollama's native API with the official ``ollama`` client against the real llama-server and
gemma-3 270M: model details from the real GGUF, chat streamed and not, generate, embed with an
embedding variant, load and unload. (tox env ``real``; marker ``real_engine``.)"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import ollama
import pytest

from conftest import free_port, lua
from llmgw.config import ConfigLoader
from llmgw.demo import RealEngine
from llmgw.server import GatewayServer

pytestmark = [pytest.mark.real_engine, pytest.mark.timeout(seconds=600)]  # a CPU shared with other jobs

SMALL, LARGE = 512, 2048
HI = [{"role": "user", "content": "Say hi"}]


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
         "variants": [variant(SMALL, chat_port), variant(LARGE, chat_port)]},
        {"name": "gemma-embed", "engine": "llama.cpp", "connect": f"http://127.0.0.1:{embed_port}",
         "endpoints": ["embeddings", "tokenize"],
         "variants": [variant(LARGE, embed_port, "--embeddings", "--pooling", "mean")]},
    ]  # fmt: skip
    path = tmp_path / "real.lua"
    path.write_text(f"server = {lua(server)}\nmodels = {lua(models)}\n")
    return ConfigLoader(str(path)).load()


@pytest.fixture
def client(io_loop: Any, tmp_path: Path, engine_files: RealEngine) -> Any:
    port = free_port()
    server = GatewayServer(config(tmp_path, engine_files, port))
    io_loop.run_sync(server.start)
    yield ollama.AsyncClient(host=f"http://127.0.0.1:{port}", timeout=300)
    io_loop.run_sync(lambda: server.stop(grace=1.0), timeout=60)


async def test_models_as_ollama_lists_them(client: ollama.AsyncClient) -> None:
    listed = {m.model: m for m in (await client.list()).models}
    assert set(listed) == {"gemma:latest", "gemma-embed:latest"}
    gemma = listed["gemma:latest"].details
    assert (gemma.format, gemma.family, gemma.quantization_level) == ("gguf", "gemma3", "Q4_K_M")
    assert gemma.parameter_size == "268.10M"
    shown = await client.show("gemma")
    assert shown.modelinfo["general.architecture"] == "gemma3"
    assert shown.modelinfo["gemma3.context_length"] == LARGE  # trained for 32768; served with at most 2048
    assert shown.capabilities == ["completion"] and shown.template == ""  # this GGUF has no chat template
    assert (await client.show("gemma-embed")).capabilities == ["embedding"]


async def test_chat_and_generate(client: ollama.AsyncClient) -> None:
    options = {"num_predict": 8, "temperature": 0, "seed": 1}
    one = await client.chat(model="gemma:latest", messages=HI, options=options)
    assert one.done and one.done_reason in ("stop", "length") and one.message.role == "assistant"
    assert isinstance(one.message.content, str) and 0 < one.eval_count <= 8
    assert one.prompt_eval_count > 0 and one.prompt_eval_duration > 0 and one.eval_duration > 0
    assert one.load_duration > 0 and one.total_duration > one.eval_duration

    parts = [part async for part in await client.chat(model="gemma", messages=HI, options=options, stream=True)]
    assert parts[-1].done and not any(part.done for part in parts[:-1])
    assert "".join(part.message.content for part in parts) == one.message.content  # same seed, same text
    assert parts[-1].eval_count == one.eval_count

    generated = await client.generate(model="gemma", prompt="Once upon a time", options=options)
    assert generated.done and generated.response and generated.eval_count <= 8
    raw = await client.generate(model="gemma", prompt="Once upon a time", raw=True, options=options)
    assert raw.done and raw.response and raw.done_reason in ("stop", "length")
    structured = await client.chat(model="gemma", messages=HI, format="json", options={**options, "num_predict": 24})
    assert structured.done and structured.message.content.lstrip().startswith("{")  # the grammar held

    running = {m.model: m for m in (await client.ps()).models}
    assert running["gemma:latest"].context_length == SMALL and running["gemma:latest"].size > 0
    assert (await client.generate(model="gemma", keep_alive=0)).done_reason == "unload"
    assert "gemma:latest" not in {m.model for m in (await client.ps()).models}


async def test_embed_with_the_embedding_variant(client: ollama.AsyncClient) -> None:
    both = await client.embed(model="gemma-embed", input=["the cat sat", "on the mat"])
    assert len(both.embeddings) == 2 and len(both.embeddings[0]) == 640
    assert math.isclose(math.hypot(*both.embeddings[0]), 1.0, rel_tol=1e-3)
    assert both.prompt_eval_count > 0
    short = await client.embed(model="gemma-embed", input="the cat sat", dimensions=16)
    assert len(short.embeddings[0]) == 16
    legacy = await client.embeddings(model="gemma-embed", prompt="the cat sat")
    assert len(legacy.embedding) == 640
    with pytest.raises(ollama.ResponseError) as caught:  # gemma itself runs without --embeddings
        await client.embed(model="gemma", input="x")
    assert caught.value.status_code == 400
