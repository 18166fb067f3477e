"""Tests of the fake llama-server and llama-tokenize used as engine binaries by the other tests."""

from __future__ import annotations

import base64
import contextlib
import functools
import http.client
import json
import os
import re
import signal
import socket
import struct
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

from fake_engine.fake_llama_tokenize import (
    count_messages_tokens,
    count_prompt_tokens,
    count_responses_tokens,
    detokenize,
    messages_to_chat,
    render_template,
    responses_to_chat,
    tokenize,
)
from fake_engine.server.options import FLAGS

REPO = Path(__file__).resolve().parents[2]
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
        helpers = [e["pid"] for e in fake.events() if e["event"] in ("child", "counter")]
        for pid in [fake.proc.pid, *helpers]:
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


def test_readme_documents_every_flag() -> None:
    # The flags table of fake_engine/README.md and the parser's FLAGS must name the same flags.
    readme = (REPO / "fake_engine" / "README.md").read_text()
    table = readme[readme.index("## Server flags") : readme.index("## ", readme.index("## Server flags") + 3)]
    documented = set()
    for row in table.splitlines():
        if row.startswith("| `"):
            first_cell = row.split("|")[1]
            documented.update(name.split()[0] for name in re.findall(r"`(-[^`]+)`", first_cell))
    assert documented == {name for flag in FLAGS for name in flag.names}


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


def test_reported_n_ctx_is_claimed_but_not_enforced(spawn: Callable[..., Fake]) -> None:
    # An engine that misleads the gateway about its context (as a misconfigured variant does).
    fake = spawn("-c", "1024", "--fake-reported-n-ctx", "3000")
    assert fake.request("GET", "/props").json()["default_generation_settings"]["n_ctx"] == 3000
    assert [slot["n_ctx"] for slot in fake.request("GET", "/slots").json()] == [3000]
    assert fake.request("GET", "/v1/models").json()["data"][0]["meta"]["n_ctx"] == 3000
    body = {"messages": [{"role": "user", "content": "w " * 1500}], "max_tokens": 16}
    error = fake.request("POST", "/v1/chat/completions", body).json()["error"]
    assert error["type"] == "exceed_context_size_error" and error["n_ctx"] == 1024
    assert error["n_prompt_tokens"] == 1503
    assert [e["n_ctx"] for e in fake.events("start")] == [1024]  # the events say what is enforced


