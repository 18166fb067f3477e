"""RpcWorkers, the gateway's side of RPC workers, against a fake agent (canned ``/status``) and a
plain socket standing for the worker: what a start waits for, what it refuses, and why."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from scheduling_world import TIMEOUTS
from tornado import httpserver, netutil, web

from conftest import free_port
from fake_engine.configs import FAKE_ENGINE
from llmgw.config import Config, LiveConfig, ModelConfig, RpcWorker, ServerConfig, Variant
from llmgw.errors import EngineStartError, WorkerBuildMismatch, WorkerUnavailable
from llmgw.runtime.rpc import RpcWorkers

BUILD = "abc1234"


def fake_binary(directory: Path, build: str = BUILD) -> str:
    """The fake llama-server behind one executable, so ``--version`` gives ``build``."""
    path = directory / f"llama-server-{build}"
    path.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE_ENGINE} --fake-build {build} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def rewrite(path: str, old: str, new: str) -> None:
    Path(path).write_text(Path(path).read_text().replace(old, new))


class FakeAgent:
    """``GET /status`` answers ``self.workers``; ``POST /restart`` is recorded (and clears clients)."""

    def __init__(self, port: int, worker_port: int) -> None:
        self.port = port
        self.build: str | None = BUILD
        self.worker: dict[str, Any] = {
            "address": f"127.0.0.1:{worker_port}",
            "port": worker_port,
            "state": "running",
            "pid": 4242,
            "clients": [],
            "memory_mib": 71.5,
            "device_info": ["CPU: Fake (1024 MiB, 1024 MiB free)"],
            "next_start_at": None,
            "last_exit": None,
        }
        self.restarts: list[Any] = []
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        agent = self

        class Status(web.RequestHandler):
            def get(self) -> None:
                agent.requests.append(self.request.headers.get("Authorization", ""))
                build = None if agent.build is None else {"commit": agent.build, "ggml": "0.17.0"}
                self.write(json.dumps({"build": build, "workers": [agent.worker]}))

        class Restart(web.RequestHandler):
            def post(self) -> None:
                agent.restarts.append(json.loads(self.request.body))
                agent.worker = {**agent.worker, "clients": [], "pid": agent.worker["pid"] + 1}
                self.write("{}")

        return web.Application([(r"/status", Status), (r"/restart", Restart)])


@contextlib.asynccontextmanager
async def rpc_world(tmp_path: Path) -> AsyncIterator[Any]:
    """A worker port that accepts (and holds) connections, a fake agent for it, a variant using it."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    worker = await asyncio.start_server(accept, "127.0.0.1", 0)
    worker_port = worker.sockets[0].getsockname()[1]
    agent = FakeAgent(free_port(), worker_port)
    server = httpserver.HTTPServer(agent.app())
    server.add_sockets(netutil.bind_sockets(agent.port, "127.0.0.1"))

    class World:
        def __init__(self) -> None:
            self.agent = agent
            self.worker_port = worker_port
            self.binary = fake_binary(tmp_path)
            self.rpc_worker = RpcWorker("w1", f"127.0.0.1:{worker_port}", ("CPU",), agent.url, "secret", 1000)

        def variant(self, **changes: Any) -> tuple[ModelConfig, Variant]:
            variant = Variant(
                1, self.binary, ("-c", "2048"), 2048, "http://127.0.0.1:1", TIMEOUTS, rpc=(self.rpc_worker,)
            )
            variant = replace(variant, **changes)
            return ModelConfig("m", "llama.cpp", (variant,)), variant

        def workers(self, queue_timeout: float = 5.0) -> RpcWorkers:
            server = ServerConfig(listen=(("127.0.0.1", 1),), timeouts=TIMEOUTS, queue_timeout=queue_timeout)
            return RpcWorkers(LiveConfig(Config("t.lua", server, ())))

    try:
        yield World()
    finally:
        server.stop()
        worker.close()
        for writer in held:
            writer.close()


async def test_a_ready_worker_passes_and_its_pid_is_kept(tmp_path: Path) -> None:
    async with rpc_world(tmp_path) as world:
        workers = world.workers()
        model, variant = world.variant()
        assert await workers.prepare(model, variant) == {"w1": 4242}
        assert world.agent.requests[-1] == "Bearer secret"  # the agent's key
        assert await workers.still_there(variant, {"w1": 4242})
        assert not await workers.still_there(variant, {"w1": 4241})  # another process now
        assert await workers.usage(variant) == {"w1": 71.5}
        workers.close()


