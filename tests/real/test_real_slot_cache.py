"""The slot cache with the real llama-server and gemma-3 270M (marker ``real_engine``): a conversation
saved by a small-context variant comes back into the larger variant after a swap, and the engine
reuses it (timings.cache_n) instead of processing it again. gemma-3 has sliding-window layers:
llama-server reuses a restored slot for it only with --swa-full (without it, the restore itself
works and nothing is reused); both are checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port, lua, post
from llmgw.config import ConfigLoader
from llmgw.demo import RealEngine
from llmgw.server import GatewayServer

pytestmark = pytest.mark.real_engine

SMALL, LARGE = 1024, 4096
CHAT = "/v1/chat/completions"


def config(tmp_path: Path, files: RealEngine, port: int, swa_full: bool) -> Any:
    def variants(name: str, engine_port: int, contexts: tuple[int, ...]) -> dict[str, Any]:
        extra = ["--swa-full"] if swa_full else []
        return {
            "name": name,
            "engine": "llama.cpp",
            "connect": f"http://127.0.0.1:{engine_port}",
            "variants": [
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
                        "-t",
                        "1",
                        "--no-webui",
                        *extra,
                    ],
                    "context": ctx,
                    "env": files.env,
                }
                for ctx in contexts
            ],
        }

    server = {
        "listen_v4": f"127.0.0.1:{port}",
        "listen_v6": "none",
        "engine_startup_timeout": 120,
        "engine_stop_timeout": 10,
        "state_dir": str(tmp_path / "state"),
        "slot_cache": {"dir": str(tmp_path / "slots"), "max_mb": 256},
    }
    models = [variants("a", free_port(), (SMALL, LARGE)), variants("b", free_port(), (SMALL,))]
    path = tmp_path / "real.lua"
    path.write_text(f"server = {lua(server)}\nmodels = {lua(models)}\n")
    return ConfigLoader(str(path)).load()


def turn(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("swa_full", [True, False])
async def test_a_small_variant_conversation_comes_back_into_the_large_variant(
    io_loop: Any, tmp_path: Path, engine_files: RealEngine, http: Any, swa_full: bool
) -> None:
    port = free_port()
    gw = GatewayServer(config(tmp_path, engine_files, port, swa_full))
    await gw.start()
    url = f"http://127.0.0.1:{port}"
    try:
        story = " ".join(f"Item {i} is a {('red', 'blue', 'green')[i % 3]} box." for i in range(80))  # ~700 tokens
        messages = [turn(f"Remember this list: {story}")]
        first = await post(http, url + CHAT, {"model": "a", "messages": messages, "max_tokens": 4, "temperature": 0})
        assert first.code == 200, first.body
        answer = json.loads(first.body)["choices"][0]["message"]["content"]
        other = await post(http, url + CHAT, {"model": "b", "messages": [turn("Hi")], "max_tokens": 2})
        assert other.code == 200, other.body  # a's engine stops: its slot is saved
        saved = gw.services.slot_cache.stats["a"].saves
        assert saved == 1
        # Back to a with the conversation and a new turn that needs more than the small context.
        question = "Which items are blue? " + " ".join(f"Item {i} may be blue." for i in range(60))  # ~400 tokens
        messages += [{"role": "assistant", "content": answer}, turn(question)]
        body = {"model": "a", "messages": messages, "max_tokens": 4, "temperature": 0}
        back = await post(http, url + CHAT, body)
        assert back.code == 200, back.body
        engines = gw.services.views.running()["engines"]
        assert [e["context"] for e in engines if e["model"] == "a"] == [LARGE]
        stats = gw.services.slot_cache.stats["a"]
        assert stats.hits == 1 and stats.tokens_restored > 600
        timings = json.loads(back.body)["timings"]
        if swa_full:
            assert timings["cache_n"] >= stats.tokens_restored - 8  # reused, not processed again
            assert stats.tokens_reused == timings["cache_n"]
        else:
            assert timings["cache_n"] == 0  # gemma's sliding window: restored, not reused
    finally:
        await gw.stop(grace=1.0)