def test_bad_values_of_new_knobs_exit_1(tmp_path: Path) -> None:
    for args in (["--fake-reported-n-ctx", "0"], ["--fake-crash-linger", "soon"], ["--fake-reported-n-ctx"]):
        argv = [sys.executable, str(SERVER), "--port", str(free_port()), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 1, args
        assert "error" in done.stderr, args


def test_strict_json_reads_utf8_only_and_keeps_the_first_duplicate(spawn: Callable[..., Fake]) -> None:
    lenient, strict = spawn(), spawn("--fake-strict-json")
    short = json.dumps([{"role": "user", "content": "one"}])
    long = json.dumps([{"role": "user", "content": "w " * 50}])
    duplicated = f'{{"messages": {short}, "messages": {long}}}'.encode()
    path = "/v1/chat/completions/input_tokens"
    assert lenient.request("POST", path, raw=duplicated).json()["input_tokens"] == 53  # the last one wins
    assert strict.request("POST", path, raw=duplicated).json()["input_tokens"] == 4  # the first one wins
    text = json.dumps(USER_ABC)
    bodies = {text.encode("utf-16"): 200, b"\xef\xbb\xbf" + text.encode(): 200, b'{"messages": "\xff"}': 500}
    for body, lenient_status in bodies.items():
        assert lenient.request("POST", path, raw=body).status == lenient_status, body  # Python's detection
        resp = strict.request("POST", path, raw=body)
        assert resp.status == 400, body
        assert resp.json()["error"]["message"].startswith("invalid JSON body: "), body
    assert strict.request("POST", path, raw=text.encode()).json()["input_tokens"] == 6


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


def test_parallel_slots_each_get_a_share_of_the_context(spawn: Callable[..., Fake]) -> None:
    # llama-server 0.10068: -np N slots of n_ctx // N tokens each; its own test_context_size_exceeded
    # checks that the error's n_ctx is server.n_ctx // server.n_slots.
    fake = spawn("--ctx-size", "1000", "--parallel=4", "--fake-tokens", "8")
    props = fake.request("GET", "/props").json()
    assert props["default_generation_settings"]["n_ctx"] == 250 and props["total_slots"] == 4
    assert [(slot["id"], slot["n_ctx"]) for slot in fake.request("GET", "/slots").json()] == [
        (i, 250) for i in range(4)
    ]

    def chat(words: int, **extra: Any) -> Response:
        return fake.request(
            "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "w " * words}], **extra}
        )

    # 246 words + 3 = 249 tokens: one cell is left, so one token is generated (cut by the context).
    fits = chat(246).json()
    assert fits["usage"] == {
        "completion_tokens": 1,
        "prompt_tokens": 249,
        "total_tokens": 250,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert fits["choices"][0]["finish_reason"] == "length"
    # 250 tokens fill the slot, leaving no cell for the first generated token; 300 would fit the
    # whole -c 1000 but not one slot. Both are refused, streamed or not, before anything is sent.
    for words in (247, 297):
        for stream in (False, True):
            resp = chat(words, stream=stream)
            assert resp.status == 400, (words, stream)
            assert resp.headers["Content-Type"].startswith("application/json")
            n_prompt = words + 3
            message = f"request ({n_prompt} tokens) exceeds the available context size (250 tokens), try increasing it"
            assert resp.json() == {
                "error": {
                    "code": 400,
                    "message": message,
                    "type": "exceed_context_size_error",
                    "n_prompt_tokens": n_prompt,
                    "n_ctx": 250,
                }
            }
    native = fake.request("POST", "/completion", {"prompt": "w " * 249})  # 249 words + BOS
    assert native.status == 400 and native.json()["error"]["n_ctx"] == 250
    assert len(fake.events("request")) == 6 and len(fake.events("done")) == 1
    slots = fake.request("GET", "/slots").json()
    assert [slot["n_prompt_tokens"] for slot in slots if "id_task" in slot] == [249]  # the one that ran


def test_default_is_one_slot_and_context_zero_is_the_trained_one(spawn: Callable[..., Fake]) -> None:
    one = spawn("-c", "512")
    props = one.request("GET", "/props").json()
    assert props["total_slots"] == 1 and props["default_generation_settings"]["n_ctx"] == 512
    trained = spawn("-c", "0", "-np", "2")
    assert trained.request("GET", "/props").json()["default_generation_settings"]["n_ctx"] == 131072 // 2
    assert [e["n_ctx"] for e in trained.events("start")] == [131072 // 2]


def test_concurrent_requests(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-tokens", "5", "--fake-token-delay", "0.1", "-np", "2")
    results: list[int] = []

    def one() -> None:
        results.append(fake.request("POST", "/v1/chat/completions", USER_ABC).status)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(fake.events("request")) == 4, what="4 requests")
    busy = fake.request("GET", "/slots").json()
    assert [slot["is_processing"] for slot in busy] == [True, True]
    for thread in threads:
        thread.join(TIMEOUT)
    assert results == [200] * 4  # the two slots were busy at once (checked above): requests run in parallel


# ----------------------------------------------------------------------------- disconnects and crashes


def test_disconnect_mid_stream(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-tokens", "200", "--fake-token-delay", "0.02")
    sock = fake.open_raw("/v1/chat/completions", {**USER_ABC, "stream": True})
    with sock:
        received = read_until(sock, lambda got: len(content_chunks(data_lines(got))) >= 3)
    assert len(content_chunks(data_lines(received))) >= 3
    wait_until(lambda: bool(fake.events("cancelled")), timeout=2, what="cancelled event")
    [cancelled] = fake.events("cancelled")
    assert 3 <= cancelled["tokens"] < 200  # cancelled before the end, whatever the speed
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


def test_crash_linger_breaks_every_socket_before_the_process_exits(spawn: Callable[..., Fake]) -> None:
    # A linger far longer than the test: the process is still there once its sockets are gone.
    fake = spawn("--fake-exit-after-chunks", "2", "--fake-token-delay", "0.01", "--fake-crash-linger", "60")
    with fake.open_raw("/v1/chat/completions", {**USER_ABC, "stream": True}) as sock:
        received = read_until(sock, lambda _: False)  # until the crash closes the connection
    assert content_chunks(data_lines(received)) == ["tok0", " tok1"]
    with pytest.raises(ConnectionRefusedError):  # the listening socket is closed too
        socket.create_connection(("127.0.0.1", fake.port), timeout=TIMEOUT).close()
    assert fake.proc.poll() is None
    assert "error: fake crash after 2 content chunks" in fake.stderr()


# ----------------------------------------------------------------------------- signals and children


def test_sigterm_exits_after_shutdown_delay(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-shutdown-delay", "3")
    fake.proc.send_signal(signal.SIGTERM)
    assert fake.try_health() == 200  # still serving during its shutdown delay
    assert fake.proc.poll() is None
    assert fake.proc.wait(timeout=TIMEOUT) == 0
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


# ----------------------------------------------------------------------------- --fake-count-process

COUNT_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions/input_tokens", USER_ABC),
    ("/chat/completions/input_tokens", TOOLS_BODY),
    ("/v1/messages/count_tokens", {"system": "be brief", "messages": [{"role": "user", "content": "x y"}]}),
    ("/v1/responses/input_tokens", {"instructions": "be brief", "input": "x y z"}),
    ("/apply-template", USER_ABC),
    ("/tokenize", {"content": "hello big world", "add_special": True, "with_pieces": True}),
]


def counter_pid(fake: Fake) -> int:
    [counter] = fake.events("counter")
    pid = int(counter["pid"])
    assert pid != fake.proc.pid and psutil.Process(pid).ppid() == fake.proc.pid
    return pid


def test_count_process_counts_while_the_generating_process_is_frozen(spawn: Callable[..., Fake]) -> None:
    # llama-server counts on its HTTP threads while its inference loop generates. Here the process
    # that generates is stopped mid-stream (SIGSTOP: as busy as it can be) and counts are still
    # answered, by the HTTP process, with what the one-process fake answers.
    plain = spawn()
    fake = spawn("--fake-count-process", "--fake-tokens", "100000", "--fake-token-delay", "0.01")
    counter_pid(fake)
    expected = [plain.request("POST", path, body) for path, body in COUNT_CALLS]
    with fake.open_raw("/v1/chat/completions", {**USER_ABC, "stream": True}) as stream:
        assert b"tok0" in read_until(stream, lambda got: b"tok0" in got)
        os.kill(fake.proc.pid, signal.SIGSTOP)
        try:
            answers = [fake.request("POST", path, body) for path, body in COUNT_CALLS]
        finally:
            os.kill(fake.proc.pid, signal.SIGCONT)
    assert [(a.status, a.json()) for a in answers] == [(e.status, e.json()) for e in expected]
    assert all(a.headers["Server"] == "llama.cpp" for a in answers)
    wait_until(lambda: len(fake.events("cancelled")) == 1, what="the stream to be cancelled")
    ids = fake.request("POST", "/tokenize", {"content": "hello big world"}).json()["tokens"]
    assert fake.request("POST", "/detokenize", {"tokens": ids}).json() == {"content": "hello big world"}


def test_count_process_hands_one_connection_back_and_forth(spawn: Callable[..., Fake]) -> None:
    # A gateway's pooled connection carries counts and generations alike: each request is routed.
    fake = spawn("--fake-count-process", "--fake-tokens", "2")
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=TIMEOUT)
    try:
        local_ends = set()
        for _ in range(3):
            for path, body, key in [
                ("/v1/chat/completions/input_tokens", USER_ABC, "input_tokens"),
                ("/v1/chat/completions", USER_ABC, "usage"),
                ("/health", None, "status"),
                ("/tokenize", {"content": "a b"}, "tokens"),
            ]:
                if body is None:
                    conn.request("GET", path)
                else:
                    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = json.loads(resp.read())
                assert resp.status == 200 and key in data, (path, data)
                assert conn.sock is not None
                local_ends.add(conn.sock.getsockname())
        assert len(local_ends) == 1  # the same connection throughout: nothing was closed
    finally:
        conn.close()
    assert len(fake.events("done")) == 3

    def posts_logged() -> int:  # each request is logged once, by the process that served it, after its answer
        return sum("log_server_r: request: POST" in line for line in fake.stderr().splitlines())

    wait_until(lambda: posts_logged() >= 9, what="9 request lines")
    assert posts_logged() == 9


def test_count_process_knobs_and_loading_apply_to_counts(spawn: Callable[..., Fake]) -> None:
    loading = spawn("--fake-count-process", "--fake-never-healthy", wait=False)
    wait_until(lambda: loading.try_health() is not None, what="listening")
    assert loading.request("POST", "/tokenize", {"content": "a"}).status == 503
    assert loading.request("GET", "/health").status == 503
    garbage = spawn("--fake-count-process", "--fake-count-garbage", "shape")
    assert garbage.request("POST", "/tokenize", {"content": "a"}).json() == ["unexpected", {"shape": True}]
    assert garbage.request("GET", "/health").json() == {"status": "ok"}


def test_count_process_stops_with_the_engine(spawn: Callable[..., Fake]) -> None:
    # SIGTERM to the engine: both processes exit, the HTTP process first (it is reaped).
    fake = spawn("--fake-count-process")
    pid = counter_pid(fake)
    fake.proc.send_signal(signal.SIGTERM)
    assert fake.proc.wait(timeout=TIMEOUT) == 0
    assert pid_gone(pid)
    assert [e["event"] for e in fake.events()] == ["start", "counter", "exit"]
    # SIGKILL to the engine alone: the HTTP process sees the pair close and exits by itself.
    killed = spawn("--fake-count-process")
    pid = counter_pid(killed)
    killed.proc.kill()
    killed.proc.wait(timeout=TIMEOUT)
    wait_until(lambda: pid_gone(pid), what="the HTTP process to exit")


def test_count_process_gone_the_engine_answers_everything(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-count-process", "--fake-tokens", "2")
    os.kill(counter_pid(fake), signal.SIGKILL)
    wait_until(lambda: "answers everything now" in fake.stderr(), what="the engine to take over")
    assert fake.request("POST", "/v1/chat/completions/input_tokens", USER_ABC).json()["input_tokens"] == 6
    assert fake.request("POST", "/v1/chat/completions", USER_ABC).json()["usage"]["completion_tokens"] == 2
    assert fake.proc.poll() is None


def test_count_process_dies_with_a_crash(spawn: Callable[..., Fake]) -> None:
    args = ["--fake-exit-after-chunks", "2", "--fake-token-delay", "0.01", "--fake-crash-linger", "60"]
    fake = spawn("--fake-count-process", *args)
    pid = counter_pid(fake)
    with fake.open_raw("/v1/chat/completions", {**USER_ABC, "stream": True}) as sock:
        received = read_until(sock, lambda _: False)  # until the crash closes the connection
    assert content_chunks(data_lines(received)) == ["tok0", " tok1"]
    assert pid_gone(pid)  # killed and reaped before the connections were closed
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", fake.port), timeout=TIMEOUT).close()


# ----------------------------------------------------------------------------- other APIs: counting


MESSAGES_BODY: dict[str, Any] = {
    "system": [{"type": "text", "text": "be brief"}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "x y"}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "42"}]},
    ],
    "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
    "max_tokens": 3,
}


