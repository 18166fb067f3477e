"""Shared fixtures: configs that use the fake engine, a running gateway, and the leak guard."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from fake_engine.configs import FAKE_ENGINE, FAKE_TOKENIZE, free_port, lua
from llmgw.config import Config, ConfigLoader
from llmgw.demo import DemoUnavailable, RealEngine, real_engine
from llmgw.server import GatewayServer

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class FakeModel:
    """A model whose variants are fake engines; ``events`` records what the engines saw."""

    name: str
    contexts: list[int]
    port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    events: Path | None = None
    tokenization: bool = False
    model_extra: dict[str, Any] = field(default_factory=dict)
    variant_extra: dict[int, dict[str, Any]] = field(default_factory=dict)  # context -> "args" to add, other keys

    def variant(self, ctx: int) -> dict[str, Any]:
        args = [FAKE_ENGINE, "--host", "127.0.0.1", "--port", str(self.port), "-c", str(ctx), "-m", self.name]
        if self.events is not None:
            args += ["--fake-events", str(self.events)]
        extra = dict(self.variant_extra.get(ctx, {}))
        args += self.extra_args + list(extra.pop("args", []))
        return {"binary": sys.executable, "args": args, "context": ctx, **extra}

    def table(self) -> dict[str, Any]:
        variants = [self.variant(ctx) for ctx in self.contexts]
        table: dict[str, Any] = {
            "name": self.name,
            "engine": "llama.cpp",
            "connect": f"http://127.0.0.1:{self.port}",
            "variants": variants,
            **self.model_extra,
        }
        if self.tokenization:
            table["tokenization"] = {
                "binary": sys.executable,
                "base_args": [FAKE_TOKENIZE],
                "extra_args": ["-m", self.name],
                "extra_tokens_per_message": 2,
                "extra_tokens": 2,
            }
        return table

    def read_events(self) -> list[dict[str, Any]]:
        assert self.events is not None
        if not self.events.exists():
            return []
        return [json.loads(line) for line in self.events.read_text().splitlines() if line.strip()]


def write_config(path: Path, models: list[FakeModel], port: int, **server: Any) -> Config:
    server_table = {
        "listen_v4": f"127.0.0.1:{port}",
        "listen_v6": "none",
        "health_check_timeout": 2,
        "engine_startup_timeout": 20,
        "engine_idle_timeout": 0,
        "engine_stop_timeout": 5,
        "state_dir": str(path.parent / "state"),
        # The fake engine records a graceful exit ("exit" event), which the lifecycle tests read;
        # the default (idle engines killed at once) has tests of its own (test_engine_manager.py).
        "graceful_stop": True,
        **server,
    }
    text = f"server = {lua(server_table)}\nmodels = {lua([m.table() for m in models])}\n"
    path.write_text(text)
    return ConfigLoader(str(path)).load()


@pytest.fixture
def make_model(tmp_path: Path) -> Callable[..., FakeModel]:
    counter = iter(range(1000))

    def make(name: str, contexts: list[int], **kwargs: Any) -> FakeModel:
        return FakeModel(name, contexts, events=tmp_path / f"events-{name}-{next(counter)}.jsonl", **kwargs)

    return make


@dataclass
class Gateway:
    server: GatewayServer
    port: int
    config: Config

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def start_gateway(io_loop: Any, tmp_path: Path) -> Iterator[Callable[..., Awaitable[Gateway]]]:
    """``await start_gateway(models)`` in a test; stopped (engine included) at teardown."""
    started: list[GatewayServer] = []

    async def start(models: list[FakeModel], port: int | None = None, **server: Any) -> Gateway:
        """``port``: where it listens (a free one if None). A second gateway in one test gets a
        config file of its own (and the same state directory, unless ``state_dir`` says otherwise)."""
        port = port or free_port()
        name = f"config-{len(started) + 1}" if started else "config"
        config = write_config(tmp_path / f"{name}.lua", models, port, **server)
        gateway = GatewayServer(config)
        started.append(gateway)
        await gateway.start()
        return Gateway(gateway, port, config)

    yield start
    for gateway in started:
        io_loop.run_sync(lambda g=gateway: g.stop(grace=1.0), timeout=30)


def _leftovers() -> list[psutil.Process]:
    me = psutil.Process()
    found = []
    for child in me.children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture(autouse=True)
def no_engine_left_behind() -> Iterator[None]:
    """Every test must stop every process it started."""
    yield
    deadline = time.monotonic() + 5.0
    leftovers = _leftovers()
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.05)
        leftovers = _leftovers()
    if leftovers:
        described = [f"{p.pid}: {' '.join(p.cmdline()[:4])}" for p in leftovers]
        for proc in leftovers:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
        pytest.fail(f"processes outlived the test: {described}")


@pytest.fixture(scope="session")
def engine_files() -> RealEngine:
    try:
        return real_engine()
    except DemoUnavailable as exc:
        if os.environ.get("LLMGW_REQUIRE_REAL_ENGINE"):
            raise
        pytest.skip(str(exc))


def only_engine(running: dict[str, Any]) -> dict[str, Any] | None:
    """The one engine of a ``/running`` answer (at most one may run), or None when none does."""
    engines = running["engines"]
    assert len(engines) <= 1, engines
    return engines[0] if engines else None


def chat_body(model: str, words: int = 3, **extra: Any) -> dict[str, Any]:
    """A chat request whose prompt is ``words`` words (see fake_engine's counting rule)."""
    content = " ".join(f"w{i}" for i in range(words))
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def get_json(url: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST ``body``) with urllib, for tests that run the gateway as a subprocess."""
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as response:
        return json.loads(response.read())


def wait_gateway_ready(url: str, proc: subprocess.Popen[Any]) -> None:
    for _ in range(200):  # up to ~20 s
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            get_json(url + "/health")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError("gateway did not come up")


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a plain condition from an async test (bounded: a hang guard, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_until(condition: Callable[[], Awaitable[Any]], what: str, timeout: float = 10.0) -> None:
    """Poll an async condition (bounded: a hang guard, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def events_of(model: FakeModel, kind: str) -> list[dict[str, Any]]:
    return [e for e in model.read_events() if e["event"] == kind]


# ----------------------------------------------------------------------------- HTTP to a gateway


@pytest.fixture
def http() -> Any:
    client = AsyncHTTPClient(force_instance=True, max_clients=50)
    yield client
    client.close()


async def get(http: AsyncHTTPClient, url: str, **kwargs: Any) -> HTTPResponse:
    return await http.fetch(url, raise_error=False, request_timeout=60, **kwargs)


async def post(http: AsyncHTTPClient, url: str, payload: Any, headers: dict[str, str] | None = None) -> HTTPResponse:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return await http.fetch(
        url,
        method="POST",
        body=body,
        headers={"Content-Type": "application/json", **(headers or {})},
        raise_error=False,
        request_timeout=60,
    )


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text
    assert 'File "' not in text


def assert_error(resp: HTTPResponse, status: int, code: str | None = None) -> dict[str, Any]:
    """The gateway's own errors: ``{"error": {"message", "type", "code"}}``, JSON, no traceback."""
    text = resp.body.decode()
    assert resp.code == status, (resp.code, text)
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
    data = json.loads(text)
    assert list(data) == ["error"], data
    error = data["error"]
    context = {"n_prompt_tokens", "n_ctx"} if error.get("type") == "exceed_context_size_error" else set()
    assert set(error) == {"message", "type", "code"} | context, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    if code is not None:
        assert error["code"] == code, error
    assert_no_traceback(text)
    return error


def sse_data(body: bytes) -> list[str]:
    """The ``data:`` payloads of a server-sent event stream, in order."""
    events = []
    for block in body.decode().replace("\r\n", "\n").split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data:"):
                events.append(line[5:].strip())
    return events


async def running(http: AsyncHTTPClient, gw: Gateway) -> dict[str, Any]:
    resp = await get(http, gw.url + "/running")
    assert resp.code == 200, resp.body
    return dict(json.loads(resp.body))


async def ensure_engine(manager: Any, model: Any, min_ctx: int = 0) -> Any:
    """Make sure a fitting engine runs (a preload), without keeping it leased; its client."""
    async with manager.lease(model, min_ctx) as engine:
        return engine.client
