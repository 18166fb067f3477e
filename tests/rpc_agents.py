"""Agents for tests: ``python -m llmgw agent`` as a subprocess, supervising one worker (the fake
``ggml-rpc-server`` of fake_engine/fake_rpc.py unless told otherwise), and the fixture that stops
every agent a test started."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fake_engine.configs import HERE, free_port, lua

FAKE_RPC = str(HERE / "fake_rpc.py")


class Agent:
    """``python -m llmgw agent`` supervising one worker, as a subprocess: the fake worker unless
    ``binary`` is given; ``wrap`` goes before the command (``ip netns exec NS``)."""

    def __init__(
        self,
        directory: Path,
        name: str,
        *,
        restart_delay: float = 0.2,
        api_key: str | None = None,
        binary: str | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        wrap: tuple[str, ...] = (),
        cache_dir: str | None = None,
        threads: int | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = free_port()
        self.worker_port = free_port()
        self.api_key = api_key
        self.wrap = wrap
        if binary is None:
            wrapper = directory / f"fake-rpc-{name}"
            wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE_RPC} "$@"\n')
            wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
            binary = str(wrapper)
        worker: dict[str, Any] = {"address": f"{host}:{self.worker_port}", "devices": ["CPU"]}
        if threads is not None:
            worker["threads"] = threads
        table: dict[str, Any] = {
            "listen": f"{host}:{self.port}",
            "binary": binary,
            "restart_delay": restart_delay,
            "workers": [worker],
        }
        if env:
            table["env"] = env
        if cache_dir:
            table["cache_dir"] = cache_dir
        if api_key:
            table["api_key"] = api_key
        self.config = directory / f"agent-{name}.lua"
        self.config.write_text(f"agent = {lua(table)}\n")
        self.log = directory / f"agent-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, wait: bool = True) -> Agent:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.wrap, sys.executable, "-m", "llmgw", "agent", "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_for(lambda w: w["state"] == "running", "its worker running")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def status(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        request = urllib.request.Request(self.url + "/status", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            data: dict[str, Any] = json.loads(response.read())
        return data

    def worker(self) -> dict[str, Any]:
        worker: dict[str, Any] = self.status()["workers"][0]
        return worker

    def wait_for(self, condition: Any, what: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                worker = self.worker()
                if condition(worker):
                    return worker
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"agent {self.name}: timed out waiting for {what}: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def table(self, memory: float | None = None) -> dict[str, Any]:
        """This worker as the gateway's ``rpc_workers`` lists it."""
        entry: dict[str, Any] = {"address": f"{self.host}:{self.worker_port}", "agent": self.url, "devices": ["CPU"]}
        if self.api_key:
            entry["api_key"] = self.api_key
        if memory is not None:
            entry["memory"] = memory
        return entry


@pytest.fixture(name="agents")
def agents_fixture(tmp_path: Path) -> Iterator[Any]:
    started: list[Agent] = []

    def start(name: str, wait: bool = True, **kwargs: Any) -> Agent:
        agent = Agent(tmp_path, name, **kwargs)
        started.append(agent)
        return agent.start(wait)

    yield start
    for agent in started:
        agent.stop()
