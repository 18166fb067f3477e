"""A stand-in for llama-server that streams SSE faster than the gateway can relay it.

The fake engine (Tornado, one JSON encode per token) produces 20-40k chunks/s here: slower than
the gateway, so a streaming benchmark on it measures the engine. This one writes pre-built
events on a raw asyncio transport, one HTTP chunk and one ``write`` per SSE event as llama-server
does (about 250k chunks/s on this machine), so the gateway is the slow part and its own cost shows.

It answers what the gateway asks of an engine: ``GET /health``, ``GET /props`` (the context),
the count routes (a fixed count) and ``POST /v1/chat/completions`` (streamed: ``--chunks``
content events, a finish event and ``[DONE]``; not streamed: a small answer). Every answer names
the model by its ``-m`` path, as llama-server does, so the gateway has names to rewrite. A
request field ``fast_delay`` (seconds) slows a stream down; with ``--events FILE`` a connection
that closes mid-stream is noted there (``{"event": "closed", "t": time.time()}``).

    python benchmarks/fast_source.py --port 18000 --chunks 10000 -c 8192 -m /models/fast.gguf
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

_CHUNK_CONTENT = (
    '{{"choices":[{{"finish_reason":null,"index":0,"delta":{{"content":"tok{i}"}}}}],"created":{created},'
    '"id":"chatcmpl-fast","model":{model},"system_fingerprint":"b1-fast","object":"chat.completion.chunk"}}'
)
_MAX_HEAD = 64 * 1024


def sse_frames(chunks: int, model: str) -> list[bytes]:
    """Every HTTP chunk of one streamed answer, in order (terminating chunk included)."""
    created = int(time.time())
    name = json.dumps(model)
    events = [
        '{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],'
        f'"created":{created},"id":"chatcmpl-fast","model":{name},"system_fingerprint":"b1-fast",'
        '"object":"chat.completion.chunk"}'
    ]
    events += [_CHUNK_CONTENT.format(i=i, created=created, model=name) for i in range(chunks)]
    events.append(
        '{"choices":[{"finish_reason":"length","index":0,"delta":{}}],'
        f'"created":{created},"id":"chatcmpl-fast","model":{name},"system_fingerprint":"b1-fast",'
        '"object":"chat.completion.chunk","timings":{"cache_n":0,"prompt_n":8,"predicted_n":'
        f"{chunks}" + "}}"
    )
    events.append("[DONE]")
    frames = []
    for event in events:
        payload = f"data: {event}\n\n".encode()
        frames.append(b"%x\r\n%s\r\n" % (len(payload), payload))
    frames.append(b"0\r\n\r\n")
    return frames


class Source(asyncio.Protocol):
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._busy = False
        self._streaming = False
        self._task: asyncio.Task[None] | None = None  # the answer being written (a reference keeps it alive)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._can_write.set()
        if self._streaming and self.options.events:
            with open(self.options.events, "a") as out:
                out.write(json.dumps({"event": "closed", "t": time.time()}) + "\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self._busy:
            self._next()

    def _next(self) -> None:
        """Answer the next complete request in the buffer (one at a time, in order)."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > _MAX_HEAD and self.transport is not None:
                self.transport.close()
            return
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if len(self.buffer) < end + 4 + length:
            return
        body = self.buffer[end + 4 : end + 4 + length]
        self.buffer = self.buffer[end + 4 + length :]
        method, path = lines[0].split(" ")[:2]
        self._busy = True
        self._task = asyncio.ensure_future(self._answer(method, path.split("?")[0], body))

    async def _answer(self, method: str, path: str, body: bytes) -> None:
        try:
            if method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
                request = json.loads(body or b"{}")
                if request.get("stream"):
                    await self._stream(float(request.get("fast_delay") or 0.0))
                else:
                    self._json(200, self._completion())
            elif path.endswith("/input_tokens") or path == "/v1/messages/count_tokens":
                self._json(200, {"input_tokens": 8, "object": "response.input_tokens"})
            elif path == "/tokenize":
                self._json(200, {"tokens": [2, 10, 11, 12, 13, 14, 15, 16]})
            elif path in ("/health", "/v1/health"):
                self._json(200, {"status": "ok"})
            elif path == "/props":
                settings = {"n_ctx": self.options.ctx_size}
                self._json(
                    200, {"default_generation_settings": settings, "total_slots": 1, "model_path": self.options.model}
                )
            else:
                self._json(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})
        finally:
            self._busy = False
            if self.transport is not None and not self.transport.is_closing():
                self._next()

    def _completion(self) -> dict[str, object]:
        return {
            "choices": [
                {"finish_reason": "length", "index": 0, "message": {"role": "assistant", "content": "tok0 tok1"}}
            ],
            "created": int(time.time()),
            "model": self.options.model,
            "object": "chat.completion",
            "usage": {"completion_tokens": 2, "prompt_tokens": 8, "total_tokens": 10},
            "id": "chatcmpl-fast",
        }

    def _json(self, status: int, payload: object) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        reason = {200: "OK", 404: "Not Found"}[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\nKeep-Alive: timeout=5, max=100000\r\n"
            f"Content-Type: application/json; charset=utf-8\r\nServer: llama.cpp\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
        if self.transport is not None:
            self.transport.write(head + data)

    async def _stream(self, delay: float) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(
            b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100000\r\nContent-Type: text/event-stream\r\n"
            b"Server: llama.cpp\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self._streaming = True
        try:
            for frame in sse_frames(self.options.chunks, self.options.model):
                if transport.is_closing():
                    return
                transport.write(frame)  # one chunk, one write (llama-server writes each event on its own)
                if delay:
                    await asyncio.sleep(delay)
                if not self._can_write.is_set():
                    await self._can_write.wait()
        finally:
            self._streaming = False


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=10000, help="content events per streamed answer")
    parser.add_argument("-c", "--ctx-size", type=int, default=8192)
    parser.add_argument("-m", "--model", default="/models/fast.gguf")
    parser.add_argument("--events", help="append a line when a connection closes mid-stream")
    options, _ = parser.parse_known_args(argv)  # anything else a config passes is ignored
    return options


async def main(argv: list[str]) -> None:
    options = parse_args(argv)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Source(options), options.host, options.port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"main: server is listening on http://{options.host}:{options.port}", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
