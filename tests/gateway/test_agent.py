"""``python -m llmgw agent`` as a process, supervising the fake ``ggml-rpc-server``: what
GET /status tells, restarts after a death or a bind failure, POST /restart, the key, and that no
worker outlives its agent."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
from rpc_agents import Agent, agents_fixture  # noqa: F401 (the fixture "agents")


def call(url: str, body: bytes | None = None, key: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_status_tells_the_worker_its_devices_and_the_host(agents: Any) -> None:
    agent = agents("w1")
    status = agent.status()
    assert status["build"] is None  # the fake worker has no libggml-base.so beside it
    assert status["memory"]["ram_total_mib"] > 0 and status["agent"]["pid"] == agent.proc.pid
    (worker,) = status["workers"]
    assert worker["state"] == "running" and worker["restarts"] == 0 and worker["last_exit"] is None
    assert worker["protocol"] == "4.0.3"  # from its banner (stdbuf: seen before any client)
    assert worker["device_info"] == ["CPU: Fake device (1024 MiB, 1024 MiB free)"]
    assert worker["held"] is False and worker["clients"] == []
    assert psutil.Process(worker["pid"]).cmdline()[-1] == "-c"  # the weight cache is on
    assert worker["memory_mib"] > 1


def test_a_client_holding_the_worker_is_seen(agents: Any) -> None:
    agent = agents("w1")
    with socket.create_connection(("127.0.0.1", agent.worker_port)) as client:
        held = agent.wait_for(lambda w: w["held"], "the client to be seen")
        assert held["clients"] == [f"127.0.0.1:{client.getsockname()[1]}"]
    agent.wait_for(lambda w: not w["held"], "the client to be gone")


def test_a_worker_that_dies_is_started_again(agents: Any) -> None:
    agent = agents("w1")
    first = agent.worker()["pid"]
    os.kill(first, signal.SIGKILL)
    again = agent.wait_for(lambda w: w["state"] == "running" and w["pid"] not in (None, first), "a new worker")
    assert again["restarts"] == 1
    assert again["last_exit"]["code"] == -9 and again["last_exit"]["reason"] == "killed by signal 9"


def test_a_worker_that_cannot_bind_is_a_failure_though_it_exits_0(agents: Any, tmp_path: Path) -> None:
    agent = Agent(tmp_path, "w1", restart_delay=0.3)
    taken = socket.create_server(("127.0.0.1", agent.worker_port))  # ggml-rpc-server exits 0 then
    try:
        agent.start(wait=False)
        failed = agent.wait_for(lambda w: w["last_exit"] is not None, "the bind failure")
        assert failed["last_exit"]["code"] == 0 and "could not bind" in failed["last_exit"]["reason"], failed
        assert failed["state"] in ("restarting", "starting")
    finally:
        taken.close()
    try:
        back = agent.wait_for(lambda w: w["state"] == "running", "the port to be free and the worker up")
        assert back["restarts"] >= 1
    finally:
        agent.stop()


def test_restart_on_request_and_its_errors(agents: Any) -> None:
    agent = agents("w1", api_key="secret")
    before = agent.worker()
    code, body = call(agent.url + "/restart", json.dumps({"port": agent.worker_port}).encode(), "secret")
    assert (code, body) == (200, {"restarting": [f"127.0.0.1:{agent.worker_port}"]})
    after = agent.wait_for(lambda w: w["state"] == "running" and w["pid"] not in (None, before["pid"]), "the restart")
    assert after["last_exit"]["reason"] == "restarted" and after["restarts"] == 1
    assert call(agent.url + "/restart", b'{"port": 1}', "secret")[0] == 404
    assert call(agent.url + "/restart", b"not json", "secret")[0] == 400
    assert call(agent.url + "/restart", b'{"port": "x"}', "secret")[0] == 400
    # The key: every route but /health.
    assert call(agent.url + "/status")[0] == 401
    assert call(agent.url + "/status", key="wrong")[0] == 401
    assert call(agent.url + "/restart", b"{}")[0] == 401
    assert call(agent.url + "/health") == (200, {"status": "ok"})
    assert call(agent.url + "/nope", key="secret")[0] == 404


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_worker_outlives_its_agent(agents: Any, sig: signal.Signals) -> None:
    agent = agents("w1")
    worker = psutil.Process(agent.worker()["pid"])
    assert agent.proc is not None
    agent.proc.send_signal(sig)  # SIGKILL: the process guard and the parent-death signal act
    agent.proc.wait(timeout=15)
    worker.wait(timeout=10)
    assert not worker.is_running()


def test_check_config_and_a_bad_config(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "w1")
    done = subprocess.run(
        [sys.executable, "-m", "llmgw", "agent", "-c", str(agent.config), "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"worker 127.0.0.1:{agent.worker_port}:" in done.stdout and "-d CPU" in done.stdout
    bad = tmp_path / "bad.lua"
    bad.write_text('agent = { binary = "x", workers = { { address = "nowhere" } } }\n')
    done = subprocess.run(
        [sys.executable, "-m", "llmgw", "agent", "-c", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert 'agent.workers[1].address must be a "host:port" address' in done.stderr
