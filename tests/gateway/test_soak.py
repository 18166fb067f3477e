"""Bounded soak: mixed traffic on every route, three models on two engine places (placement,
eviction, variant switches), and disconnects, for ~2 minutes.

Run by the tox env ``soak`` (marker ``soak``); LLMGW_SOAK_SECONDS changes the length.
Checks: no lost or hung request, and no growth of file descriptors, tasks or memory
beyond stated bounds once traffic stops.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable

import pytest
from traffic import Traffic, assert_no_growth, snapshot

from conftest import FakeModel, Gateway

SECONDS = float(os.environ.get("LLMGW_SOAK_SECONDS", "120"))
pytestmark = [pytest.mark.soak, pytest.mark.timeout(seconds=SECONDS + 120)]  # pytest-tornasync's hang guard

CLIENTS = 6


async def test_soak(start_gateway: Callable[..., Awaitable[Gateway]], make_model: Callable[..., FakeModel]) -> None:
    fast = ["--embeddings", "--fake-token-delay", "0.002", "-np", "4"]
    models = [
        make_model("alpha", [256, 2048], extra_args=fast),
        make_model("beta", [512], extra_args=fast),
        make_model("gamma", [2048], extra_args=fast),
    ]
    # -np 4 divides each context by 4: the gateway learns that from /props. Two engines fit at
    # once, so traffic to three models keeps placing, evicting and switching variants.
    gateway = await start_gateway(models, queue_timeout=60, max_engines=2)
    traffic = Traffic(gateway.url, gateway.port, ["alpha", "alpha", "beta", "gamma"], random.Random(42), CLIENTS)

    async def client_loop(until: float) -> None:
        for _ in range(100_000):  # bounded; the clock ends it long before
            if time.monotonic() >= until:
                return
            await asyncio.wait_for(traffic.one(), 90)  # a hung request fails the soak

    try:
        await asyncio.gather(*(client_loop(time.monotonic() + 5) for _ in range(CLIENTS)))  # warm-up
        await asyncio.sleep(1.0)
        before = snapshot()
        await asyncio.gather(*(client_loop(time.monotonic() + SECONDS) for _ in range(CLIENTS)))
        for _ in range(100):  # let aborted requests unwind
            if gateway.server.services.manager.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        after = snapshot()
    finally:
        traffic.close()
    outcomes = traffic.outcomes
    assert not traffic.bad(), traffic.bad()
    # Nothing misbehaves here: every answer is complete (or a prompt too large for beta).
    assert set(outcomes) <= {"ok", "too_large", "disconnected"}, outcomes  # no error event either
    assert outcomes["ok"] > 50 and outcomes["disconnected"] > 5, outcomes
    assert gateway.server.services.manager.in_flight == 0 and gateway.server.services.manager.queued == 0
    starts = sum(
        s.value
        for m in gateway.server.services.metrics.engine_starts.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )
    assert starts > 3  # models really alternated
    assert_no_growth(before, after)
    print(f"soak: {dict(outcomes)}; before {before}; after {after}")
