"""LlamaCppClient against the fake llama-server: exact counting, its fallback, health, context."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from conftest import FAKE_ENGINE, chat_body, free_port
from fake_engine.fake_llama_tokenize import count_prompt_tokens, render_template, tokenize
from llmgw.api.endpoints import CHAT
from llmgw.errors import BadRequest, EngineAnswered, TokenCountError
from llmgw.upstream.http import EngineHTTPClient
from llmgw.upstream.llamacpp import LlamaCppClient

HANG = 10.0
RESERVE = 77

TOOLS_BODY: dict[str, Any] = {
    "model": "m",
    "messages": [
        {"role": "system", "content": "answer with a tool call"},
        {"role": "user", "content": [{"type": "text", "text": "weather in Paris please"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny 21 C"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "current weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
}


def health_status(port: int) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status
        finally:
            conn.close()
    except OSError:
        return None


@pytest.fixture
def fake_server() -> Iterator[Callable[..., str]]:
    """``fake_server(*args, status=200)`` starts a fake llama-server, waits until /health answers
    ``status``, and returns its base URL; every server is killed (process group) at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, status: int = 200) -> str:
        port = free_port()
        argv = [sys.executable, FAKE_ENGINE, "--host", "127.0.0.1", "--port", str(port), "-m", "m", *args]
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        procs.append(proc)
        deadline = time.monotonic() + HANG
        while health_status(port) != status:
            assert proc.poll() is None, f"fake engine exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"fake engine never answered /health {status}"
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=HANG)


@pytest.fixture
def http_client(io_loop: Any) -> Iterator[EngineHTTPClient]:
    client = EngineHTTPClient.create()
    yield client
    client.close()


def unreachable_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# ----------------------------------------------------------------------------- counting


async def test_count_is_exact_and_the_chat_budget_is_its_fields_or_the_reserve(
    io_loop: Any, fake_server: Callable[..., str], http_client: EngineHTTPClient
) -> None:
    engine = LlamaCppClient(fake_server(), http_client)
    for words in (1, 5, 40):
        assert await engine.count_prompt_tokens(chat_body("m", words)) == words + 3
    assert CHAT.budget(chat_body("m", 5, max_tokens=100), RESERVE) == 100
    assert CHAT.budget(chat_body("m", 5), RESERVE) == RESERVE
    cases: list[tuple[dict[str, Any], int]] = [
        ({"max_completion_tokens": 10, "max_tokens": 100}, 10),  # the newer name wins
        ({"max_completion_tokens": None, "max_tokens": 100}, 100),
        ({"max_tokens": 0}, 0),
        ({"max_tokens": -1}, RESERVE),  # llama.cpp's "until the context is full"
        ({"max_tokens": None}, RESERVE),
        ({"n_predict": 5}, 5),
    ]
    for extra, budget in cases:
        assert CHAT.budget(chat_body("m", 5, **extra), RESERVE) == budget, extra


async def test_tools_and_parts_count_as_the_engine_counts(
    io_loop: Any, fake_server: Callable[..., str], http_client: EngineHTTPClient
) -> None:
    engine = LlamaCppClient(fake_server(), http_client)
    without_tools = {k: v for k, v in TOOLS_BODY.items() if k != "tools"}
    with_tools = await engine.count_prompt_tokens(TOOLS_BODY)
    assert with_tools == count_prompt_tokens(TOOLS_BODY)
    assert await engine.count_prompt_tokens(without_tools) == count_prompt_tokens(without_tools)
    assert with_tools > count_prompt_tokens(without_tools)  # the tools are counted, not dropped


async def test_apply_template_fallback_gives_the_same_count(
    io_loop: Any, fake_server: Callable[..., str], http_client: EngineHTTPClient
) -> None:
    url = fake_server()
    exact = LlamaCppClient(url, http_client)
    fallback = LlamaCppClient(url, http_client)
    fallback._has_input_tokens = False
    for body in (chat_body("m", 1), chat_body("m", 17), TOOLS_BODY):
        assert await fallback.count_prompt_tokens(body) == await exact.count_prompt_tokens(body)
        assert await fallback.count_prompt_tokens(body) == count_prompt_tokens(body)
    assert exact._has_input_tokens  # the flag is per engine


class _OldServer:
    """A llama-server without ``/v1/chat/completions/input_tokens`` (answers ``input_status``)."""

    def __init__(self, input_status: int = 404) -> None:
        self.hits: dict[str, int] = {}
        self.input_status = input_status
        server = self

        class Handler(tornado.web.RequestHandler):
            def post(self) -> None:
                path = self.request.path
                server.hits[path] = server.hits.get(path, 0) + 1
                body = json.loads(self.request.body)
                self.set_header("Content-Type", "application/json")
                if path == "/apply-template":
                    self.finish({"prompt": render_template(body)})
                elif path == "/tokenize":
                    assert body["add_special"] is True
                    self.finish({"tokens": tokenize(body["content"], add_special=True)})
                else:
                    self.set_status(server.input_status)
                    message = "File Not Found" if server.input_status == 404 else "boom"
                    self.finish({"error": {"code": server.input_status, "message": message, "type": "x"}})

        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.http = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/.*", Handler)]))
        self.http.add_sockets(sockets)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.http.stop()