async def test_another_build_is_refused_naming_both(tmp_path: Path) -> None:
    async with rpc_world(tmp_path) as world:
        world.agent.build = "fff0000"
        model, variant = world.variant()
        with pytest.raises(WorkerBuildMismatch) as info:
            await world.workers().prepare(model, variant)
        message = info.value.message
        assert "RPC worker 'w1'" in message and "fff0000" in message and BUILD in message
        assert info.value.status == 503 and info.value.code == "rpc_build_mismatch"


async def test_an_agent_that_does_not_answer_fails_the_start_at_once(tmp_path: Path) -> None:
    async with rpc_world(tmp_path) as world:
        worker = replace(world.rpc_worker, agent=f"http://127.0.0.1:{free_port()}")
        model, variant = world.variant(rpc=(worker,))
        started = time.monotonic()
        with pytest.raises(WorkerUnavailable) as info:
            await world.workers(queue_timeout=60).prepare(model, variant)
        assert time.monotonic() - started < 30  # not the queue timeout (a hang guard, generous)
        assert "RPC worker 'w1'" in info.value.message and "does not answer" in info.value.message
        assert info.value.status == 503 and info.value.retry_after is not None


async def test_a_worker_being_started_again_is_waited_for(tmp_path: Path) -> None:
    async with rpc_world(tmp_path) as world:
        world.agent.worker.update(state="restarting", pid=None)
        model, variant = world.variant()
        start = asyncio.ensure_future(world.workers(queue_timeout=30).prepare(model, variant))
        await asyncio.sleep(0.6)
        assert not start.done()  # still waiting
        world.agent.worker.update(state="running", pid=5000)
        assert await asyncio.wait_for(start, 10) == {"w1": 5000}


async def test_a_worker_not_back_in_time_is_a_503_with_retry_after(tmp_path: Path) -> None:
    async with rpc_world(tmp_path) as world:
        world.agent.worker.update(
            state="restarting", pid=None, next_start_at=time.time() + 20, last_exit={"reason": "killed by signal 9"}
        )
        model, variant = world.variant()
        with pytest.raises(WorkerUnavailable) as info:
            await world.workers(queue_timeout=0.5).prepare(model, variant)
        assert "is not ready: restarting (last exit: killed by signal 9)" in info.value.message
        assert info.value.retry_after is not None and 15 < info.value.retry_after < 25


async def test_a_worker_held_from_this_host_by_no_engine_of_ours_is_restarted(tmp_path: Path) -> None:
    async with rpc_world(tmp_path) as world:
        world.agent.worker["clients"] = ["127.0.0.1:40000"]  # a coordinator of ours that died uncleanly
        model, variant = world.variant()
        assert await world.workers(queue_timeout=30).prepare(model, variant) == {"w1": 4243}
        assert world.agent.restarts == [{"port": world.worker_port}]


async def test_a_worker_held_by_another_host_is_waited_for_never_restarted(tmp_path: Path) -> None:
    async with rpc_world(tmp_path) as world:
        world.agent.worker["clients"] = ["10.9.9.9:40000"]
        model, variant = world.variant()
        with pytest.raises(WorkerUnavailable) as info:
            await world.workers(queue_timeout=1).prepare(model, variant)
        assert "held by 10.9.9.9:40000" in info.value.message and world.agent.restarts == []


async def test_a_device_count_other_than_the_config_s_is_refused(tmp_path: Path) -> None:
    async with rpc_world(tmp_path) as world:
        world.agent.worker["device_info"] = ["CUDA0: A", "CUDA1: B"]
        model, variant = world.variant()
        with pytest.raises(EngineStartError, match="offers 2 device"):
            await world.workers().prepare(model, variant)


async def test_without_an_agent_only_the_port_is_checked(tmp_path: Path) -> None:
    async with rpc_world(tmp_path) as world:
        model, variant = world.variant(rpc=(replace(world.rpc_worker, agent=None),))
        assert await world.workers().prepare(model, variant) == {"w1": None}
        gone = RpcWorker("w2", f"127.0.0.1:{free_port()}")
        model, variant = world.variant(rpc=(gone,))
        with pytest.raises(WorkerUnavailable, match="cannot connect from this host"):
            await world.workers().prepare(model, variant)
        assert not await world.workers().still_there(variant, {})


async def test_the_engine_build_is_read_once_per_binary(tmp_path: Path) -> None:
    async with rpc_world(tmp_path) as world:
        workers = world.workers()
        _, variant = world.variant()
        assert await workers.coordinator_build(variant) == BUILD
        before = os.stat(variant.binary)
        rewrite(variant.binary, BUILD, "0000000")
        os.utime(variant.binary, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert await workers.coordinator_build(variant) == BUILD  # the same file: not run again
        os.utime(variant.binary, (1, 1))  # a new binary: read again
        assert await workers.coordinator_build(variant) == "0000000"
