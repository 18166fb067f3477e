"""Tests of the fake llama-server and llama-tokenize used as engine binaries by the other tests."""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from fake_engine.fake_llama_server import count_prompt_tokens, render_template
from fake_engine.fake_llama_tokenize import tokenize

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "fake_engine" / "fake_llama_server.py"
TOKENIZE = REPO / "fake_engine" / "fake_llama_tokenize.py"
TIMEOUT = 10.0

USER_ABC: dict[str, Any] = {"messages": [{"role": "user", "content": "a b c"}]}
TOOLS_BODY: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "x y"}, {"type": "image_url"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
}


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def pid_gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Fake:
    proc: subprocess.Popen[bytes]
    port: int
    tmp: Path

    @property
    def events_path(self) -> Path:
        return self.tmp / "events.jsonl"

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines()
        events = [json.loads(line) for line in lines]
        return [e for e in events if name is None or e["event"] == name]

    def stderr(self) -> str:
        return (self.tmp / "stderr.txt").read_text()

    def stdout(self) -> str:
        return (self.tmp / "stdout.txt").read_text()

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return Response(resp.status, dict(resp.getheaders()), resp.read())
        finally:
            conn.close()

    def try_health(self) -> int | None:
        try:
            return self.request("GET", "/health").status
        except OSError:
            return None

    def wait_healthy(self) -> None:
        def healthy() -> bool:
            assert self.proc.poll() is None, f"fake exited early: {self.stderr()}"
            return self.try_health() == 200

        wait_until(healthy, what="/health 200")

    def open_raw(self, path: str, body: Any) -> socket.socket:
        """Send a POST on a raw socket (to read a partial answer or hang up at will)."""
        data = json.dumps(body).encode()
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
        return sock


def data_lines(raw: bytes) -> list[str]:
    """The payloads of the ``data:`` lines of a (possibly chunk-framed) event stream."""
    lines = raw.decode().splitlines()
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def read_until(sock: socket.socket, predicate: Callable[[bytes], bool]) -> bytes:
    """Read until ``predicate(received)`` or EOF, bounded by the socket timeout."""
    received = b""
    while not predicate(received):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def content_chunks(lines: list[str]) -> list[str]:
    contents = []
    for line in lines:
        if line == "[DONE]":
            continue
        for choice in json.loads(line)["choices"]:
            if choice["delta"].get("content"):
                contents.append(choice["delta"]["content"])
    return contents


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Fake]]:
    """Start fake servers (own session, output to files); kill their process groups at the end."""
    fakes: list[Fake] = []

    def start(*args: str, port: int | None = None, wait: bool = True) -> Fake:
        tmp = tmp_path / f"fake{len(fakes)}"
        tmp.mkdir()
        port = free_port() if port is None else port
        argv = [sys.executable, str(SERVER), "--port", str(port), "-m", "/models/fake.gguf"]
        argv += ["--fake-events", str(tmp / "events.jsonl"), *args]
        with open(tmp / "stdout.txt", "wb") as out, open(tmp / "stderr.txt", "wb") as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, start_new_session=True)
        fake = Fake(proc, port, tmp)
        fakes.append(fake)
        if wait:
            fake.wait_healthy()
        return fake

    yield start
    for fake in fakes:
        with contextlib.suppress(ProcessLookupError):  # already dead and reaped
            os.killpg(fake.proc.pid, signal.SIGKILL)
        fake.proc.wait(timeout=TIMEOUT)
        for pid in [fake.proc.pid, *(e["pid"] for e in fake.events("child"))]:
            wait_until(functools.partial(pid_gone, pid), what=f"pid {pid} to be gone")


# ----------------------------------------------------------------------------- tokenization


def test_tokenization_rule() -> None:
    assert tokenize("a  b\nc") == [zlib.crc32(p.encode()) % 32000 + 10 for p in "abc"]
    assert tokenize("a", add_special=True)[0] == 2
    assert render_template(USER_ABC) == "<|user|>\na b c\n<|assistant|>\n"
    assert count_prompt_tokens(USER_ABC) == 6


