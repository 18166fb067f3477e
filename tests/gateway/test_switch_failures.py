"""A failing engine start is not retried once per queued request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import FakeModel, free_port, write_config
from llmgw.errors import EngineStartTimeout
from llmgw.runtime import ProcessRuntime
from llmgw.scheduling import EngineManager
from llmgw.upstream import EngineHTTPClient


async def test_queued_requests_for_a_failing_engine_share_its_error(
    tmp_path: Path, make_model: Callable[..., FakeModel]
) -> None:
    model = make_model("broken", [1024], extra_args=["--fake-never-healthy"])
    config = write_config(tmp_path / "c.lua", [model], free_port(), engine_startup_timeout=1.0)
    http = EngineHTTPClient.create()
    manager = EngineManager(config, ProcessRuntime(http))
    model_config = config.model("broken")
    assert model_config is not None

    async def attempt() -> BaseException | None:
        try:
            async with manager.lease(model_config):
                return None
        except EngineStartTimeout as exc:
            return exc

    def starts() -> int:
        return len([e for e in model.read_events() if e["event"] == "start"])

    try:
        results = await asyncio.wait_for(asyncio.gather(*(attempt() for _ in range(4))), 30)
        assert all(isinstance(r, EngineStartTimeout) for r in results), results
        assert starts() == 1, "the broken engine was started once per queued request"

        # A later request to the same manager tries again: the failure is not sticky.
        with pytest.raises(EngineStartTimeout):
            async with manager.lease(model_config):
                pass
        assert starts() == 2
    finally:
        await manager.shutdown()
        http.close()
