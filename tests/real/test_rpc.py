"""One model over two hosts, for real: two ``ggml-rpc-server`` workers (``-d CPU``), each in a
network namespace of its own behind a veth link and supervised there by ``python -m llmgw
agent``, and the gateway in the root namespace starting llama-server with ``--rpc`` on gemma-3
270M. Marker ``rpc`` (tox env ``rpc``): needs root for the namespaces, and skips, saying why,
where they cannot be made.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rpc_agents import Agent

from conftest import assert_error, free_port, get, lua, post, sse_data
from fake_engine.netns import Link, Namespaces, unavailable
from llmgw.config import ConfigLoader
from llmgw.demo import RealEngine
from llmgw.server import GatewayServer

pytestmark = [pytest.mark.rpc, pytest.mark.timeout(seconds=300)]

PROMPT = {"prompt": "The capital of France is", "max_tokens": 16, "temperature": 0, "seed": 1}


@pytest.fixture
def hosts() -> Iterator[list[Link]]:
    """Two namespaces, each a worker host on its own link; always deleted."""
    why = unavailable()
    if why is not None:
        if os.environ.get("LLMGW_REQUIRE_NETNS"):
            pytest.fail(why)
        pytest.skip(why)
    net = Namespaces()
    try:
        yield [net.add(), net.add()]
    finally:
        net.close()


def worker_agent(tmp_path: Path, files: RealEngine, link: Link, name: str, **kwargs: Any) -> Agent:
    binary = str(Path(files.binary).parent / "ggml-rpc-server")
    return Agent(
        tmp_path,
        name,
        binary=binary,
        env=files.env,
        host=link.ip,
        wrap=link.wrap(),
        cache_dir=str(tmp_path / f"cache-{name}"),
        threads=1,
        **kwargs,
    ).start()


def local_reference(files: RealEngine) -> str:
    """The greedy answer of a local llama-server without weight repacking (the CPU backend
    repacks Q4_K weights for its own kernels, RPC workers do not: with it the numbers differ)."""
    port = free_port()
    args = [files.binary, "-m", files.model, "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [*args, "-c", "2048", "-np", "1", "-t", "1", "--no-repack"],
        env={**os.environ, **files.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):  # up to 60 s
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        request = urllib.request.Request(
            url + "/v1/completions", data=json.dumps(PROMPT).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            text: str = json.loads(response.read())["choices"][0]["text"]
        return text
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def gateway(tmp_path: Path, files: RealEngine, agents: list[Agent], **server: Any) -> tuple[GatewayServer, str]:
    port, engine_port = free_port(), free_port()
    variant = {
        "binary": files.binary,
        "args": ["-m", files.model, "--host", "127.0.0.1", "--port", str(engine_port), "-c", 2048, "-np", 1, "-t", 1],
        "context": 2048,
        "env": files.env,
    }
    model = {
        "name": "gemma",
        "engine": "llama.cpp",
        "connect": f"http://127.0.0.1:{engine_port}",
        "rpc": [agent.name for agent in agents],
        "variants": [variant],
    }
    table = {
        "listen_v4": f"127.0.0.1:{port}",
        "listen_v6": "none",
        "engine_startup_timeout": 120,
        "state_dir": str(tmp_path / "state"),
        "memory_budget": {"ram": 8000},
        "rpc_workers": {agent.name: agent.table(memory=4000) for agent in agents},
        **server,
    }
    path = tmp_path / "rpc.lua"
    path.write_text(f"server = {lua(table)}\nmodels = {lua([model])}\n")
    server_ = GatewayServer(ConfigLoader(str(path)).load())
    await server_.start()
    return server_, f"http://127.0.0.1:{port}"


async def complete(http: Any, url: str) -> str:
    resp = await post(http, url + "/v1/completions", {"model": "gemma", **PROMPT})
    assert resp.code == 200, resp.body
    text: str = json.loads(resp.body)["choices"][0]["text"]
    return text


async def test_two_hosts_give_the_local_answer_and_a_warm_cache_sends_less(
    io_loop: Any, tmp_path: Path, engine_files: RealEngine, hosts: list[Link], http: Any
) -> None:
    reference = local_reference(engine_files)
    agents = [worker_agent(tmp_path, engine_files, link, f"w{i}") for i, link in enumerate(hosts, 1)]
    server, url = await gateway(tmp_path, engine_files, agents)
    try:
        loads = []
        for attempt in ("cold", "warm"):
            sent = sum(link.sent_bytes() for link in hosts)
            started = time.monotonic()
            resp = await post(http, url + "/load", {"model": "gemma"})
            assert resp.code == 200, resp.body
            loads.append((attempt, time.monotonic() - started, sum(link.sent_bytes() for link in hosts) - sent))
            assert await complete(http, url) == reference  # greedy, over two hosts: the local answer
            for agent in agents:
                assert agent.worker()["held"], agent.worker()  # each worker serves this coordinator
            (engine,) = json.loads((await get(http, url + "/running")).body)["engines"]
            assert {"w1", "w2"} <= set(engine["memory_estimate_mib"]), engine  # estimated per worker
            resp = await post(http, url + "/unload", {"model": "gemma"})
            assert resp.code == 200, resp.body
        for attempt, seconds, sent in loads:
            print(f"RPC load over two namespaces, {attempt} cache: {seconds:.2f} s, {sent / 2**20:.1f} MiB sent")
        # The weight cache (-c): tensors over 10 MiB (gemma's 170 MiB output matrix, on the last
        # worker) go as hashes the second time; the worker kept them in its cache directory.
        (cold, warm) = (sent for _, _, sent in loads)
        assert warm < 0.6 * cold, loads
        assert any((tmp_path / "cache-w2" / "rpc").iterdir())
    finally:
        await server.stop(grace=1.0)
        for agent in agents:
            agent.stop()


async def test_a_killed_worker_gives_a_503_and_the_model_is_served_once_it_is_back(
    io_loop: Any, tmp_path: Path, engine_files: RealEngine, hosts: list[Link], http: Any
) -> None:
    # The agent starts a dead worker again after 8 s; the gateway waits for it 2 s at most.
    agents = [worker_agent(tmp_path, engine_files, link, f"w{i}", restart_delay=8.0) for i, link in enumerate(hosts, 1)]
    server, url = await gateway(tmp_path, engine_files, agents, queue_timeout=2)
    try:
        answer = await complete(http, url)
        victim = agents[1]
        os.kill(victim.worker()["pid"], signal.SIGKILL)
        victim.wait_for(lambda w: w["state"] == "restarting", "the agent to see its worker die")
        # llama-server's /health stays 200; the next request aborts it (ggml-rpc.cpp:498), and
        # the new engine waits for a worker that is not back.
        resp = await post(http, url + "/v1/completions", {"model": "gemma", **PROMPT})
        error = assert_error(resp, 503, "rpc_worker_unavailable")
        assert "RPC worker 'w2'" in error["message"], error
        assert int(resp.headers["Retry-After"]) >= 1
        victim.wait_for(lambda w: w["state"] == "running", "the agent to start it again", timeout=60)
        assert await complete(http, url) == answer
    finally:
        await server.stop(grace=1.0)
        for agent in agents:
            agent.stop()


async def test_a_worker_cut_off_mid_generation_ends_the_request_instead_of_hanging_it(
    io_loop: Any, tmp_path: Path, engine_files: RealEngine, hosts: list[Link], http: Any
) -> None:
    """A partition (packets dropped, no reset) makes llama-server wait on its worker for ever,
    with /health still 200: the busy engine's probe asks the workers' agents too, and kills it."""
    agents = [worker_agent(tmp_path, engine_files, link, f"w{i}") for i, link in enumerate(hosts, 1)]
    server, url = await gateway(tmp_path, engine_files, agents, health_check_timeout=1, stream_idle_timeout=600)
    cut = hosts[1]
    try:
        assert await complete(http, url)  # loaded
        body = {"model": "gemma", "prompt": "Once upon a time", "max_tokens": 1500, "temperature": 0, "stream": True}
        request = asyncio.ensure_future(post(http, url + "/v1/completions", body))
        await asyncio.sleep(2.0)  # generating by now
        assert not request.done()
        await asyncio.to_thread(cut.set_up, False)
        resp = await asyncio.wait_for(request, 120)  # a hang guard: the probe acts within seconds
        assert resp.code == 200  # the stream had begun: it ends with the protocol's error event
        events = sse_data(resp.body)
        assert "error" in json.loads(events[-1]), events[-3:]
        assert len(events) < 1000  # cut short, not the whole answer
        await asyncio.to_thread(cut.set_up, True)
        assert await complete(http, url)  # a new engine, once the link is back
    finally:
        await asyncio.to_thread(cut.set_up, True)
        await server.stop(grace=1.0)
        for agent in agents:
            agent.stop()
