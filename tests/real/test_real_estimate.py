"""The memory estimate from gemma-3 270M's header against the RSS the gateway measures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port, get, lua, post
from llmgw.config import ConfigLoader
from llmgw.demo import RealEngine
from llmgw.server import GatewayServer

pytestmark = pytest.mark.real_engine


@pytest.mark.parametrize("args", [["-c", "2048"], ["-c", "32768", "-np", "1"]])
async def test_the_estimate_is_close_to_the_measured_rss(
    io_loop: Any, tmp_path: Path, engine_files: RealEngine, http: Any, args: list[str]
) -> None:
    port, engine_port = free_port(), free_port()
    variant = {
        "binary": engine_files.binary,
        "args": ["-m", engine_files.model, "--host", "127.0.0.1", "--port", str(engine_port), "-t", "1", *args],
        "context": int(args[1]),
        "env": engine_files.env,
    }
    model = {
        "name": "gemma",
        "engine": "llama.cpp",
        "connect": f"http://127.0.0.1:{engine_port}",
        "variants": [variant],
    }
    server = {"listen_v4": f"127.0.0.1:{port}", "listen_v6": "none", "memory_budget": 8000, "state_dir": str(tmp_path)}
    path = tmp_path / "estimate.lua"
    path.write_text(f"server = {lua(server)}\nmodels = {lua([model])}\n")
    gateway = GatewayServer(ConfigLoader(str(path)).load())
    await gateway.start()
    try:
        await gateway.services.manager.learn_estimates()
        body = {"model": "gemma", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
        resp = await post(http, f"http://127.0.0.1:{port}/v1/chat/completions", body)
        assert resp.code == 200, resp.body
        answer = await get(http, f"http://127.0.0.1:{port}/running")
        (engine,) = json.loads(answer.body)["engines"]  # measured once ready
        estimate, measured = engine["memory_estimate_mib"]["total"], engine["memory_measured_mib"]["total"]
        print(f"gemma {' '.join(args)}: estimate {estimate} MiB, measured {measured} MiB")
        assert 0.7 * measured <= estimate <= 1.3 * measured, engine
    finally:
        await gateway.stop(grace=1.0)