def test_messages_count_as_the_equivalent_chat() -> None:
    chat = messages_to_chat(MESSAGES_BODY)
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    assert chat["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "x y"}]},
        {"role": "assistant", "content": [], "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    tool = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}
    assert chat["tools"] == [tool]
    assert count_messages_tokens(MESSAGES_BODY) == count_prompt_tokens(chat)


def test_responses_count_as_the_equivalent_chat() -> None:
    body = {
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "x y"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
        ],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    }
    chat = responses_to_chat(body)
    assert chat["messages"][0] == {"role": "system", "content": "be brief"}
    assert chat["messages"][1] == {"role": "user", "content": [{"type": "text", "text": "x y"}]}
    assert chat["messages"][2]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": "42"}
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert count_responses_tokens(body) == count_prompt_tokens(chat)
    assert count_responses_tokens({"input": "a b c"}) == count_prompt_tokens(USER_ABC) == 6


def test_detokenize_rule() -> None:
    ids = tokenize("one two", add_special=True)
    assert detokenize(ids) == "<s> one two"
    assert detokenize([1]) == "<unk>"  # never tokenized: the id rule is a hash


# ----------------------------------------------------------------------------- other APIs: served


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) of each server-sent event of a (not chunk-framed) body."""
    events = []
    for block in raw.decode().split("\n\n"):
        lines = block.splitlines()
        if not lines:
            continue
        name = lines[0].removeprefix("event: ") if lines[0].startswith("event: ") else None
        events.append((name, lines[-1].removeprefix("data: ")))
    return events


def test_model_is_the_served_name(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--embeddings")
    body = {**USER_ABC, "model": "whatever", "max_tokens": 1}
    assert fake.request("POST", "/v1/chat/completions", body).json()["model"] == "/models/fake.gguf"
    aliased = spawn("--alias", "my-alias", "--embeddings")
    for path, answer in [
        ("/v1/chat/completions", body),
        ("/v1/completions", {"prompt": "a", "model": "x", "max_tokens": 1}),
        ("/completion", {"prompt": "a", "n_predict": 1}),
        ("/v1/messages", {**body, "max_tokens": 1}),
        ("/v1/responses", {"input": "a", "model": "x", "max_output_tokens": 1}),
    ]:
        assert aliased.request("POST", path, answer).json()["model"] == "my-alias", path
    models = aliased.request("GET", "/v1/models").json()
    assert models["data"][0]["id"] == "my-alias" and models["models"][0]["name"] == "my-alias"
    props = aliased.request("GET", "/props").json()
    assert (props["model_alias"], props["model_path"]) == ("my-alias", "/models/fake.gguf")
    # Embeddings (and rerank) echo the request's model, as llama-server does.
    assert aliased.request("POST", "/v1/embeddings", {"input": "a", "model": "e"}).json()["model"] == "e"
    assert aliased.request("POST", "/v1/embeddings", {"input": "a"}).json()["model"] == "my-alias"


def test_openai_completions(spawn: Callable[..., Fake]) -> None:
    fake = spawn()
    one = fake.request("POST", "/v1/completions", {"prompt": "a b c", "max_tokens": 2}).json()
    assert one["object"] == "text_completion" and one["id"].startswith("chatcmpl-")
    assert one["choices"] == [{"text": "tok0 tok1", "index": 0, "logprobs": None, "finish_reason": "length"}]
    assert one["usage"]["prompt_tokens"] == 4 and one["usage"]["completion_tokens"] == 2
    assert set(one["timings"]) == {
        "cache_n",
        "prompt_n",
        "prompt_ms",
        "prompt_per_token_ms",
        "prompt_per_second",
        "predicted_n",
        "predicted_ms",
        "predicted_per_token_ms",
        "predicted_per_second",
    }
    ids = fake.request("POST", "/v1/completions", {"prompt": [2, 7, 8], "max_tokens": 1}).json()
    assert ids["usage"]["prompt_tokens"] == 3  # ids are used as given: no BOS added
    many = fake.request("POST", "/v1/completions", {"prompt": ["a b", "c d e"], "max_tokens": 1}).json()
    assert [c["index"] for c in many["choices"]] == [0, 1]
    assert many["usage"]["prompt_tokens"] == 3  # llama-server reports the first prompt's usage only
    resp = fake.request("POST", "/v1/completions", {"prompt": ["a", "b"], "max_tokens": 2, "stream": True})
    events = [data for _, data in sse_events(resp.body)]
    assert events[-1] == "[DONE]" and events.count("null") == 1
    split = events.index("null")
    first = [json.loads(e) for e in events[:split]]
    assert [c["choices"][0]["text"] for c in first] == ["tok0", " tok1", ""]
    assert first[-1]["choices"][0]["finish_reason"] == "length"
    assert first[-1]["usage"]["completion_tokens"] == 2 and "timings" in first[-1]
    assert "usage" not in first[0] and "role" not in resp.body.decode()  # no role chunk here
    assert {json.loads(e)["choices"][0]["index"] for e in events[split + 1 : -1]} == {1}
    missing = fake.request("POST", "/v1/completions", {"max_tokens": 1})
    assert missing.status == 400
    assert missing.json()["error"]["message"] == "[json.exception.out_of_range.403] key 'prompt' not found"
    assert [e["path"] for e in fake.events("request")] == ["/v1/completions"] * 4


def test_native_completion(spawn: Callable[..., Fake]) -> None:
    fake = spawn()
    result = fake.request("POST", "/completion", {"prompt": "a b c", "n_predict": 2}).json()
    assert result["content"] == "tok0 tok1" and result["stop"] is True
    assert (result["tokens_predicted"], result["tokens_evaluated"], result["stop_type"]) == (2, 4, "limit")
    assert result["prompt"] == "<s> a b c" and result["timings"]["predicted_n"] == 2
    assert result["model"] == "/models/fake.gguf" and result["generation_settings"]["n_predict"] == 2
    natural = fake.request("POST", "/completions", {"prompt": "a", "n_predict": -1}).json()  # same route
    assert natural["stop_type"] == "eos" and natural["tokens_predicted"] == 8
    many = fake.request("POST", "/completion", {"prompt": ["a", "b c"], "n_predict": 1}).json()
    assert [r["index"] for r in many] == [0, 1]
    resp = fake.request("POST", "/completion", {"prompt": "a b c", "n_predict": 2, "stream": True})
    events = [json.loads(data) for _, data in sse_events(resp.body)]  # no [DONE] here
    assert [(e["content"], e["stop"]) for e in events] == [("tok0", False), (" tok1", False), ("", True)]
    assert events[0]["tokens"] == tokenize("tok0") and events[0]["id_slot"] == -1
    assert events[-1]["timings"]["predicted_n"] == 2 and events[-1]["tokens_predicted"] == 2
    content = fake.request("POST", "/completion", {"content": "a b"})  # llama-server wants "prompt"
    assert content.status == 400
    assert "key 'prompt' not found" in content.json()["error"]["message"]


def test_infill(spawn: Callable[..., Fake]) -> None:
    plain = spawn()
    refused = plain.request("POST", "/infill", {"input_prefix": "a", "input_suffix": "b"})
    assert refused.status == 501
    assert refused.json()["error"]["type"] == "not_supported_error"
    assert refused.json()["error"]["message"].startswith("Infill is not supported by this model")
    fake = spawn("--fake-infill")
    result = fake.request("POST", "/infill", {"input_prefix": "x y", "input_suffix": "z", "n_predict": 1}).json()
    assert result["content"] == "tok0"
    assert result["tokens_evaluated"] == 7  # BOS, 3 FIM markers, x, y, z


def test_anthropic_messages(spawn: Callable[..., Fake]) -> None:
    fake = spawn()
    reply = fake.request("POST", "/v1/messages", MESSAGES_BODY).json()
    n_prompt = count_messages_tokens(MESSAGES_BODY)
    assert reply["type"] == "message" and reply["role"] == "assistant"
    assert reply["content"] == [{"type": "text", "text": "tok0 tok1 tok2"}]
    assert (reply["stop_reason"], reply["stop_sequence"]) == ("max_tokens", None)
    assert reply["usage"] == {"cache_read_input_tokens": 0, "input_tokens": n_prompt, "output_tokens": 3}
    counted = fake.request("POST", "/v1/messages/count_tokens", MESSAGES_BODY).json()
    assert counted == {"input_tokens": n_prompt}
    resp = fake.request("POST", "/v1/messages", {"messages": [{"role": "user", "content": "q"}], "stream": True})
    assert resp.headers["Content-Type"] == "text/event-stream"
    events = sse_events(resp.body)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 8,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(json.loads(data)["type"] == name for name, data in events)
    start = json.loads(events[0][1])["message"]
    assert start["content"] == [] and start["usage"]["output_tokens"] == 0
    assert json.loads(events[2][1])["delta"] == {"type": "text_delta", "text": "tok0"}
    delta = json.loads(events[-2][1])
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == {"output_tokens": 8}
    missing = fake.request("POST", "/v1/messages", {"max_tokens": 1})
    assert (missing.status, missing.json()["error"]["type"]) == (500, "server_error")  # as llama-server
    assert missing.json()["error"]["message"] == "'messages' is required"


def test_openai_responses(spawn: Callable[..., Fake]) -> None:
    fake = spawn()
    body = {"input": "a b c", "instructions": "be brief", "max_output_tokens": 2}
    n_prompt = count_responses_tokens(body)
    reply = fake.request("POST", "/v1/responses", body).json()
    assert reply["object"] == "response" and reply["status"] == "completed" and reply["id"].startswith("resp_")
    [item] = reply["output"]
    assert item["type"] == "message" and item["id"].startswith("msg_")
    assert item["content"] == [{"type": "output_text", "annotations": [], "logprobs": [], "text": "tok0 tok1"}]
    assert reply["usage"]["input_tokens"] == n_prompt and reply["usage"]["output_tokens"] == 2
    assert "timings" not in reply
    counted = fake.request("POST", "/v1/responses/input_tokens", body).json()
    assert counted == {"input_tokens": n_prompt, "object": "response.input_tokens"}
    resp = fake.request("POST", "/v1/responses", {**body, "stream": True})
    events = sse_events(resp.body)
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    completed = json.loads(events[-1][1])
    assert completed["response"]["output"][0]["content"][0]["text"] == "tok0 tok1"
    assert completed["timings"]["predicted_n"] == 2
    assert fake.request("POST", "/v1/responses", {"max_output_tokens": 1}).json()["error"] == {
        "code": 400,
        "message": "'input' is required",
        "type": "invalid_request_error",
    }


def test_exceed_context_on_every_generation_route(spawn: Callable[..., Fake]) -> None:
    fake = spawn("-c", "64", "--fake-infill")
    words = "w " * 70
    for path, body in [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": words}], "stream": True}),
        ("/v1/completions", {"prompt": ["a", words]}),
        ("/completion", {"prompt": words}),
        ("/infill", {"input_prefix": words}),
        ("/v1/messages", {"messages": [{"role": "user", "content": words}]}),
        ("/v1/responses", {"input": words, "stream": True}),
    ]:
        resp = fake.request("POST", path, body)
        assert resp.status == 400, path
        error = resp.json()["error"]
        assert error["type"] == "exceed_context_size_error" and error["n_ctx"] == 64, path
        n_prompt = error["n_prompt_tokens"]
        assert error["message"] == f"request ({n_prompt} tokens) exceeds the available context size (64 tokens), " + (
            "try increasing it"
        )
    assert len(fake.events("request")) == 6 and not fake.events("done")


def test_every_generation_route_writes_events(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-tokens", "2", "--fake-infill", "--embeddings", "--reranking")
    calls = [
        ("/v1/chat/completions", USER_ABC),
        ("/chat/completions", {**USER_ABC, "stream": True}),
        ("/v1/completions", {"prompt": "a", "stream": True}),
        ("/completion", {"prompt": "a"}),
        ("/infill", {"input_prefix": "a"}),
        ("/v1/messages", {"messages": [{"role": "user", "content": "a"}], "stream": True}),
        ("/v1/responses", {"input": "a"}),
        ("/v1/embeddings", {"input": "a"}),
        ("/rerank", {"query": "a", "documents": ["a"]}),
    ]
    for path, body in calls:
        assert fake.request("POST", path, body).status == 200, path
    requests, done = fake.events("request"), fake.events("done")
    assert [e["path"] for e in requests] == [path for path, _ in calls]
    assert [e["id"] for e in done] == [e["id"] for e in requests]
    assert [e["tokens"] for e in done] == [2] * 7 + [0, 0]


# ----------------------------------------------------------------------------- embeddings and rerank


def test_embeddings_and_rerank_need_their_flags(spawn: Callable[..., Fake]) -> None:
    fake = spawn()
    for path in ("/v1/embeddings", "/embeddings", "/embedding"):
        resp = fake.request("POST", path, {"input": "a"})
        assert resp.status == 501
        assert resp.json()["error"] == {
            "code": 501,
            "message": "This server does not support embeddings. Start it with `--embeddings`",
            "type": "not_supported_error",
        }
    for path in ("/rerank", "/v1/rerank", "/reranking", "/v1/reranking"):
        resp = fake.request("POST", path, {"query": "a", "documents": ["b"]})
        assert resp.status == 501
        assert resp.json()["error"]["message"] == "This server does not support reranking. Start it with `--reranking`"


def test_embeddings(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--embeddings", "-ub", "16", "--fake-embedding-dim", "8")
    one = fake.request("POST", "/v1/embeddings", {"input": ["a b", "c"]}).json()
    assert one["object"] == "list" and one["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    vectors = [item["embedding"] for item in one["data"]]
    assert [item["index"] for item in one["data"]] == [0, 1] and all(len(v) == 8 for v in vectors)
    assert all(abs(sum(x * x for x in v) - 1) < 1e-9 for v in vectors)  # normalized, as by default
    again = fake.request("POST", "/v1/embeddings", {"input": "a b"}).json()
    assert again["data"][0]["embedding"] == vectors[0]  # deterministic
    native = fake.request("POST", "/embedding", {"content": "a b"}).json()
    assert native == [{"index": 0, "embedding": [vectors[0]]}]
    assert fake.request("POST", "/v1/embeddings", {"content": "a b"}).json() == native  # no "input": native
    packed = fake.request("POST", "/v1/embeddings", {"input": "a b", "encoding_format": "base64"}).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert struct.unpack("<8f", raw) == pytest.approx(vectors[0], rel=1e-6)
    assert fake.request("POST", "/v1/embeddings", {"input": "w " * 15}).status == 200  # 16 tokens fit
    big = fake.request("POST", "/v1/embeddings", {"input": "w " * 16})
    assert big.status == 500
    assert big.json()["error"] == {
        "code": 500,
        "message": "input (17 tokens) is too large to process. increase the physical batch size "
        "(current batch size: 16)",
        "type": "server_error",
    }
    neither = fake.request("POST", "/v1/embeddings", {})
    assert (neither.status, neither.json()["error"]["message"]) == (400, '"input" or "content" must be provided')
    # -ub is clamped to -b, as llama-server does.
    small = spawn("--embeddings", "-b", "4")
    assert (
        "current batch size: 4"
        in small.request("POST", "/embedding", {"content": "w w w w"}).json()["error"]["message"]
    )


def test_rerank(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--reranking")
    body = {"query": "panda bear", "documents": ["hi", "a panda", "bear panda"], "top_n": 2, "model": "r"}
    reply = fake.request("POST", "/v1/rerank", body).json()
    assert reply["model"] == "r" and reply["object"] == "list"
    assert reply["results"] == [{"index": 2, "relevance_score": 1.0}, {"index": 1, "relevance_score": 0.5}]
    assert reply["usage"]["prompt_tokens"] == 4 + 5 + 5  # BOS, query and document, per document
    tei = fake.request("POST", "/reranking", {"query": "x", "texts": ["y", "x"], "return_text": True}).json()
    assert tei == [{"index": 1, "score": 1.0, "text": "x"}, {"index": 0, "score": 0.0, "text": "y"}]
    empty = fake.request("POST", "/rerank", {"query": "x", "documents": []})
    assert (empty.status, empty.json()["error"]["message"]) == (400, '"documents" must be a non-empty string array')
    assert fake.request("POST", "/v1/embeddings", {"input": "a"}).status == 200  # reranking implies embeddings


# ----------------------------------------------------------------------------- tokenize, cache, slots


def test_tokenize_and_detokenize(spawn: Callable[..., Fake]) -> None:
    fake = spawn()
    assert fake.request("POST", "/tokenize", {}).json() == {"tokens": []}
    mixed = fake.request("POST", "/tokenize", {"content": ["a", 5, "b c"], "add_special": True}).json()
    assert mixed == {"tokens": [2, *tokenize("a"), 5, *tokenize("b c")]}
    ids = fake.request("POST", "/tokenize", {"content": "one two", "add_special": True}).json()["tokens"]
    assert fake.request("POST", "/detokenize", {"tokens": ids}).json() == {"content": "<s> one two"}
    assert fake.request("POST", "/detokenize", {}).json() == {"content": ""}
    wrong = fake.request("POST", "/tokenize", {"content": 5})
    assert wrong.status == 500
    assert wrong.json()["error"]["message"] == "[json.exception.type_error.302] type must be string, but is number"
    assert fake.request("POST", "/detokenize", {"tokens": "x"}).status == 500


def test_prompt_cache_and_slot_save_restore(spawn: Callable[..., Fake], tmp_path: Path) -> None:
    fake = spawn("--slot-save-path", str(tmp_path), "--fake-tokens", "3")
    assert fake.request("GET", "/slots").json() == [
        {"id": 0, "n_ctx": 4096, "speculative": False, "is_processing": False}
    ]
    first = fake.request("POST", "/v1/chat/completions", USER_ABC).json()
    assert first["timings"]["cache_n"] == 0
    again = fake.request("POST", "/v1/chat/completions", USER_ABC).json()  # all but the last prompt token cached
    assert (again["timings"]["cache_n"], again["timings"]["prompt_n"]) == (5, 1)
    assert again["usage"]["prompt_tokens_details"] == {"cached_tokens": 5}
    [slot] = fake.request("GET", "/slots").json()
    assert slot["n_prompt_tokens"] == 6 + 2 and slot["is_processing"] is False  # prompt + generated - 1
    saved = fake.request("POST", "/slots/0?action=save", {"filename": "s.json"}).json()
    assert (
        saved["id_slot"] == 0 and saved["n_saved"] == 8 and saved["n_written"] == (tmp_path / "s.json").stat().st_size
    )
    assert set(saved["timings"]) == {"save_ms"}
    assert fake.request("POST", "/slots/0?action=erase").json() == {"id_slot": 0, "n_erased": 8}
    other = {"messages": [{"role": "system", "content": "z"}]}
    assert fake.request("POST", "/v1/chat/completions", other).json()["timings"]["cache_n"] == 0
    restored = fake.request("POST", "/slots/0?action=restore", {"filename": "s.json"}).json()
    assert (restored["n_restored"], restored["n_read"]) == (8, saved["n_written"])
    messages = fake.request("POST", "/v1/messages", {"messages": USER_ABC["messages"], "max_tokens": 1}).json()
    assert messages["usage"] == {"cache_read_input_tokens": 5, "input_tokens": 1, "output_tokens": 1}
    no_cache = fake.request("POST", "/completion", {"prompt": "a b", "cache_prompt": False}).json()
    assert no_cache["timings"]["cache_n"] == 0
    for path, body, status, message in [
        ("/slots/0?action=bogus", {"filename": "s.json"}, 400, "Invalid action"),
        ("/slots/x?action=save", {"filename": "s.json"}, 400, "Invalid slot ID"),
        ("/slots/0?action=save", {"filename": "../s.json"}, 400, "Invalid filename"),
        ("/slots/0?action=save", {}, 500, "[json.exception.out_of_range.403] key 'filename' not found"),
        (
            "/slots/0?action=restore",
            {"filename": "missing.json"},
            400,
            "Unable to restore slot, no available space in KV cache or invalid slot save file",
        ),
    ]:
        resp = fake.request("POST", path, body)
        assert (resp.status, resp.json()["error"]["message"]) == (status, message), path
    plain = spawn()
    refused = plain.request("POST", "/slots/0?action=save", {"filename": "s.json"})
    assert refused.status == 501
    assert (
        refused.json()["error"]["message"]
        == "This server does not support slots action. Start it with `--slot-save-path`"
    )


def test_slot_files_are_laid_out_as_llama_server_writes_them(spawn: Callable[..., Fake], tmp_path: Path) -> None:
    fake = spawn("--slot-save-path", str(tmp_path), "--fake-slot-bytes-per-token", "10")
    fake.request("POST", "/v1/chat/completions", USER_ABC)
    saved = fake.request("POST", "/slots/0?action=save", {"filename": "s.bin"}).json()
    data = (tmp_path / "s.bin").read_bytes()
    n = saved["n_saved"]
    assert data[:4] == b"qsgg" and struct.unpack_from("<II", data, 4) == (2, n)
    assert len(data) == saved["n_written"] == 12 + n * (4 + 10)
    (tmp_path / "cut.bin").write_bytes(data[:-1])
    cut = fake.request("POST", "/slots/0?action=restore", {"filename": "cut.bin"})
    assert cut.status == 400
    assert fake.request("GET", "/slots").json()[0]["n_prompt_tokens"] == 0  # a failed restore clears the slot


def test_slot_knobs_refuse_restores_and_fill_the_disk(spawn: Callable[..., Fake], tmp_path: Path) -> None:
    refusing = spawn("--slot-save-path", str(tmp_path), "--fake-slot-refuse-restore")
    refusing.request("POST", "/v1/chat/completions", USER_ABC)
    assert refusing.request("POST", "/slots/0?action=save", {"filename": "ok.bin"}).status == 200
    assert refusing.request("POST", "/slots/0?action=restore", {"filename": "ok.bin"}).status == 400
    full = spawn("--slot-save-path", str(tmp_path), "--fake-slot-disk-full")
    full.request("POST", "/v1/chat/completions", USER_ABC)
    failed = full.request("POST", "/slots/0?action=save", {"filename": "full.bin"})
    assert failed.status == 500 and "No space left on device" in failed.json()["error"]["message"]
    assert 0 < (tmp_path / "full.bin").stat().st_size < (tmp_path / "ok.bin").stat().st_size  # half of it


def test_other_routes_answer_like_llama_server(spawn: Callable[..., Fake]) -> None:
    fake = spawn()
    assert fake.request("GET", "/metrics").status == 501
    assert fake.request("POST", "/props", {}).status == 501
    assert fake.request("GET", "/lora-adapters").json() == []
    tools = fake.request("GET", "/tools")
    assert tools.status == 403
    assert tools.json() == {"error": {"message": "this feature is disabled", "type": "feature_disabled"}}
    assert fake.request("POST", "/v1/audio/transcriptions", {}).status == 501
    assert fake.request("GET", "/health").headers["Server"] == "llama.cpp"
    counted = spawn("--metrics", "--fake-tokens", "2")
    counted.request("POST", "/v1/chat/completions", USER_ABC)
    metrics = counted.request("GET", "/metrics")
    assert metrics.headers["Content-Type"] == "text/plain; version=0.0.4"
    assert "llamacpp:tokens_predicted_total 2\n" in metrics.body.decode()
    assert "llamacpp:prompt_tokens_total 6\n" in metrics.body.decode()


# ----------------------------------------------------------------------------- misbehaving engines


COUNT_CALLS = [
    ("/v1/chat/completions/input_tokens", USER_ABC),
    ("/v1/messages/count_tokens", USER_ABC),
    ("/v1/responses/input_tokens", {"input": "a"}),
    ("/tokenize", {"content": "a"}),
    ("/apply-template", USER_ABC),
]


@pytest.mark.parametrize("mode", ["truncated", "content-type", "shape"])
def test_count_garbage(spawn: Callable[..., Fake], mode: str) -> None:
    fake = spawn("--fake-count-garbage", mode)
    for path, body in COUNT_CALLS:
        resp = fake.request("POST", path, body)
        assert resp.status == 200, path
        if mode == "content-type":
            assert resp.headers["Content-Type"].startswith("text/html"), path
            continue
        assert resp.headers["Content-Type"].startswith("application/json"), path
        if mode == "truncated":
            with pytest.raises(ValueError):
                resp.json()
        else:
            assert not isinstance(resp.json(), dict), path
    assert fake.request("POST", "/v1/chat/completions", {**USER_ABC, "max_tokens": 1}).json()["usage"]


def raw_answer(fake: Fake, path: str, body: Any) -> bytes:
    """Everything the fake sends on one connection, until it closes it."""
    with fake.open_raw(path, body) as sock:
        return read_until(sock, lambda _: False)


def test_truncate_body(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-truncate-body", "--fake-tokens", "3")
    whole = raw_answer(fake, "/v1/chat/completions", USER_ABC)
    head, _, body = whole.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert not body.endswith(b"0\r\n\r\n")  # no terminating chunk
    size, _, chunk = body.partition(b"\r\n")
    data = chunk.removesuffix(b"\r\n")  # one chunk: half the JSON
    assert data.startswith(b'{"choices"') and len(data) == int(size, 16)
    with pytest.raises(ValueError):
        json.loads(data)  # cut mid-JSON
    streamed = raw_answer(fake, "/v1/chat/completions", {**USER_ABC, "stream": True})
    assert not streamed.endswith(b"0\r\n\r\n")
    assert "[DONE]" in data_lines(streamed)  # every event is there, only the HTTP framing is cut
    with pytest.raises(http.client.IncompleteRead):
        fake.request("POST", "/v1/messages", {"messages": USER_ABC["messages"]})
    assert len(fake.events("truncated")) == 3 and len(fake.events("done")) == 3
    assert fake.try_health() == 200 and "Traceback" not in fake.stderr()


def test_hang_requests(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-hang-requests")
    for path, body in [("/v1/chat/completions", USER_ABC), ("/tokenize", {"content": "a"})]:
        with fake.open_raw(path, body) as sock:
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(1)
        assert fake.try_health() == 200  # health still answers
    wait_until(lambda: len(fake.events("hung")) == 2, what="hung events")
    assert [e["path"] for e in fake.events("hung")] == ["/v1/chat/completions", "/tokenize"]
    assert fake.request("GET", "/props").status == 200
    assert "Traceback" not in fake.stderr()


def test_hang_health(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-hang-health", "--fake-load-delay", "0.3", wait=False)
    wait_until(lambda: fake.try_health() is not None, what="listening")  # 503 while loading
    time.sleep(0.4)
    with fake.open_raw("/health", {}) as sock:
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)
    fake.proc.send_signal(signal.SIGTERM)  # unlike SIGSTOP, the process still stops when told
    assert fake.proc.wait(timeout=TIMEOUT) == 0
    assert fake.events("hung") and "Traceback" not in fake.stderr()


def test_health_flap(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-health-flap", "0.3")
    seen: list[int | None] = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        seen.append(fake.try_health())
        time.sleep(0.05)
    changes = [status for i, status in enumerate(seen) if i == 0 or status != seen[i - 1]]
    assert set(seen) == {200, 503} and len(changes) >= 3
    assert fake.request("POST", "/v1/chat/completions", {**USER_ABC, "max_tokens": 1}).status == 200


def test_stall_after_chunks(spawn: Callable[..., Fake]) -> None:
    fake = spawn("--fake-stall-after-chunks", "2", "--fake-stall-seconds", "0.6", "--fake-tokens", "4")
    with fake.open_raw("/v1/chat/completions", {**USER_ABC, "stream": True}) as sock:
        got = read_until(sock, lambda got: len(content_chunks(data_lines(got))) >= 2)
        started = time.monotonic()
        got += read_until(sock, lambda got: b"[DONE]" in got)
        stalled = time.monotonic() - started
    assert content_chunks(data_lines(got)) == ["tok0", " tok1", " tok2", " tok3"]
    assert stalled >= 0.5
    assert [e["chunks"] for e in fake.events("stalled")] == [2]
    forever = spawn("--fake-stall-after-chunks", "1")
    with forever.open_raw("/v1/messages", {"messages": USER_ABC["messages"], "stream": True}) as sock:
        got = read_until(sock, lambda got: b"text_delta" in got)
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # the connection stays open, silent
    wait_until(lambda: bool(forever.events("cancelled")), what="cancelled after a stall")
    assert forever.events("cancelled")[0]["tokens"] == 1
