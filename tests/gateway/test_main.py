"""The entry point as users run it: python -m llmgw."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from conftest import FakeModel, chat_body, free_port, get_json, only_engine, wait_gateway_ready, write_config

ROOT = Path(__file__).resolve().parents[2]


def run_llmgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmgw", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_check_config_prints_summary(tmp_path: Path) -> None:
    port = free_port()
    write_config(tmp_path / "c.lua", [FakeModel("alpha", [4096, 1024])], port)
    result = run_llmgw("--config", str(tmp_path / "c.lua"), "--check-config")
    assert result.returncode == 0, result.stderr
    assert "alpha" in result.stdout and "1024, 4096" in result.stdout
    assert f"127.0.0.1:{port}" in result.stdout
    assert "placement: up to 1 engine(s) at once" in result.stdout


def test_check_config_error_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.lua"
    path.write_text('server = { listen_v4 = "127.0.0.1:7777", listen_v6 = "none" }\nmodels = {}\n')
    result = run_llmgw("-c", str(path), "--check-config")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "models" in result.stderr


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    result = run_llmgw("-c", str(tmp_path / "nope.lua"))
    assert result.returncode != 0
    assert "not found" in result.stderr and "Traceback" not in result.stderr


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_stops_gateway_and_engine(tmp_path: Path) -> None:
    port = free_port()
    write_config(tmp_path / "c.lua", [FakeModel("alpha", [1024])], port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmgw", "-c", str(tmp_path / "c.lua")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_gateway_ready(url, proc)
        answer = get_json(url + "/v1/chat/completions", chat_body("alpha", 3, max_tokens=4))
        assert answer["usage"]["completion_tokens"] == 4
        engine_pid = only_engine(get_json(url + "/running"))["pid"]
        assert psutil.pid_exists(engine_pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not psutil.pid_exists(engine_pid) or psutil.Process(engine_pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _child_pid(events: Path) -> int:
    for _ in range(100):
        if events.exists():
            for line in events.read_text().splitlines():
                event = json.loads(line)
                if event["event"] == "child":
                    return int(event["pid"])
        time.sleep(0.05)
    raise AssertionError("the fake engine recorded no child")


def test_engine_and_its_children_die_with_a_sigkilled_gateway(tmp_path: Path) -> None:
    """Even SIGKILL of the gateway leaves no engine (nor a process it spawned) holding the GPU."""
    port = free_port()
    events = tmp_path / "events.jsonl"
    model = FakeModel("alpha", [1024], extra_args=["--fake-spawn-child"], events=events)
    write_config(tmp_path / "c.lua", [model], port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmgw", "-c", str(tmp_path / "c.lua")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_gateway_ready(url, proc)
        get_json(url + "/load", {"model": "alpha"})
        engine_pid = only_engine(get_json(url + "/running"))["pid"]
        child_pid = _child_pid(events)
        assert psutil.pid_exists(child_pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        for _ in range(100):  # up to ~10 s
            if not _alive(engine_pid) and not _alive(child_pid):
                break
            time.sleep(0.1)
        assert not _alive(engine_pid), "engine outlived its SIGKILLed gateway"
        assert not _alive(child_pid), "the engine's child outlived the SIGKILLed gateway"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