async def test_404_on_input_tokens_switches_to_fallback(io_loop: Any, http_client: EngineHTTPClient) -> None:
    server = _OldServer(404)
    try:
        engine = LlamaCppClient(server.url, http_client)
        assert await engine.count_prompt_tokens(chat_body("m", 6)) == 9
        assert await engine.count_prompt_tokens(TOOLS_BODY) == count_prompt_tokens(TOOLS_BODY)
        # Learned once: the missing endpoint is not asked again.
        assert server.hits == {"/v1/chat/completions/input_tokens": 1, "/apply-template": 2, "/tokenize": 2}
    finally:
        server.stop()


async def test_engine_errors_while_counting_are_relayed_not_guessed(
    io_loop: Any, http_client: EngineHTTPClient
) -> None:
    server = _OldServer(500)
    try:
        engine = LlamaCppClient(server.url, http_client)
        with pytest.raises(EngineAnswered) as info:
            await engine.count_prompt_tokens(chat_body("m", 3))
        assert info.value.status == 500 and info.value.message == "boom"
        assert json.loads(info.value.body) == {"error": {"code": 500, "message": "boom", "type": "x"}}
        assert engine._has_input_tokens  # a failure is not a missing endpoint
        assert "/apply-template" not in server.hits
    finally:
        server.stop()


async def test_engine_rejection_is_the_engines_own_answer(
    io_loop: Any, fake_server: Callable[..., str], http_client: EngineHTTPClient
) -> None:
    engine = LlamaCppClient(fake_server(), http_client)
    with pytest.raises(EngineAnswered) as info:
        await engine.count_prompt_tokens({"model": "m", "messages": "not a list"})
    assert "Expected 'messages' to be an array" in info.value.message  # llama-server's own message
    assert info.value.status == 400 and b"Expected 'messages' to be an array" in info.value.body


async def test_garbage_from_a_count_endpoint_is_a_failed_count(
    io_loop: Any, fake_server: Callable[..., str], http_client: EngineHTTPClient
) -> None:
    for mode in ("truncated", "content-type", "shape"):
        engine = LlamaCppClient(fake_server("--fake-count-garbage", mode), http_client)
        with pytest.raises(TokenCountError) as info:
            await engine.count_prompt_tokens(chat_body("m", 3))
        assert info.value.status == 502, mode
        with pytest.raises(TokenCountError):
            await engine.count_text("a b c")


async def test_unreachable_engine_raises_token_count_error(io_loop: Any, http_client: EngineHTTPClient) -> None:
    for has_input_tokens in (True, False):
        engine = LlamaCppClient(unreachable_url(), http_client)
        engine._has_input_tokens = has_input_tokens
        with pytest.raises(TokenCountError) as info:
            await engine.count_prompt_tokens(chat_body("m", 3, max_tokens=10))
        assert "unreachable" in info.value.message
        assert info.value.status == 502


def test_bad_max_tokens_is_bad_request() -> None:
    bad: list[dict[str, Any]] = [
        {"max_tokens": -5},
        {"max_tokens": "10"},
        {"max_tokens": True},
        {"max_tokens": 1.5},
        {"max_completion_tokens": -2, "max_tokens": 10},
        {"n_predict": [3]},
    ]
    for extra in bad:
        with pytest.raises(BadRequest) as info:
            CHAT.budget(chat_body("m", 3, **extra), RESERVE)
        assert info.value.status == 400
        assert next(iter(extra)) in info.value.message


# ----------------------------------------------------------------------------- health, context, forwarding


async def test_check_health(io_loop: Any, fake_server: Callable[..., str], http_client: EngineHTTPClient) -> None:
    healthy = LlamaCppClient(fake_server(), http_client)
    loading = LlamaCppClient(fake_server("--fake-never-healthy", status=503), http_client)
    assert await healthy.check_health(2.0) is True
    assert await loading.check_health(2.0) is False
    assert await LlamaCppClient(unreachable_url(), http_client).check_health(2.0) is False


async def test_check_health_does_not_hang_on_a_silent_engine(io_loop: Any, http_client: EngineHTTPClient) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        assert await asyncio.wait_for(LlamaCppClient(url, http_client).check_health(0.3), HANG) is False


async def test_context_size_reads_props(
    io_loop: Any, fake_server: Callable[..., str], http_client: EngineHTTPClient
) -> None:
    assert await LlamaCppClient(fake_server("-c", "3000"), http_client).context_size() == 3000
    assert await LlamaCppClient(fake_server("-c", "4096", "-np", "2"), http_client).context_size() == 2048
    loading = LlamaCppClient(fake_server("--fake-never-healthy", status=503), http_client)
    assert await loading.context_size() is None
    assert await LlamaCppClient(unreachable_url(), http_client).context_size() is None


async def test_forward_request(io_loop: Any, fake_server: Callable[..., str], http_client: EngineHTTPClient) -> None:
    engine = LlamaCppClient(fake_server(), http_client)
    body = json.dumps(chat_body("m", 4, max_tokens=3)).encode()
    call = engine.forward_request("/v1/chat/completions", body, {"Content-Type": "application/json"})
    status, _ = await call.head()
    reply = json.loads(await call.read_body())
    assert status == 200
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert reply["usage"] == {**usage, "prompt_tokens_details": {"cached_tokens": 0}}  # llama-server's usage
