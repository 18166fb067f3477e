"""The engine HTTP client: chunked bodies decoded a read at a time, keep-alive connections reused,
a stale pooled connection retried once for counting only, connections gone with their engine,
backpressure from a client that does not read. Bounds below are hang guards, not timing claims."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import chat_body, running
from llmgw.upstream.http import EngineHTTPClient, UpstreamCall, UpstreamError
from llmgw.upstream.http1 import ExchangeError, Head, _Body, _keep_alive, parse_head

GUARD = 30.0
CHAT = "/v1/chat/completions"

# ----------------------------------------------------------------------------- chunked bodies


def chunked(payloads: list[bytes], extension: bool = False, trailers: bool = False) -> bytes:
    out = b""
    for payload in payloads:
        size = b"%x" % len(payload)
        out += size.upper() if len(payloads) % 2 else size
        out += b";name=value" if extension else b""
        out += b"\r\n" + payload + b"\r\n"
    return out + b"0\r\n" + (b"X-Trailer: 1\r\n" if trailers else b"") + b"\r\n"


def chunked_head() -> Head:
    return Head("HTTP/1.1", 200, "OK", [("Transfer-Encoding", "chunked")])


payload = st.one_of(
    st.binary(min_size=1, max_size=60),
    st.sampled_from([b"data: {}\n\n", b"a\r\nb", b"\r\n", b"\r", b"x\r", b"\n", b"0\r\n\r\n", b"5\r\nhello"]),
)


@settings(max_examples=300, deadline=None)
@given(
    payloads=st.lists(payload, max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=10),
    extension=st.booleans(),
    trailers=st.booleans(),
)
def test_a_chunked_body_decodes_the_same_whatever_the_reads(
    payloads: list[bytes], cuts: list[int], extension: bool, trailers: bool
) -> None:
    wire = chunked(payloads, extension, trailers)
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    body = _Body(chunked_head(), "POST")
    out = b""
    for start, end in itertools.pairwise(points):
        assert not body.done
        out += b"".join(bytes(piece) for piece in body.feed(wire[start:end]))
    assert body.done
    assert out == b"".join(payloads)


def test_many_small_chunks_take_the_bulk_path_and_stop_at_the_end() -> None:
    events = [b'data: {"n": %d}\n\n' % i for i in range(500)]
    wire = chunked(events)
    body = _Body(chunked_head(), "POST")
    pieces = body.feed(wire)
    assert body.done and b"".join(bytes(p) for p in pieces) == b"".join(events)
    assert len(pieces) == 500 and all(isinstance(p, bytes) for p in pieces)  # whole chunks, in one pass


@pytest.mark.parametrize(
    "wire",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",  # not hex
        b"5\r\nhelloXX0\r\n\r\n",  # no CRLF after the payload
        b"5\r\nhello\r\n0\r\n\r\nextra",  # bytes after the end
        b"1" * 2000,  # a size line that never ends
    ],
)
def test_a_malformed_chunked_body_is_an_error(wire: bytes) -> None:
    body = _Body(chunked_head(), "POST")
    with pytest.raises(ExchangeError):
        body.feed(wire)
        if not body.done:
            body.feed(b"\r\n")


def test_length_and_close_delimited_bodies() -> None:
    body = _Body(Head("HTTP/1.1", 200, "OK", [("Content-Length", "5")]), "GET")
    assert body.feed(b"hel") == [b"hel"] and not body.done
    assert body.feed(b"lo") == [b"lo"] and body.done
    with pytest.raises(ExchangeError):
        _Body(Head("HTTP/1.1", 200, "OK", [("Content-Length", "5")]), "GET").feed(b"hello!")
    with pytest.raises(ExchangeError):
        _Body(Head("HTTP/1.1", 200, "OK", [("Content-Length", "5"), ("Content-Length", "6")]), "GET")
    to_close = _Body(Head("HTTP/1.1", 200, "OK"), "GET")
    assert to_close.to_close and to_close.feed(b"anything") == [b"anything"]
    assert _Body(Head("HTTP/1.1", 204, "No Content"), "GET").done


def test_keep_alive_follows_what_the_engine_announces() -> None:
    head = parse_head(b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\nContent-Length: 0")
    assert _keep_alive(head) == 4.0  # a second before llama-server closes it
    assert _keep_alive(parse_head(b"HTTP/1.1 200 OK\r\nConnection: close")) is None
    assert _keep_alive(parse_head(b"HTTP/1.0 200 OK")) is None
    assert _keep_alive(parse_head(b"HTTP/1.1 200 OK")) == 4.0
    with pytest.raises(ExchangeError):
        parse_head(b"SPDY 200 OK")
    with pytest.raises(ExchangeError):
        parse_head(b"HTTP/1.1 200 OK\r\nno colon here")


# ----------------------------------------------------------------------------- a scripted engine

# (connection, request number on it, request) -> the answer; None: close without answering; (answer, True):
# answer, then close; (answer, seconds): answer, then close that much later.
Answer = Callable[[int, int, bytes], Awaitable[bytes | tuple[bytes, bool | float] | None]]


class Scripted:
    """A raw TCP server that answers each request as ``answer`` says (None: close without answering)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.closed_by_peer = 0
        self.server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self._writers:
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 5)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        self._writers.append(writer)
        try:
            for number in range(1000):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_peer += 1
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                answer = await self.answer(index, number, request)
                if answer is None:
                    return
                data, close = answer if isinstance(answer, tuple) else (answer, False)
                writer.write(data)
                await writer.drain()
                if close:
                    if not isinstance(close, bool):
                        await asyncio.sleep(close)
                    return
        finally:
            writer.close()


