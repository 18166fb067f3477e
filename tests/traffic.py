"""Mixed client traffic for the soak and chaos tests: every route, streamed or not, some clients
hanging up early, and a judge of each answer: complete, a clean error, or bad (lost, cut short
without an error event, malformed, or a gateway 500)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import random
from collections import Counter
from typing import Any

import psutil
from tornado.httpclient import AsyncHTTPClient

from conftest import chat_body

HI = [{"role": "user", "content": "hi there"}]

# How much the gateway process may have grown once traffic has stopped, against its state before.
MAX_FD_GROWTH = 16
MAX_TASK_GROWTH = 8
MAX_RSS_GROWTH = 64 * 1024 * 1024


def snapshot() -> dict[str, int]:
    gc.collect()
    proc = psutil.Process()
    return {"fds": proc.num_fds(), "tasks": len(asyncio.all_tasks()), "rss": proc.memory_info().rss}


def assert_no_growth(before: dict[str, int], after: dict[str, int]) -> None:
    assert after["fds"] - before["fds"] <= MAX_FD_GROWTH, (before, after)
    assert after["tasks"] - before["tasks"] <= MAX_TASK_GROWTH, (before, after)
    assert after["rss"] - before["rss"] <= MAX_RSS_GROWTH, (before, after)


def _words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


class Traffic:
    def __init__(self, url: str, port: int, models: list[str], rng: random.Random, clients: int) -> None:
        self.url, self.port, self.models, self.rng = url, port, models, rng
        self.http = AsyncHTTPClient(force_instance=True, max_clients=clients * 2)
        self.outcomes: Counter[str] = Counter()

    def close(self) -> None:
        self.http.close()

    def request(self) -> tuple[str, dict[str, Any], bool]:
        """A random (path, body, streamed) over every kind of route."""
        rng, model = self.rng, self.rng.choice(self.models)
        size = rng.choice([3, 20, 300])
        stream = rng.random() < 0.5
        budget = rng.randint(1, 30)
        kinds: list[tuple[str, dict[str, Any], bool]] = [
            ("/v1/chat/completions", chat_body(model, size, max_tokens=budget, stream=stream), stream),
            ("/v1/completions", {"model": model, "prompt": _words(size), "max_tokens": budget, "stream": stream},
             stream),
            ("/completion", {"model": model, "prompt": _words(size), "n_predict": budget, "stream": stream}, stream),
            ("/v1/messages", {"model": model, "max_tokens": budget, "stream": stream,
                              "messages": [{"role": "user", "content": _words(size)}]}, stream),
            ("/v1/responses", {"model": model, "input": _words(size), "max_output_tokens": budget, "stream": stream},
             stream),
            ("/v1/embeddings", {"model": model, "input": [_words(size), "short"]}, False),
            ("/tokenize", {"model": model, "content": _words(size)}, False),
            ("/v1/messages/count_tokens", {"model": model, "messages": HI}, False),
        ]  # fmt: skip
        return rng.choice(kinds)

    async def one(self, disconnect_share: float = 0.15, timeout: float = 90.0) -> None:
        """One request; a hang past ``timeout`` raises (the caller's test fails)."""
        path, body, stream = self.request()
        payload = json.dumps(body).encode()
        if self.rng.random() < disconnect_share:
            await asyncio.wait_for(self._hang_up(path, payload), timeout)
            self.outcomes["disconnected"] += 1
            return
        response = await self.http.fetch(
            self.url + path, method="POST", body=payload, raise_error=False, request_timeout=timeout
        )
        self.outcomes[judge(path, stream, response.code, response.body or b"")] += 1

    async def _hang_up(self, path: str, body: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(reader.read(self.rng.choice([1, 300])), self.rng.choice([0.001, 0.05, 0.3]))
        writer.close()

    def bad(self) -> dict[str, int]:
        return {k: v for k, v in self.outcomes.items() if k.startswith("bad")}


_STREAM_ENDS = {
    "/v1/chat/completions": b"data: [DONE]",
    "/v1/completions": b"data: [DONE]",
    "/v1/messages": b"event: message_stop",
    "/v1/responses": b"event: response.completed",
}


def _error_code(event: bytes) -> str:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                data = json.loads(line[5:])
            except ValueError:
                return "(unreadable)"
            error = data.get("error", data) if isinstance(data, dict) else {}
            return str(error.get("code") or error.get("type") or "")[:40]
    return ""


def judge(path: str, stream: bool, status: int, body: bytes) -> str:
    """'ok' (a complete answer), 'error NNN' (a clean error), 'too_large', or 'bad ...'."""
    text = body.rstrip()
    if status == 200 and stream:
        events = [e for e in text.split(b"\n\n") if e.strip() and not e.startswith(b":")]
        last = events[-1] if events else b""
        if b'"error"' in last or last.startswith(b"event: error"):
            if any(mark in last for mark in (b"context_length_exceeded", b"prompt is too long", b"in one batch")):
                return "too_large"  # found once the response had begun (a loading-feedback stream)
            return "error in stream " + _error_code(last)
        if path == "/completion":
            return "ok" if b'"stop": true' in last or b'"stop":true' in last else f"bad cut {last[-80:]!r}"
        end = _STREAM_ENDS[path]
        return "ok" if end in last else f"bad cut {last[-80:]!r}"
    if status == 200:
        try:
            json.loads(body)
        except ValueError:
            return f"bad json {body[:80]!r}"
        return "ok"
    too_large = (b"context_length_exceeded", b"prompt is too long", b"in one batch")
    if status == 400 and any(mark in body for mark in too_large):
        return "too_large"
    if status in (502, 503, 504):
        try:
            json.loads(body)
        except ValueError:
            return f"bad {status} not json {body[:80]!r}"
        return f"error {status}"
    return f"bad {status} {body[:160]!r}"
