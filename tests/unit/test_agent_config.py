"""The agent's Lua config (python -m llmgw agent): its command lines and one precise error per mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fake_engine.configs import lua
from llmgw.agent.config import AgentConfig, WorkerSpec, load
from llmgw.config import ConfigError

BASE: dict[str, Any] = {
    "binary": "/opt/llama.cpp/ggml-rpc-server",
    "workers": [{"address": "10.0.0.2:50052", "devices": ["CUDA0", "CUDA1"], "threads": 8}],
}


def write(tmp_path: Path, table: dict[str, Any]) -> str:
    path = tmp_path / "agent.lua"
    path.write_text(f"agent = {lua(table)}\n")
    return str(path)


def test_a_worker_gets_its_address_devices_threads_and_the_cache(tmp_path: Path) -> None:
    config = load(write(tmp_path, {**BASE, "cache_dir": "/var/cache/llama.cpp", "env": {"A": "1"}}))
    assert config.listen == ("127.0.0.1", 7790)  # only this host asks, by default
    (worker,) = config.workers
    assert worker == WorkerSpec("10.0.0.2", 50052, ("CUDA0", "CUDA1"), 8)
    assert config.args(worker) == ["-H", "10.0.0.2", "-p", "50052", "-d", "CUDA0,CUDA1", "-t", "8", "-c"]
    assert config.environment == {"A": "1", "LLAMA_CACHE": "/var/cache/llama.cpp"}
    assert (config.restart_delay, config.restart_delay_max) == (1.0, 30.0)


def test_the_cache_can_be_turned_off_and_defaults_are_left_to_the_worker(tmp_path: Path) -> None:
    config = load(write(tmp_path, {**BASE, "cache": False, "workers": [{"address": "h:1"}]}))
    assert config.args(config.workers[0]) == ["-H", "h", "-p", "1"]
    assert config.environment == {}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"binary": None}, "agent.binary is required"),
        ({"workers": []}, "agent.workers must be a non-empty list"),
        ({"workers": [{"address": "h"}]}, 'agent.workers[1].address must be a "host:port" address'),
        ({"workers": [{"address": "h:1"}, {"address": "g:1"}]}, "agent.workers[2].address repeats the port 1"),
        ({"workers": [{"address": "h:1", "threads": 0}]}, "agent.workers[1].threads must be a positive integer"),
        ({"workers": [{"address": "h:1", "devices": ["CUDA 0"]}]}, "must be a llama.cpp device name"),
        ({"listen": "[::1]:7790"}, "agent.listen must be"),
        ({"restart_delay": 0}, "agent.restart_delay must be a positive number"),
        ({"api_key": ""}, "agent.api_key must be a non-empty string"),
    ],
)
def test_mistakes_name_their_place(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    table = {**BASE, **changes}
    table = {k: v for k, v in table.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, table))
    assert expected in str(info.value)
    assert "secret" not in str(info.value)


def test_a_file_without_an_agent_table_says_so(tmp_path: Path) -> None:
    path = tmp_path / "agent.lua"
    path.write_text("server = {}\n")
    with pytest.raises(ConfigError, match="agent is required"):
        load(str(path))


def test_the_key_is_never_shown(tmp_path: Path) -> None:
    assert "hunter2" not in repr(load(write(tmp_path, {**BASE, "api_key": "hunter2"})))
    assert isinstance(load(write(tmp_path, BASE)), AgentConfig)
