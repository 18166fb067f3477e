"""Bounded soak: mixed traffic, random model switches and disconnects, for ~2 minutes.

Run by the tox env ``soak`` (marker ``soak``); LLMGW_SOAK_SECONDS changes the length.
Checks: no lost or hung request, and no growth of file descriptors, tasks or memory
beyond stated bounds once traffic stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import psutil
import pytest
from tornado.httpclient import AsyncHTTPClient

from conftest import FakeModel, Gateway, chat_body

SECONDS = float(os.environ.get("LLMGW_SOAK_SECONDS", "120"))
pytestmark = [pytest.mark.soak, pytest.mark.timeout(seconds=SECONDS + 120)]  # pytest-tornasync's hang guard

CLIENTS = 6
# Bounds once traffic has stopped, relative to the state after warm-up.
MAX_FD_GROWTH = 16
MAX_TASK_GROWTH = 8
MAX_RSS_GROWTH = 64 * 1024 * 1024


def _snapshot() -> dict[str, int]:
    gc.collect()
    proc = psutil.Process()
    return {"fds": proc.num_fds(), "tasks": len(asyncio.all_tasks()), "rss": proc.memory_info().rss}


async def test_soak(start_gateway: Callable[..., Awaitable[Gateway]], make_model: Callable[..., FakeModel]) -> None:
    models = [
        make_model("alpha", [256, 2048], extra_args=["--fake-token-delay", "0.002", "-np", "4"]),
        make_model("beta", [512], extra_args=["--fake-token-delay", "0.002", "-np", "4"]),
    ]
    # -np 4 divides each context by 4: the gateway learns that from /props.
    gateway = await start_gateway(models, queue_timeout=60)
    rng = random.Random(42)
    outcomes: Counter[str] = Counter()
    http = AsyncHTTPClient(force_instance=True, max_clients=CLIENTS * 2)

    async def one_request() -> None:
        model = rng.choice(["alpha", "alpha", "beta"])
        words = rng.choice([5, 20, 300])  # 300 words need alpha's big variant
        stream = rng.random() < 0.6
        body = chat_body(model, words, max_tokens=rng.randint(1, 40), stream=stream)
        if model == "beta" and words == 300:
            body["max_tokens"] = 1
        if rng.random() < 0.15:
            await disconnect_early(json.dumps(body).encode())
            outcomes["disconnected"] += 1
            return
        response = await http.fetch(gateway.url + "/v1/chat/completions", method="POST", body=json.dumps(body),
                                    raise_error=False, request_timeout=60)
        if response.code == 200 and (not stream or response.body.rstrip().endswith(b"data: [DONE]")):
            outcomes["ok"] += 1
        elif response.code == 400 and b"context_length_exceeded" in response.body:
            outcomes["too_large"] += 1
        else:
            outcomes[f"bad {response.code} {response.body[:120]!r}"] += 1

    async def disconnect_early(body: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.read(rng.choice([1, 300])), rng.choice([0.001, 0.05, 0.3]))
        writer.close()

    async def client_loop(until: float) -> None:
        for _ in range(100_000):  # bounded; the clock ends it long before
            if time.monotonic() >= until:
                return
            await asyncio.wait_for(one_request(), 90)  # a hung request fails the soak

    try:
        await asyncio.gather(*(client_loop(time.monotonic() + 5) for _ in range(CLIENTS)))  # warm-up
        await asyncio.sleep(1.0)
        before = _snapshot()
        await asyncio.gather(*(client_loop(time.monotonic() + SECONDS) for _ in range(CLIENTS)))
        for _ in range(100):  # let aborted requests unwind
            if gateway.server.manager.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        after = _snapshot()
    finally:
        http.close()
    bad = {k: v for k, v in outcomes.items() if k.startswith("bad")}
    assert not bad, bad
    assert outcomes["ok"] > 50 and outcomes["disconnected"] > 5, outcomes
    assert gateway.server.manager.in_flight == 0 and gateway.server.manager.queued == 0
    starts = sum(s.value for m in gateway.server.metrics.engine_starts.collect() for s in m.samples
                 if s.name.endswith("_total"))
    assert starts > 3  # models really alternated
    assert after["fds"] - before["fds"] <= MAX_FD_GROWTH, (before, after)
    assert after["tasks"] - before["tasks"] <= MAX_TASK_GROWTH, (before, after)
    assert after["rss"] - before["rss"] <= MAX_RSS_GROWTH, (before, after)
    print(f"soak: {dict(outcomes)}; before {before}; after {after}")
