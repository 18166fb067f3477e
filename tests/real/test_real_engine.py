"""The real llama-server and gemma-3 270M from PyPI (tox env ``real``; marker ``real_engine``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from conftest import free_port, lua
from llmgw.config import ConfigLoader
from llmgw.demo import RealEngine
from llmgw.runtime import ProcessRuntime
from llmgw.scheduling import EngineManager
from llmgw.server import GatewayServer
from llmgw.upstream import EngineHTTPClient, LlamaCppClient

pytestmark = pytest.mark.real_engine

SMALL, LARGE = 512, 2048


def real_config(tmp_path: Path, files: RealEngine, gateway_port: int, engine_port: int, **server_extra: Any) -> Any:
    variants = [
        {
            "binary": files.binary,
            "args": [
                "-m",
                files.model,
                "--host",
                "127.0.0.1",
                "--port",
                str(engine_port),
                "-c",
                str(ctx),
                "-np",
                "1",
                "--no-webui",
            ],
            "context": ctx,
            "env": files.env,
        }
        for ctx in (SMALL, LARGE)
    ]
    server = {
        "listen_v4": f"127.0.0.1:{gateway_port}",
        "listen_v6": "none",
        "engine_startup_timeout": 120,
        "engine_stop_timeout": 10,
        **server_extra,
    }
    model = {"name": "gemma", "engine": "llama.cpp", "connect": f"http://127.0.0.1:{engine_port}", "variants": variants}
    path = tmp_path / "real.lua"
    path.write_text(f"server = {lua(server)}\nmodels = {lua([model])}\n")
    return ConfigLoader(str(path)).load()


def long_prompt_body(words: int = 600) -> dict[str, Any]:
    """A prompt over SMALL tokens but well under LARGE."""
    return {
        "model": "gemma",
        "messages": [{"role": "user", "content": "word " * words}],
        "max_tokens": 8,
        "temperature": 0,
    }


async def test_real_engine_starts_counts_exactly_and_stops(
    io_loop: Any, tmp_path: Path, engine_files: RealEngine
) -> None:
    config = real_config(tmp_path, engine_files, free_port(), free_port())
    http = EngineHTTPClient.create()
    manager = EngineManager(config, ProcessRuntime(http))
    model = config.model("gemma")
    assert model is not None
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the capital of France?"},
        ]
    }
    try:
        async with manager.lease(model) as engine:
            pid = engine.process.pid
            assert pid is not None and engine.variant.context == SMALL
            assert engine.n_ctx == SMALL  # read from /props
            client = engine.client
            assert isinstance(client, LlamaCppClient)
            counted = await client.count_prompt_tokens(body)
            # The direct way: template the messages, tokenize with the special tokens.
            _, templated = await http.json_call(client.base_url + "/apply-template", body)
            _, tokens = await http.json_call(
                client.base_url + "/tokenize",
                {"content": templated["prompt"], "add_special": True, "parse_special": True},
            )
            assert counted == len(tokens["tokens"]) > 10
            assert await client.count_prompt_tokens({**body, "max_tokens": 100}) == counted
    finally:
        await manager.shutdown()
        http.close()
    assert manager.engines == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_long_prompt_goes_to_larger_variant_through_gateway(
    io_loop: Any, tmp_path: Path, engine_files: RealEngine
) -> None:
    gateway_port, engine_port = free_port(), free_port()
    config = real_config(tmp_path, engine_files, gateway_port, engine_port)
    gateway = GatewayServer(config)
    await gateway.start()
    client = AsyncHTTPClient(force_instance=True, defaults={"request_timeout": 300})
    url = f"http://127.0.0.1:{gateway_port}"
    try:
        # Load the small variant, then send the same long request straight to it: it overflows.
        response = await client.fetch(url + "/load", method="POST", body=json.dumps({"model": "gemma"}))
        assert json.loads(response.body)["engine"]["context"] == SMALL
        direct = await client.fetch(
            f"http://127.0.0.1:{engine_port}/v1/chat/completions",
            method="POST",
            body=json.dumps(long_prompt_body()),
            raise_error=False,
        )
        assert direct.code == 400
        assert json.loads(direct.body)["error"]["type"] == "exceed_context_size_error"

        # Through the gateway the same request succeeds, on the larger variant.
        via = await client.fetch(
            url + "/v1/chat/completions", method="POST", body=json.dumps(long_prompt_body()), raise_error=False
        )
        assert via.code == 200, via.body
        answer = json.loads(via.body)
        assert answer["usage"]["prompt_tokens"] > SMALL
        running = json.loads((await client.fetch(url + "/running")).body)
        assert [engine["context"] for engine in running["engines"]] == [LARGE]

        # Streaming works on the real engine too, and ends with [DONE].
        stream = await client.fetch(
            url + "/v1/chat/completions", method="POST", body=json.dumps({**long_prompt_body(20), "stream": True})
        )
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert stream.body.rstrip().endswith(b"data: [DONE]")
    finally:
        client.close()
        await gateway.stop(grace=1.0)


async def test_cold_stream_gets_loading_feedback_and_real_timings(
    io_loop: Any, tmp_path: Path, engine_files: RealEngine
) -> None:
    gateway_port = free_port()
    config = real_config(tmp_path, engine_files, gateway_port, free_port(), state_dir=str(tmp_path / "state"))
    gateway = GatewayServer(config)
    await gateway.start()
    client = AsyncHTTPClient(force_instance=True, defaults={"request_timeout": 300})
    url = f"http://127.0.0.1:{gateway_port}"
    body = {"model": "gemma", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8, "stream": True}
    try:
        # Cold start: progress comments come before llama-server's first event.
        stream = await client.fetch(url + "/v1/chat/completions", method="POST", body=json.dumps(body))
        text = stream.body.decode()
        head = text[: text.index("data:")]
        assert head.startswith(": llmgw Loading model 'gemma' (variant 1, context 512):"), text[:500]
        assert text.rstrip().endswith("data: [DONE]")
        models = json.loads((await client.fetch(url + "/v1/models")).body)["data"]
        assert models[0]["status"]["value"] == "loaded" and models[0]["status"]["n_ctx"] == SMALL
        # The engine's own timings reached the request history.
        record = json.loads((await client.fetch(url + "/api/requests")).body)["requests"][0]
        assert record["status"] == 200 and record["generated_tokens"] == 8 and record["prompt_tokens"] > 5
        assert record["decode_tps"] is not None and record["prefill_tps"] is not None
        # A second cold start knows the first one's load time: a percentage.
        await client.fetch(url + "/unload", method="POST", body=b"{}")
        again = (await client.fetch(url + "/v1/chat/completions", method="POST", body=json.dumps(body))).body
        first = again.decode().split("\n")[0]
        assert first.startswith(": llmgw Loading model 'gemma'") and first.endswith("%"), first
    finally:
        client.close()
        await gateway.stop(grace=1.0)
