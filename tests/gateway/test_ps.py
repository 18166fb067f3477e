"""``python -m llmgw ps``: the table it prints, asking a real gateway, and one clear line when none answers."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, chat_body, free_port, post
from llmgw import ps

NOW = 1_800_000_000.0


def test_render_is_a_table_with_load_progress_memory_and_idle_unload() -> None:
    running = {
        "engines": [
            {
                "model": "qwen3-8b",
                "variant": 2,
                "context": 32768,
                "state": "ready",
                "memory_mib": {"gpu0": 7012.4},
                "in_flight": 0,
                "last_used": NOW - 12,
                "idle_unload_in": 588.0,
            },
            {
                "model": "embed",
                "variant": 1,
                "context": 8192,
                "state": "starting",
                "memory_mib": {},
                "in_flight": 0,
                "last_used": None,
                "idle_unload_in": None,
                "load": {"elapsed": 3.0, "expected": 10.0, "percent": 30},
            },
        ],
        "queue": [{"model": "embed", "phase": "starting"}],
    }
    lines = ps.render(running, now=NOW).split("\n")
    assert lines[0].split() == [
        "MODEL",
        "VARIANT",
        "CONTEXT",
        "STATE",
        "MEMORY",
        "IN",
        "FLIGHT",
        "LAST",
        "USED",
        "/",
        "UNTIL",
    ]
    assert lines[1].split("   ")[0] == "qwen3-8b"
    assert "32768" in lines[1] and "gpu0 7012 MiB" in lines[1] and "12 s ago / unload in 9 min 48 s" in lines[1]
    assert "loading 30%" in lines[2] and "?" in lines[2] and lines[2].endswith("never")
    assert lines[3] == "1 request(s) waiting: embed (starting)"
    assert [line.index("32768") for line in lines[1:2]] == [lines[0].index("CONTEXT")]  # columns line up


def test_render_shows_the_peers_and_their_breakers() -> None:
    peer = {
        "name": "gpu-box",
        "breaker": {"state": "open"},
        "draining": False,
        "models": ["qwen", "q"],
        "loaded": ["qwen"],
        "in_flight": 3,
        "queued": 1,
        "forwarded": 12,
        "failures": 4,
    }
    text = ps.render({"engines": [], "queue": [], "node": "laptop", "peers": [peer, {"name": "b", "draining": True}]})
    lines = text.split("\n")
    assert lines[2] == "node laptop: 2 peer(s)"
    assert lines[3].split() == list(" ".join(ps.PEER_COLUMNS).split())
    assert re.split(r" {3,}", lines[4]) == ["gpu-box", "open", "qwen, q", "qwen", "3", "1", "12", "4"]
    assert lines[5].startswith("b") and "?, draining" in lines[5]


def test_render_without_engines_is_the_header_alone() -> None:
    assert ps.render({"engines": [], "queue": []}) == "   ".join(ps.COLUMNS)


async def test_ps_asks_the_gateway_by_url_or_config_with_the_key(
    start_gateway, make_model, http, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = await start_gateway([make_model("m", [2048], model_extra={"engine_idle_timeout": 300})], api_keys=["k1"])
    resp = await post(http, gw.url + "/v1/chat/completions", chat_body("m", max_tokens=4), headers={"x-api-key": "k1"})
    assert resp.code == 200
    assert await asyncio.to_thread(ps.main, ["--url", gw.url, "--api-key", "k1"]) == 0
    table = capsys.readouterr().out.strip().split("\n")
    assert len(table) == 2 and table[1].split()[:4] == ["m", "1", "2048", "ready"]
    assert "ago / unload in" in table[1]
    monkeypatch.setenv("LLMGW_API_KEY", "k1")
    assert await asyncio.to_thread(ps.main, ["-c", str(tmp_path / "config.lua")]) == 0
    assert capsys.readouterr().out.strip().split("\n")[1].split()[0] == "m"
    monkeypatch.delenv("LLMGW_API_KEY")
    assert await asyncio.to_thread(ps.main, ["--url", gw.url]) == 1
    assert "wants an API key" in capsys.readouterr().err


def test_ps_without_a_gateway_is_one_clear_line_and_exit_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "llmgw", "ps", "--url", url], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"llmgw ps: no llmgw gateway answers at {url} (")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
