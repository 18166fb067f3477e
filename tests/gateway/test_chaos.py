"""Bounded chaos under load: mixed traffic on every route and several resident engines, while
engines are SIGKILLed, SIGSTOPped and SIGCONTed, models are loaded and unloaded in storms, and
the config is reloaded (unchanged, and changed).

Run by the tox env ``chaos`` (marker ``chaos``); LLMGW_CHAOS_SECONDS changes the length. Checks:
no request hangs past its bound or is lost without an answer (a complete answer, a clean 5xx or
an error event ending its stream); no lease is left; never two engines on one port; no engine
outlives the gateway (the suite's leak check); fds, tasks and RSS come back to their baselines.
Reloads call the same code SIGHUP runs (load the file in a thread, then GatewayServer.reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
import pytest
from traffic import Traffic, assert_no_growth, snapshot

from conftest import FakeModel, Gateway, get, post, write_config
from llmgw.config import ConfigLoader

SECONDS = float(os.environ.get("LLMGW_CHAOS_SECONDS", "120"))
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(seconds=SECONDS + 180)]

CLIENTS = 6


def _engine_ports() -> list[tuple[int, int]]:
    """(port, pid) of every live fake engine under this process."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            args = child.cmdline()
            if any(a.endswith("fake_llama_server.py") for a in args) and "--port" in args:
                found.append((int(args[args.index("--port") + 1]), child.pid))
    return found


async def test_chaos(
    start_gateway: Callable[..., Awaitable[Gateway]], make_model: Callable[..., FakeModel], tmp_path: Path
) -> None:
    slow = ["--embeddings", "--fake-token-delay", "0.003", "-np", "2"]
    models = [
        make_model("alpha", [512, 2048], extra_args=slow),
        make_model("beta", [2048], extra_args=slow),
        make_model("gamma", [2048], extra_args=slow),
    ]
    settings = {
        "max_engines": 2,
        "queue_timeout": 30,
        "health_check_timeout": 1,
        "stream_idle_timeout": 5,
        "engine_stop_timeout": 2,
    }
    gw = await start_gateway(models, **settings)
    config_path = tmp_path / "config.lua"
    rng = random.Random(7)
    traffic = Traffic(gw.url, gw.port, [m.name for m in models], rng, CLIENTS)
    violations: list[str] = []
    actions: list[str] = []
    stopped: set[int] = set()

    async def clients(until: float) -> None:
        async def loop() -> None:
            for _ in range(100_000):  # bounded; the clock ends it long before
                if time.monotonic() >= until:
                    return
                await asyncio.wait_for(traffic.one(), 120)  # a hung request fails the test

        await asyncio.gather(*(loop() for _ in range(CLIENTS)))

    async def engines() -> list[dict[str, object]]:
        resp = await get(traffic.http, gw.url + "/running")
        return list(json.loads(resp.body)["engines"])

    async def cont_later(pid: int, after: float) -> None:
        await asyncio.sleep(after)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        stopped.discard(pid)

    async def reload(change: bool) -> None:
        if change:
            victim = rng.choice(models)
            victim.extra_args = [*slow, "--fake-tokens", str(rng.randint(5, 12))]
        write_config(config_path, models, gw.port, **settings)
        config = await asyncio.to_thread(ConfigLoader(str(config_path)).load)  # what SIGHUP does
        await gw.server.reload(config)

    async def chaos(until: float) -> None:
        background: set[asyncio.Task[None]] = set()
        kinds = ["kill", "stop", "load", "unload", "unload_all", "reload", "reload_changed"]
        plan: list[str] = []
        for _ in range(100_000):
            if time.monotonic() >= until:
                break
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            ports = [port for port, _ in _engine_ports()]
            if len(ports) != len(set(ports)):
                violations.append(f"two engines on one port: {sorted(ports)}")
            if not plan:  # every kind once per round, in a random order
                plan = rng.sample(kinds, len(kinds))
            action = plan.pop()
            actions.append(action)
            ready = [e for e in await engines() if e["state"] == "ready" and e["pid"]]
            if action == "kill" and ready:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(rng.choice(ready)["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
            elif action == "stop" and ready:
                pid = int(rng.choice(ready)["pid"])  # type: ignore[call-overload]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.add(pid)
                    task = asyncio.ensure_future(cont_later(pid, rng.uniform(0.5, 4.0)))
                    background.add(task)
                    task.add_done_callback(background.discard)
            elif action == "load":
                task = asyncio.ensure_future(post(traffic.http, gw.url + "/load", {"model": rng.choice(models).name}))
                background.add(task)  # type: ignore[arg-type]
                task.add_done_callback(background.discard)  # type: ignore[arg-type]
            elif action in ("unload", "unload_all"):
                body = {"model": rng.choice(models).name} if action == "unload" else {}
                task = asyncio.ensure_future(post(traffic.http, gw.url + "/unload", body))
                background.add(task)  # type: ignore[arg-type]
                task.add_done_callback(background.discard)  # type: ignore[arg-type]
            else:
                await reload(change=action == "reload_changed")
        await asyncio.wait_for(asyncio.gather(*background, return_exceptions=True), 120)

    async def quiet() -> None:
        for _ in range(600):  # let aborted requests unwind (bounded)
            if gw.server.services.manager.in_flight == 0 and gw.server.services.manager.queued == 0:
                break
            await asyncio.sleep(0.05)
        assert (await post(traffic.http, gw.url + "/unload", {})).code == 200
        await asyncio.sleep(1.0)

    try:
        await clients(time.monotonic() + 5)  # warm-up
        await quiet()
        before = snapshot()
        until = time.monotonic() + SECONDS
        await asyncio.gather(clients(until), chaos(until))
        for pid in list(stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        await quiet()
        after = snapshot()
        # The gateway still serves every model after all that.
        for model in models:
            resp = await post(traffic.http, gw.url + "/v1/chat/completions", {"model": model.name, "messages": [
                {"role": "user", "content": "still there?"}]})  # fmt: skip
            assert resp.code == 200, resp.body
    finally:
        for pid in list(stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        traffic.close()
    print(f"chaos: {dict(traffic.outcomes)}; actions {dict((a, actions.count(a)) for a in set(actions))}; "
          f"before {before}; after {after}")  # fmt: skip
    assert not traffic.bad(), traffic.bad()
    assert not violations, violations
    assert traffic.outcomes["ok"] > 50, traffic.outcomes
    assert len(set(actions)) == 7, actions  # every kind of chaos happened
    assert gw.server.services.manager.in_flight == 0 and gw.server.services.manager.queued == 0
    assert_no_growth(before, after)