def json_answer(payload: Any, extra: str = "Keep-Alive: timeout=5, max=100\r\n") -> bytes:
    data = json.dumps(payload).encode()
    return (
        f"HTTP/1.1 200 OK\r\n{extra}Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


STREAM = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(
    [b'data: {"model":"x","n":1}\n\n', b"data: [DONE]\n\n"]
)


async def always_json(connection: int, number: int, request: bytes) -> bytes:
    if b"/stream" in request:
        return STREAM
    return json_answer({"input_tokens": 3})


@pytest.fixture
def client(io_loop: Any) -> Any:
    http = EngineHTTPClient.create()
    yield http
    http.close()


async def forward(http: EngineHTTPClient, url: str) -> bytes:
    call = UpstreamCall(http, url, b"{}", {"Content-Type": "application/json"})
    status, _ = await call.head(GUARD)
    assert status == 200
    body = await call.read_body()
    call.abort()  # as the proxy does once it is done: a no-op on a complete exchange
    return body


async def test_count_and_forward_reuse_one_connection(client: EngineHTTPClient) -> None:
    async with Scripted(always_json) as engine:
        for _ in range(3):
            assert await client.json_call(engine.url + "/count", {"a": 1}) == (200, {"input_tokens": 3})
        assert b"[DONE]" in await forward(client, engine.url + "/stream")
        assert await client.json_call(engine.url + "/count", {"a": 1}) == (200, {"input_tokens": 3})
        assert engine.connections == 1


async def test_a_forward_that_meets_the_close_after_a_stream_goes_on_a_new_connection(
    client: EngineHTTPClient,
) -> None:
    """llama-server closes a connection after an event stream (its head says keep-alive all the
    same), without reading what was sent on it meanwhile: such a forward is sent again, once."""
    answered: list[int] = []

    async def like_llama_server(connection: int, number: int, request: bytes) -> bytes | tuple[bytes, float]:
        answered.append(connection)
        if b"/stream" in request:  # closed a moment after the stream's end (llama-server releases its slot first)
            return STREAM.replace(b"200 OK\r\n", b"200 OK\r\nKeep-Alive: timeout=5, max=100\r\n"), 0.2
        return json_answer({"input_tokens": 3})

    async with Scripted(like_llama_server) as engine:
        for _ in range(3):
            assert b"[DONE]" in await forward(client, engine.url + "/stream")  # at once: the close is not seen yet
        assert answered == [0, 1, 2]  # each answered once, each on a new connection after the close

    async def closes_without_a_stream(connection: int, number: int, request: bytes) -> tuple[bytes, float]:
        return json_answer({"n": connection}), 0.2

    async with Scripted(closes_without_a_stream) as engine:  # no stream before: a forward is never sent twice
        assert b'"n": 0' in await forward(client, engine.url + "/a")
        call = UpstreamCall(client, engine.url + "/a", b"{}", {})
        with pytest.raises(UpstreamError):
            await call.head(GUARD)


async def test_an_answer_that_says_close_is_not_reused(client: EngineHTTPClient) -> None:
    async def closing(connection: int, number: int, request: bytes) -> bytes:
        return json_answer({"ok": True}, "Connection: close\r\n")

    async with Scripted(closing) as engine:
        for _ in range(3):
            assert (await client.json_call(engine.url + "/x"))[0] == 200
        assert engine.connections == 3


async def test_a_stale_pooled_connection_is_retried_once_for_a_count_only(client: EngineHTTPClient) -> None:
    # The engine keeps the first connection open after one answer, then drops it when the next
    # request comes (as a restarted engine would): the count goes through on a new connection.
    async def restarted(connection: int, number: int, request: bytes) -> bytes | None:
        if connection == 0 and number == 1:
            return None
        if b"/stream" in request:
            return STREAM
        return json_answer({"input_tokens": 3})

    async with Scripted(restarted) as engine:
        assert (await client.json_call(engine.url + "/count", {}))[0] == 200
        assert await client.json_call(engine.url + "/count", {}) == (200, {"input_tokens": 3})
        assert engine.connections == 2

    async with Scripted(restarted) as engine:
        assert (await client.json_call(engine.url + "/count", {}))[0] == 200
        call = UpstreamCall(client, engine.url + "/stream", b"{}", {})
        with pytest.raises(UpstreamError):  # a forward is never sent twice
            await call.head(GUARD)
        assert engine.connections == 1


async def test_a_connection_the_engine_closed_while_idle_is_not_used(client: EngineHTTPClient) -> None:
    async def close_after_answer(connection: int, number: int, request: bytes) -> tuple[bytes, bool]:
        return (STREAM if b"/stream" in request else json_answer({"n": connection})), True

    async with Scripted(close_after_answer) as engine:
        assert await client.json_call(engine.url + "/a") == (200, {"n": 0})
        await asyncio.sleep(0.2)  # the engine closes its side; the pool notices the EOF
        assert b"[DONE]" in await forward(client, engine.url + "/stream")  # no retry needed, none allowed
        assert engine.connections == 2


async def test_an_idle_connection_is_not_kept_past_the_engine_keep_alive(client: EngineHTTPClient) -> None:
    async def short(connection: int, number: int, request: bytes) -> bytes:
        return json_answer({"n": connection}, "Keep-Alive: timeout=1\r\n")

    async with Scripted(short) as engine:
        assert await client.json_call(engine.url + "/a") == (200, {"n": 0})
        assert await client.json_call(engine.url + "/a") == (200, {"n": 0})
        await asyncio.sleep(0.8)  # kept 0.5 s: the engine's 1 s minus a margin (floor 0.5 s)
        assert await client.json_call(engine.url + "/a") == (200, {"n": 1})


async def test_forget_closes_the_pooled_connections(client: EngineHTTPClient) -> None:
    async with Scripted(always_json) as engine:
        assert (await client.json_call(engine.url + "/a"))[0] == 200
        client.forget(engine.url)

        async def closed() -> bool:
            return engine.closed_by_peer == 1

        for _ in range(int(GUARD / 0.02)):
            if await closed():
                break
            await asyncio.sleep(0.02)
        assert engine.closed_by_peer == 1
        assert (await client.json_call(engine.url + "/a"))[0] == 200
        assert engine.connections == 2


async def test_interim_answers_and_malformed_answers(client: EngineHTTPClient) -> None:
    async def odd(connection: int, number: int, request: bytes) -> bytes:
        if b"/continue" in request:
            return b"HTTP/1.1 100 Continue\r\n\r\n" + json_answer({"ok": 1})
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"

    async with Scripted(odd) as engine:
        assert await client.json_call(engine.url + "/continue") == (200, {"ok": 1})
        with pytest.raises(UpstreamError):
            await client.json_call(engine.url + "/broken")
        assert await client.json_call(engine.url + "/continue") == (200, {"ok": 1})
        assert engine.connections == 2  # a connection that carried a broken answer is never reused


# ----------------------------------------------------------------------------- through the gateway


def _engine_address(gw: Any) -> tuple[str, int]:
    return ("127.0.0.1", int(gw.config.models[0].variants[0].connect.rsplit(":", 1)[1]))


async def test_engine_connections_are_pooled_and_go_away_with_the_engine(start_gateway, make_model, http) -> None:
    from conftest import post

    m = make_model("m", [2048])
    gw = await start_gateway([m])
    pool = gw.server.services.http.pool
    for _ in range(3):
        assert (await post(http, gw.url + CHAT, chat_body("m", max_tokens=2))).code == 200
    assert pool.idle_count(_engine_address(gw)) >= 1
    assert (await post(http, gw.url + "/unload", {})).code == 200
    assert (await running(http, gw))["engines"] == []
    assert pool.idle_count(_engine_address(gw)) == 0


async def test_a_client_that_does_not_read_stops_the_engine_being_read(start_gateway, make_model, http) -> None:
    m = make_model("m", [1 << 22], extra_args=["--fake-tokens", "300000"])
    gw = await start_gateway([m])
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, limit=1024)
    body = json.dumps(chat_body("m", stream=True, max_tokens=300000)).encode()
    head = f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    try:
        await asyncio.wait_for(reader.readuntil(b"data:"), GUARD)  # then read nothing more

        def engine_paused() -> bool:
            # The relay's queue is full and the engine's socket is no longer read: the engine's
            # own writes block, nothing piles up in the gateway.
            calls = list(gw.server.services.proxy.active)
            conns = [call._abort_exchange.__self__.conn for call in calls if call._abort_exchange is not None]
            return bool(conns) and all(call._queue.full() for call in calls) and all(c._paused for c in conns)

        for _ in range(int(GUARD / 0.05)):
            if engine_paused():
                break
            await asyncio.sleep(0.05)
        assert engine_paused()
        await asyncio.sleep(0.5)
        (call,) = gw.server.services.proxy.active
        assert len(call._abort_exchange.__self__.conn.buffer) < 4 * 1024 * 1024  # bounded, not the whole stream
        assert not [e for e in m.read_events() if e["event"] == "done"]
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_a_non_streamed_answer_goes_out_whole_with_its_length(start_gateway, make_model, http) -> None:
    from conftest import post

    gw = await start_gateway([make_model("m", [2048])])
    resp = await post(http, gw.url + CHAT, chat_body("m", max_tokens=2))
    assert resp.code == 200
    assert resp.headers["Content-Length"] == str(len(resp.body))
    assert "Transfer-Encoding" not in resp.headers
    streamed = await post(http, gw.url + CHAT, chat_body("m", max_tokens=2, stream=True))
    assert streamed.headers.get("Transfer-Encoding") == "chunked"