def test_template_with_parts_tool_calls_and_tools() -> None:
    prompt = render_template(TOOLS_BODY)
    calls = json.dumps(TOOLS_BODY["messages"][2]["tool_calls"])
    assert prompt.startswith("<|system|>\nbe brief\n<|user|>\nx y\n")
    assert f"<|assistant|>\n{calls}\n<|tool|>\n42\n" in prompt
    assert prompt.endswith(f"<|tools|>\n{json.dumps(TOOLS_BODY['tools'])}\n<|assistant|>\n")
    assert count_prompt_tokens(TOOLS_BODY) == len(prompt.split()) + 1


def test_tokenize_script() -> None:
    argv = [sys.executable, str(TOKENIZE), "--log-disable", "--stdin", "--ids", "-m", "/m.gguf"]
    done = subprocess.run(argv, input="hello  world\n", capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0
    assert done.stdout.strip() == str(tokenize("hello world", add_special=True))
    failed = subprocess.run([*argv, "--fake-fail"], input="x", capture_output=True, text=True, timeout=TIMEOUT)
    assert failed.returncode == 1
    assert "error" in failed.stderr


# ----------------------------------------------------------------------------- startup and health


def test_loading_then_healthy(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-load-delay", "0.6", wait=False)
    wait_until(lambda: fake.try_health() is not None, what="listening")
    loading = fake.request("GET", "/health")
    assert loading.status == 503
    assert loading.json() == {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
    assert fake.request("GET", "/props").status == 503
    assert "starting the main loop" not in fake.stderr()
    fake.wait_healthy()
    assert fake.request("GET", "/health").json() == {"status": "ok"}
    assert f"server is listening on http://127.0.0.1:{fake.port} - starting the main loop" in fake.stderr()
    assert "build: fake" in fake.stdout()
    [start] = fake.events("start")
    assert start["pid"] == fake.proc.pid and start["port"] == fake.port and start["n_ctx"] == 4096


def test_never_healthy(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-never-healthy", wait=False)
    wait_until(lambda: fake.try_health() is not None, what="listening")
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        assert fake.try_health() == 503
        time.sleep(0.05)


def test_exit_at_startup() -> None:
    argv = [sys.executable, str(SERVER), "--port", str(free_port()), "--fake-exit-at-startup", "7"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 7
    assert "error: fake startup failure" in done.stderr
    assert "build: fake" in done.stdout


def test_port_in_use(spawn: Callable[..., Fake]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        fake = spawn(port=port, wait=False)
        assert fake.proc.wait(timeout=TIMEOUT) == 1
    assert "error" in fake.stderr() and str(port) in fake.stderr()


def test_parallel_divides_context_and_unknown_flags_are_ignored(spawn: Callable[..., Fake]) -> None:
    fake = spawn("-c", "1000", "-np", "4", "-ctk", "q8_0", "-mg", "0", "--flash-attn", "on", "--jinja")
    props = fake.request("GET", "/props").json()
    assert props["default_generation_settings"]["n_ctx"] == 250
    assert props["total_slots"] == 4
    assert props["model_path"] == "/models/fake.gguf"
    slots = fake.request("GET", "/slots").json()
    assert slots == [{"id": i, "n_ctx": 250, "speculative": False, "is_processing": False} for i in range(4)]
    models = fake.request("GET", "/v1/models").json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == "/models/fake.gguf"
    assert models["data"][0]["meta"]["n_ctx_train"] == 131072


# ----------------------------------------------------------------------------- endpoints


def test_template_endpoints_agree_with_count(spawn: Callable[..., Fake]) -> None:
    fake = spawn()
    for body in (USER_ABC, TOOLS_BODY):
        prompt = fake.request("POST", "/apply-template", body).json()["prompt"]
        assert prompt == render_template(body)
        tokens = fake.request("POST", "/tokenize", {"content": prompt, "add_special": True}).json()
        assert len(tokens["tokens"]) == count_prompt_tokens(body)
        counted = fake.request("POST", "/v1/chat/completions/input_tokens", body).json()
        assert counted == {"input_tokens": count_prompt_tokens(body), "object": "response.input_tokens"}
    plain = fake.request("POST", "/tokenize", {"content": "a b"}).json()
    assert plain == {"tokens": tokenize("a b")}
    pieces = fake.request("POST", "/tokenize", {"content": "a b", "with_pieces": True}).json()
    assert pieces == {"tokens": [{"id": i, "piece": p} for i, p in zip(tokenize("a b"), "ab", strict=True)]}


def test_errors(spawn: Callable[..., Fake]) -> None:
    fake = spawn()
    bad = fake.request("POST", "/v1/chat/completions", raw=b"{bad")  # llama-server: 500, from its JSON parser
    assert bad.status == 500
    assert bad.json()["error"]["type"] == "server_error"
    assert bad.json()["error"]["message"].startswith("[json.exception.parse_error.101]")
    assert fake.request("POST", "/tokenize", raw=b"[1]").status == 400
    missing = fake.request("GET", "/nope")
    assert missing.status == 404
    assert missing.json() == {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}
    wrong = fake.request("DELETE", "/health")  # llama-server has no 405: an unknown route
    assert wrong.status == 404
    assert wrong.json()["error"]["code"] == 404


def test_non_stream_completion(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-tokens", "4")
    resp = fake.request("POST", "/v1/chat/completions", {**USER_ABC, "model": "m1"})
    assert resp.status == 200
    reply = resp.json()
    assert reply["object"] == "chat.completion"
    assert reply["model"] == "/models/fake.gguf"  # the -m path, whatever the request says
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": "tok0 tok1 tok2 tok3"}
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert reply["usage"] == {
        "prompt_tokens": 6,
        "completion_tokens": 4,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert reply["timings"]["prompt_n"] == 6 and reply["timings"]["predicted_n"] == 4
    [request] = fake.events("request")
    assert request["path"] == "/v1/chat/completions" and request["prompt_tokens"] == 6
    assert request["stream"] is False
    [done] = fake.events("done")
    assert (done["id"], done["tokens"]) == (reply["id"], 4)
    assert request["t"] <= done["t"]


def test_stream_completion(spawn: Callable[..., Fake]) -> None:
    fake = spawn()
    body = {**USER_ABC, "stream": True, "max_tokens": 3, "stream_options": {"include_usage": True}}
    resp = fake.request("POST", "/v1/chat/completions", body)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    text = resp.body.decode()
    assert text.endswith("data: [DONE]\n\n")
    events = [block.removeprefix("data: ") for block in text.split("\n\n") if block]
    assert all(block.startswith("data: ") for block in text.split("\n\n") if block)
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert content_chunks(events) == ["tok0", " tok1", " tok2"]
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 6,
        "completion_tokens": 3,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert chunks[-1]["timings"]["predicted_n"] == 3 and "timings" not in chunks[-2]
    assert [e["stream"] for e in fake.events("request")] == [True]
    assert [e["tokens"] for e in fake.events("done")] == [3]


def test_stream_without_usage(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-tokens", "2")
    resp = fake.request("POST", "/v1/chat/completions", {**USER_ABC, "stream": True})
    events = data_lines(resp.body)
    assert content_chunks(events) == ["tok0", " tok1"]
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in json.loads(events[-2])
    assert json.loads(events[-2])["timings"]["predicted_n"] == 2  # without include_usage, on the finish chunk


def test_max_tokens_and_context_room(spawn: Callable[..., Fake]) -> None:
    fake = spawn("-c", "12")  # prompt 6 tokens: room for 6
    capped = fake.request("POST", "/v1/chat/completions", {**USER_ABC, "max_tokens": 2}).json()
    assert capped["usage"]["completion_tokens"] == 2
    assert capped["choices"][0]["finish_reason"] == "length"
    newer = fake.request("POST", "/v1/chat/completions", {**USER_ABC, "max_completion_tokens": 1}).json()
    assert newer["usage"]["completion_tokens"] == 1
    room = fake.request("POST", "/v1/chat/completions", {**USER_ABC, "max_tokens": 100}).json()
    assert room["usage"]["completion_tokens"] == 6
    default = fake.request("POST", "/v1/chat/completions", USER_ABC).json()  # 8 wanted, 6 fit
    assert default["usage"]["completion_tokens"] == 6
    assert default["choices"][0]["finish_reason"] == "length"


def test_exceed_context_size(spawn: Callable[..., Fake]) -> None:
    fake = spawn("-c", "512")
    body = {"messages": [{"role": "user", "content": "hello " * 620}]}
    resp = fake.request("POST", "/v1/chat/completions", body)
    assert resp.status == 400
    assert resp.json() == {
        "error": {
            "code": 400,
            "message": "request (623 tokens) exceeds the available context size (512 tokens), try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 623,
            "n_ctx": 512,
        }
    }


def test_concurrent_requests(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-tokens", "5", "--fake-token-delay", "0.1", "-np", "2")
    results: list[int] = []

    def one() -> None:
        results.append(fake.request("POST", "/v1/chat/completions", USER_ABC).status)

    threads = [threading.Thread(target=one) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    wait_until(lambda: len(fake.events("request")) == 4, what="4 requests")
    busy = fake.request("GET", "/slots").json()
    assert [slot["is_processing"] for slot in busy] == [True, True]
    for thread in threads:
        thread.join(TIMEOUT)
    assert results == [200] * 4
    assert time.monotonic() - started < 1.5  # 4 x 0.5 s would be 2 s if serialized


# ----------------------------------------------------------------------------- disconnects and crashes


def test_disconnect_mid_stream(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-tokens", "200", "--fake-token-delay", "0.02")
    sock = fake.open_raw("/v1/chat/completions", {**USER_ABC, "stream": True})
    with sock:
        received = read_until(sock, lambda got: len(content_chunks(data_lines(got))) >= 3)
    assert len(content_chunks(data_lines(received))) >= 3
    wait_until(lambda: bool(fake.events("cancelled")), timeout=2, what="cancelled event")
    [cancelled] = fake.events("cancelled")
    assert 3 <= cancelled["tokens"] < 50
    assert cancelled["id"] == fake.events("request")[0]["id"]
    assert not fake.events("done")
    wait_until(lambda: "cancel_tasks: task cancelled" in fake.stderr(), what="cancel log")
    assert "Traceback" not in fake.stderr()
    assert fake.try_health() == 200


def test_disconnect_during_prompt_delay(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-prompt-delay", "30")
    sock = fake.open_raw("/v1/chat/completions", USER_ABC)
    wait_until(lambda: bool(fake.events("request")), what="request event")
    sock.close()
    wait_until(lambda: bool(fake.events("cancelled")), timeout=2, what="cancelled event")
    assert fake.events("cancelled")[0]["tokens"] == 0
    assert "Traceback" not in fake.stderr()


def test_exit_after_chunks(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-exit-after-chunks", "2", "--fake-token-delay", "0.01")
    with fake.open_raw("/v1/chat/completions", {**USER_ABC, "stream": True}) as sock:
        received = read_until(sock, lambda _: False)  # until the process dies
    lines = data_lines(received)
    assert content_chunks(lines) == ["tok0", " tok1"]
    assert "[DONE]" not in lines
    assert fake.proc.wait(timeout=TIMEOUT) == 3
    assert not fake.events("done") and not fake.events("exit")


# ----------------------------------------------------------------------------- signals and children


def test_sigterm_exits_after_shutdown_delay(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-shutdown-delay", "0.4")
    started = time.monotonic()
    fake.proc.send_signal(signal.SIGTERM)
    assert fake.proc.wait(timeout=TIMEOUT) == 0
    assert time.monotonic() - started >= 0.4
    assert [e["event"] for e in fake.events()] == ["start", "exit"]


def test_sigterm_during_stream_is_clean(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-tokens", "200", "--fake-token-delay", "0.02")
    with fake.open_raw("/v1/chat/completions", {**USER_ABC, "stream": True}) as sock:
        read_until(sock, lambda got: b"tok1" in got)
        fake.proc.send_signal(signal.SIGINT)
        assert fake.proc.wait(timeout=TIMEOUT) == 0
    assert "Traceback" not in fake.stderr()
    assert fake.events()[-1]["event"] == "exit"


def test_ignore_sigterm(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-ignore-sigterm")
    fake.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert fake.proc.poll() is None
    assert fake.try_health() == 200
    fake.proc.send_signal(signal.SIGKILL)
    assert fake.proc.wait(timeout=TIMEOUT) == -signal.SIGKILL


def test_spawned_child_dies_with_process_group(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-spawn-child")
    [child] = fake.events("child")
    assert psutil.Process(child["pid"]).ppid() == fake.proc.pid
    assert os.getpgid(child["pid"]) == fake.proc.pid
    os.killpg(fake.proc.pid, signal.SIGKILL)
    fake.proc.wait(timeout=TIMEOUT)
    wait_until(lambda: pid_gone(child["pid"]), what="child gone")
