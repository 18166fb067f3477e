"""Hostile request bodies and HTTP framing: one test per known attack class on JSON and HTTP parsers.

Every answer is a clear 4xx (OpenAI-shaped when the gateway answers, a bare ``400`` when Tornado
rejects the framing itself), never a 5xx, a hang or an error message that mirrors a huge input;
a rejected body starts no engine; and the gateway serves a normal request afterwards.

Raw sockets throughout, so the bytes on the wire are exactly the attack's. Requests carry
``Connection: close`` and the answer is read to the close, under a hang guard.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import pytest
from tornado import httpserver, netutil, web

from conftest import FakeModel, Gateway, chat_body, events_of, wait_for
from llmgw.errors import ECHO_LIMIT, EngineAnswered, clip, echo
from llmgw.server.json_body import MAX_DEPTH
from llmgw.upstream import EngineHTTPClient, LlamaCppClient

CHAT = "/v1/chat/completions"
GUARD = 20.0  # hang guard for one exchange; never a performance claim
MESSAGE_BOUND = 3 * ECHO_LIMIT  # the longest message: 405 quoting a clipped method and a clipped path
MEGA = 1_000_000


# ----------------------------------------------------------------------------- raw HTTP


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def error(self) -> dict[str, Any]:
        """The gateway's own error: OpenAI-shaped, no traceback, a bounded message."""
        assert self.headers.get("content-type", "").startswith("application/json"), self
        data = json.loads(self.body)
        assert list(data) == ["error"], data
        error = data["error"]
        assert set(error) == {"message", "type", "code"}, error
        assert isinstance(error["message"], str) and error["message"], error
        assert isinstance(error["type"], str) and isinstance(error["code"], str), error
        assert len(error["message"]) <= MESSAGE_BOUND, clip(error["message"], 300)
        assert b"Traceback" not in self.body
        return dict(error)


def parse_responses(data: bytes) -> list[Response]:
    """The responses in what a connection received up to its close (Content-Length, chunked, or close)."""
    responses: list[Response] = []
    for _ in range(100):
        if not data:
            return responses
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"truncated response: {data[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        fields = (line.partition(":") for line in lines[1:])
        headers = {name.strip().lower(): value.strip() for name, _, value in fields}
        if "content-length" in headers:
            size = int(headers["content-length"])
            body, data = rest[:size], rest[size:]
        elif headers.get("transfer-encoding") == "chunked":
            body, data = _dechunk(rest)
        elif 100 <= status < 200:
            body, data = b"", rest
        else:
            body, data = rest, b""
        responses.append(Response(status, headers, body))
    raise AssertionError("more than 100 responses on one connection")


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    body = b""
    for _ in range(100_000):
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return body, data.partition(b"\r\n")[2]
        body, data = body + data[:size], data[size + 2 :]
    raise AssertionError("endless chunked body")


async def exchange(gw: Gateway, data: bytes) -> list[Response]:
    """Send ``data`` in one write; the responses up to the gateway's close (none if it closed without one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread: a reset
            await writer.drain()
        try:
            received = await asyncio.wait_for(reader.read(), GUARD)
        except ConnectionResetError:
            received = b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return parse_responses(received)


def request(
    body: bytes, path: str = CHAT, headers: bytes = b"", method: bytes = b"POST", version: bytes = b"HTTP/1.1"
) -> bytes:
    head = b"%s %s %s\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" % (method, path.encode(), version)
    return head + headers + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body


async def post(gw: Gateway, body: bytes | dict[str, Any], path: str = CHAT) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    (response,) = await exchange(gw, request(raw, path))
    return response


async def assert_still_serves(gw: Gateway, model: str = "m") -> None:
    response = await post(gw, chat_body(model, max_tokens=2))
    assert response.status == 200, response
    assert json.loads(response.body)["object"] == "chat.completion"


def pending_handlers() -> list[asyncio.Task[Any]]:
    """Request handlers still running in this loop (the gateway runs in the test's loop)."""
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") == "RequestHandler._execute"]


def with_field(name: str, raw_value: bytes) -> bytes:
    """A valid chat body plus one field whose value is raw JSON text (for what json.dumps cannot write)."""
    body = json.dumps(chat_body("m", max_tokens=2)).encode()
    return body[:-1] + b', "%s": %s}' % (name.encode(), raw_value)


@pytest.fixture
def gw(io_loop: Any, start_gateway: Any, make_model: Any) -> tuple[Gateway, FakeModel]:
    model = make_model("m", [2048])
    return io_loop.run_sync(lambda: start_gateway([model])), model


# ----------------------------------------------------------------------------- JSON


async def test_deep_nesting_is_400_not_recursion_error(gw: tuple[Gateway, FakeModel]) -> None:
    gateway, m = gw
    deep = {
        "100k arrays": with_field("x", b"[" * 100_000 + b"]" * 100_000),
        "100k objects": with_field("x", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
        "100k unclosed": b"[" * 100_000,
        "one level too deep": with_field("x", b"[" * MAX_DEPTH + b"]" * MAX_DEPTH),  # + the top object
    }
    for name, body in deep.items():
        error = (await post(gateway, body)).error()
        assert "deeper than" in error["message"], (name, error)
    assert m.read_events() == []
    error = (await post(gateway, b'{"model": ' + b"[" * 100_000, "/load")).error()
    assert "deeper than" in error["message"]
    # At the limit, and brackets inside strings (which do not nest), are served.
    at_limit = with_field("x", b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1))
    assert (await post(gateway, at_limit)).status == 200
    in_string = chat_body("m", max_tokens=2, messages=[{"role": "user", "content": "[{" * 5000}])
    assert (await post(gateway, in_string)).status == 200
    await assert_still_serves(gateway)


async def test_non_finite_and_out_of_range_numbers_are_400(gw: tuple[Gateway, FakeModel]) -> None:
    gateway, m = gw
    refused = {
        "NaN": (with_field("temperature", b"NaN"), "NaN"),
        "Infinity": (with_field("temperature", b"Infinity"), "Infinity"),
        "-Infinity": (with_field("top_p", b"-Infinity"), "-Infinity"),
        "1e400": (with_field("temperature", b"1e400"), "1e400"),
        "-1e400": (with_field("temperature", b"-1e400"), "-1e400"),
        "2**64": (with_field("seed", str(2**64).encode()), "64-bit"),
        "-2**63-1": (with_field("seed", str(-(2**63) - 1).encode()), "64-bit"),
        "5000 digits": (with_field("seed", b"9" * 5000), "5000 characters"),
        # Was a 500: the huge budget reached the metrics counter, which cannot hold it as a float.
        "max_tokens 10**4000": (json.dumps(chat_body("m", max_tokens=10**4000)).encode(), "4001 characters"),
        "max_tokens -10**4000": (json.dumps(chat_body("m", max_tokens=-(10**4000))).encode(), "64-bit"),
    }
    for name, (body, expected) in refused.items():
        error = (await post(gateway, body)).error()
        assert error["type"] == "invalid_request_error" and expected in error["message"], (name, error)
    assert m.read_events() == []
    # The edges that are fine: -0, the 64-bit extremes, tiny and long-mantissa doubles.
    for raw in (b"-0", str(2**64 - 1).encode(), str(-(2**63)).encode(), b"1e-400", b"0." + b"3" * 2000):
        response = await post(gateway, with_field("seed", raw))
        assert response.status == 200, (raw[:30], response)
    await assert_still_serves(gateway)


async def test_completion_limits_of_wrong_value_or_type_are_400(gw: tuple[Gateway, FakeModel]) -> None:
    gateway, m = gw
    cases = {
        "max_completion_tokens as 1e3": with_field("max_completion_tokens", b"1e3"),
        "max_tokens as a bool": json.dumps(chat_body("m", max_tokens=True)).encode(),
        "max_tokens negative": json.dumps(chat_body("m", max_tokens=-5)).encode(),
        "max_tokens -1.0": json.dumps(chat_body("m", max_tokens=-1.0)).encode(),
        # Shadowed by max_tokens in the gateway's budget, but the engine reads it too.
        "n_predict a list": json.dumps(chat_body("m", max_tokens=2, n_predict=[1])).encode(),
        "n_predict a string": json.dumps(chat_body("m", max_completion_tokens=2, n_predict="9")).encode(),
    }
    for name, body in cases.items():
        error = (await post(gateway, body)).error()
        assert "must be a non-negative integer" in error["message"], (name, error)
    assert m.read_events() == []
    # -1 is llama.cpp's "until the context is full": the configured reserve is kept free instead.
    assert (await post(gateway, chat_body("m", max_tokens=-1, n_predict=2))).status == 200
    await assert_still_serves(gateway)


async def test_bodies_not_in_utf8_are_400_and_a_bom_is_dropped(start_gateway: Any, make_model: Any) -> None:
    strict = make_model("m", [2048], extra_args=["--fake-strict-json"])  # refuses what is not UTF-8
    counted = make_model("t", [2048], tokenization=True)  # counted by llama-tokenize before its engine runs
    gateway = await start_gateway([strict, counted])
    text = json.dumps(chat_body("m", max_tokens=2))
    refused = {
        "UTF-16 with BOM": (text.encode("utf-16"), "UTF-16"),
        "UTF-16LE": (text.encode("utf-16-le"), "UTF-16"),
        "UTF-16BE": (text.encode("utf-16-be"), "UTF-16"),
        "UTF-32": (text.encode("utf-32"), "UTF-32"),
        "invalid UTF-8": (b'{"model": "m\xff", "messages": []}', "UTF-8"),
        "overlong UTF-8": (b'{"model": "\xc0\xaf"}', "UTF-8"),
        "encoded surrogate": (b'{"model": "\xed\xa0\x80"}', "UTF-8"),
        "raw NUL": (b'{"model": "m\x00"}', "not valid JSON"),
        "lone surrogate escape": (with_field("user", b'"a\\ud800b"'), "surrogate"),
        "lone low surrogate in a key": (with_field("\\udfff", b"1"), "surrogate"),
        # Was a 500: counting with llama-tokenize encodes the text to UTF-8.
        "lone surrogate to be counted": (
            json.dumps({"model": "t", "messages": [{"role": "user", "content": "a\ud800b"}]}).encode(),
            "surrogate",
        ),
    }
    for name, (body, expected) in refused.items():
        error = (await post(gateway, body)).error()
        assert expected in error["message"], (name, error)
    assert strict.read_events() == [] and counted.read_events() == []
    # A UTF-8 BOM is ignored and not forwarded (this engine refuses one); a paired surrogate
    # escape and an escaped NUL are Unicode.
    response = await post(gateway, codecs.BOM_UTF8 + text.encode())
    assert response.status == 200, response
    for content in ('"\\ud83d\\ude00"', '"a\\u0000b"', '"\\\\ud800"'):
        body = b'{"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": %s}]}' % content.encode()
        assert (await post(gateway, body)).status == 200, content
    await assert_still_serves(gateway)
    await assert_still_serves(gateway, "t")


async def test_duplicate_keys_last_wins_and_the_engine_sees_what_was_counted(
    start_gateway: Any, make_model: Any
) -> None:
    # The engine keeps the *first* of duplicate keys: it would read a forwarded body the other
    # way round from the gateway, so the gateway must forward what it parsed, not the raw bytes.
    m = make_model("m", [2048], extra_args=["--fake-strict-json"])  # keeps the *first* of duplicate keys
    gateway = await start_gateway([m])
    short = json.dumps([{"role": "user", "content": "one"}])
    long = json.dumps([{"role": "user", "content": " ".join(["w"] * 50)}])
    body = f'{{"model": "nope", "messages": {short}, "max_tokens": 2, "model": "m", "messages": {long}}}'
    response = await post(gateway, body.encode())
    assert response.status == 200, response
    (served,) = events_of(m, "request")
    assert served["prompt_tokens"] == 53  # the last messages (50 words), as the gateway counted them
    # The last one decides everywhere, validation included.
    error = (await post(gateway, b'{"model": "m", "messages": [], "messages": 1}')).error()
    assert "'messages'" in error["message"]
    error = (await post(gateway, with_field("max_tokens", b'"many"'))).error()
    assert "'max_tokens'" in error["message"]
    assert len(events_of(m, "request")) == 1
    await assert_still_serves(gateway)


async def test_huge_values_are_clipped_in_error_messages(gw: tuple[Gateway, FakeModel]) -> None:
    gateway, m = gw
    huge = "x" * MEGA
    cases = {
        "model name": (chat_body(huge), CHAT, 404),
        "model name to /load": ({"model": huge}, "/load", 404),
        "max_completion_tokens": (chat_body("m", max_completion_tokens=huge), CHAT, 400),
    }
    for name, (body, path, status) in cases.items():
        response = await post(gateway, body, path)
        assert response.status == status, (name, response.status)
        error = response.error()
        assert f"({MEGA + 2} characters)" in error["message"], (name, error)  # repr adds the quotes
    long_path = "/" + "a" * 60_000
    (response,) = await exchange(gateway, request(b"{}", long_path))
    assert response.status == 404 and "60001 characters" in response.error()["message"]
    (response,) = await exchange(gateway, request(b"{}", method=b"A" * 60_000))
    assert response.status == 405 and "60000 characters" in response.error()["message"]
    assert m.read_events() == []
    await assert_still_serves(gateway)


async def test_engine_error_messages_are_clipped() -> None:
    """llama-server quotes the request in some errors (a malformed tools array comes back whole)."""
    statuses = iter([400, 500])

    class Echoing(web.RequestHandler):
        def post(self) -> None:
            self.set_status(next(statuses))
            self.finish({"error": {"message": "tools = " + "x" * MEGA}})

    sockets = netutil.bind_sockets(0, "127.0.0.1")
    server = httpserver.HTTPServer(web.Application([(r"/.*", Echoing)]))
    server.add_sockets(sockets)
    http = EngineHTTPClient.create()
    try:
        engine = LlamaCppClient(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", http)
        for status in (400, 500):  # the engine's own errors are relayed, but not a megabyte of them
            with pytest.raises(EngineAnswered) as info:
                await engine.count_prompt_tokens(chat_body("m"))
            assert info.value.status == status
            assert len(info.value.message) <= MESSAGE_BOUND, clip(info.value.message)
            assert f"({MEGA + 8} characters)" in info.value.message
            assert len(info.value.body) <= 2 * MESSAGE_BOUND
            assert json.loads(info.value.body)["error"]["message"] == info.value.message
    finally:
        http.close()
        server.stop()


def test_echo_and_clip() -> None:
    assert echo("m") == "'m'" and clip("abc", 2) == "ab... (3 characters)"
    assert echo(10**5000) == "<int too large to show>"


WRONG_TYPES: dict[str, dict[str, Any]] = {
    "model a list": {"model": ["m"]},
    "model empty": {"model": ""},
    "messages an object": {"messages": {"role": "user", "content": "hi"}},
    "messages empty": {"messages": []},
    "message a string": {"messages": ["hi"]},
    "role a number": {"messages": [{"role": 1, "content": "hi"}]},
    "content a number": {"messages": [{"role": "user", "content": 1}]},
    "content an object": {"messages": [{"role": "user", "content": {"text": "hi"}}]},
    "content part a number": {"messages": [{"role": "user", "content": [1]}]},
    "content part without type": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
    "stream a string": {"stream": "true"},
    "stream_options a string": {"stream": True, "stream_options": "include_usage"},
    "stream_options a list": {"stream": True, "stream_options": [True]},
    "tools a string": {"tools": "f"},
    "tool a number": {"tools": [1]},
    "tool without type": {"tools": [{"function": {"name": "f"}}]},
    "tool function a string": {"tools": [{"type": "function", "function": "f"}]},
    "tool function without name": {"tools": [{"type": "function", "function": {}}]},
    "max_tokens a string": {"max_tokens": "2"},
    "max_completion_tokens a float": {"max_completion_tokens": 2.5},
    "n_predict an object": {"n_predict": {}},
}


@pytest.mark.parametrize("case", list(WRONG_TYPES))
async def test_wrong_types_in_fields_the_gateway_reads_are_400(gw: tuple[Gateway, FakeModel], case: str) -> None:
    gateway, m = gw
    body = {**chat_body("m", max_tokens=2), **WRONG_TYPES[case]}
    response = await post(gateway, body)
    assert response.status == 400, response
    assert response.error()["type"] == "invalid_request_error"
    assert m.read_events() == []  # refused before any engine starts (llama-server 500s on several)
    await assert_still_serves(gateway)


# ----------------------------------------------------------------------------- HTTP


async def test_oversized_and_odd_headers(start_gateway: Any, make_model: Any) -> None:
    m = make_model("m", [2048])
    gateway = await start_gateway([m], api_keys=["k1"])
    key = b"Authorization: Bearer k1\r\n"
    body = json.dumps(chat_body("m", max_tokens=2)).encode()
    # Over Tornado's 64 KB header limit: it closes the connection without an answer.
    assert await exchange(gateway, request(body, headers=key + b"X-Big: " + b"a" * 100_000 + b"\r\n")) == []
    # Many headers, bytes outside latin-1 (read as latin-1), a key that is not ASCII, no or odd Content-Type.
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(3000))
    (response,) = await exchange(gateway, request(body, headers=key + many))
    assert response.status == 200
    (response,) = await exchange(gateway, request(body, headers=key + b"X-U: \xe2\x98\x83\xff\r\n"))
    assert response.status == 200
    (response,) = await exchange(gateway, request(body, headers=b"Authorization: Bearer \xe9\xff\r\n"))
    assert response.status == 401 and response.error()["code"] == "invalid_api_key"
    # The gateway reads every body as JSON whatever Content-Type says (as llama-server does).
    odd_type = request(body, headers=key).replace(b"application/json", b"text/plain; charset=utf-16")
    assert [r.status for r in await exchange(gateway, odd_type)] == [200]
    no_type = request(body, headers=key).replace(b"Content-Type: application/json\r\n", b"")
    assert [r.status for r in await exchange(gateway, no_type)] == [200]
    assert len(events_of(m, "request")) == 4


ODD_AUTH: list[tuple[bytes, int]] = [
    (b"Authorization: Bearer\r\n", 401),
    (b"Authorization: Bearer \r\n", 401),
    (b"Authorization: Bearer k1 k1\r\n", 401),
    (b"Authorization: Bearer  k1\t\r\n", 200),  # white space around the key is not part of it
    (b"Authorization: BEARER k1\r\n", 200),
    (b"Authorization: Basic azE6\r\n", 401),
    (b"Authorization: Basic azE6\r\nx-api-key: k1\r\n", 200),  # not a bearer token: x-api-key decides
    (b"Authorization: Bearer wrong\r\nx-api-key: k1\r\n", 401),  # a bearer token decides
    (b"Authorization: Bearer k1\r\nAuthorization: Bearer k1\r\n", 401),  # two: "k1,Bearer k1"
    (b"x-api-key: k1\r\nx-api-key: k2\r\n", 401),
    (b"Authorization: Bearer " + b"k" * 60_000 + b"\r\n", 401),
    (b"Authorization: Bearer k1\x00\r\n", 400),  # Tornado refuses a NUL in a header
    (b"Authorization: Bearer \xff\xfe\x80\r\n", 401),
    (b"Authorization: Bearer \xc3\xa9\r\n", 401),
    (b"x-api-key: \r\n", 401),
    (b"Authorization: \r\n", 401),
]


@pytest.mark.parametrize(("header", "status"), ODD_AUTH, ids=[repr(h[:40]) for h, _ in ODD_AUTH])
async def test_odd_authorization_headers_with_keys(
    start_gateway: Any, make_model: Any, header: bytes, status: int
) -> None:
    m = make_model("m", [2048])
    keys = {"k1": {"key": "k1", "models": ["m"], "requests_per_minute": 1000}, "k2": {"key": "k2", "admin": True}}
    gateway = await start_gateway([m], keys=keys)
    body = json.dumps(chat_body("m", max_tokens=2)).encode()
    for path, method in ((CHAT, b"POST"), ("/v1/models", b"GET"), ("/running", b"GET")):
        (response,) = await exchange(gateway, request(body if method == b"POST" else b"", path, header, method))
        expected = 403 if path == "/running" and status == 200 else status  # k1 is no admin
        assert response.status == expected, (path, response)
        if response.status in (401, 403):
            assert response.error()["code"] in ("invalid_api_key", "permission_denied")
            assert b"k1" not in response.body.replace(b"'k1'", b"")  # the name may show, the key never
    assert len(events_of(m, "request")) == (1 if status == 200 else 0)
    await assert_still_serves_with(gateway, b"Authorization: Bearer k1\r\n")


async def assert_still_serves_with(gw: Gateway, header: bytes) -> None:
    (response,) = await exchange(gw, request(json.dumps(chat_body("m", max_tokens=2)).encode(), CHAT, header))
    assert response.status == 200, response


FRAMING = {
    "Content-Length and chunked": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two Content-Lengths": b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "negative Content-Length": b"Content-Length: -5\r\n\r\nhello",
    "Content-Length not a number": b"Content-Length: five\r\n\r\nhello",
    "Content-Length with a sign": b"Content-Length: +5\r\n\r\nhello",
    "Content-Length in superscript": b"Content-Length: \xb2\r\n\r\nhi",  # str.isdigit() said yes: was a 500
    "bad chunk size": b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "negative chunk size": b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "huge chunk size": b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 40 + b"\r\nhello\r\n0\r\n\r\n",
    "chunk longer than its size": b"Transfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
    "unknown transfer coding": b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
}


async def test_content_length_and_transfer_encoding_conflicts(gw: tuple[Gateway, FakeModel]) -> None:
    """Tornado refuses these framings itself: a bare ``400 Bad Request``, then it closes."""
    gateway, m = gw
    for name, rest in FRAMING.items():
        responses = await exchange(gateway, b"POST %s HTTP/1.1\r\nHost: x\r\n" % CHAT.encode() + rest)
        assert [r.status for r in responses] == [400], (name, responses)
    # A Content-Length too long for int() (was a 500) is over any limit: the gateway's own 413.
    huge_length = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n" % (CHAT.encode(), b"9" * 5000)
    (response,) = await exchange(gateway, huge_length)
    assert response.status == 413 and "5000 characters" in response.error()["message"]
    # Every one of those handlers ended (they used to wait for ever for a body that would never come).
    await wait_for(lambda: not pending_handlers(), what="the handlers of refused bodies to end")
    assert m.read_events() == []
    await assert_still_serves(gateway)


async def test_clients_leaving_mid_body_leave_no_handler_behind(gw: tuple[Gateway, FakeModel]) -> None:
    gateway, m = gw
    for framing in (b'Content-Length: 100\r\n\r\n{"mo', b'Transfer-Encoding: chunked\r\n\r\n64\r\n{"mo'):
        for _ in range(3):
            _reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(b"POST %s HTTP/1.1\r\nHost: x\r\n" % CHAT.encode() + framing)
            await writer.drain()
            await wait_for(lambda: bool(pending_handlers()), what="the gateway to start reading the body")
            writer.close()
            await writer.wait_closed()
            await wait_for(lambda: not pending_handlers(), what="the handler of an abandoned body to end")
    assert m.read_events() == []
    await assert_still_serves(gateway)


async def test_pipelining_expect_continue_and_old_http_versions(gw: tuple[Gateway, FakeModel]) -> None:
    """Regression guards (no fix needed): each gets the answer HTTP/1.1 says it should."""
    gateway, m = gw
    body = json.dumps(chat_body("m", max_tokens=2)).encode()
    keep_alive = request(body).replace(b"Connection: close\r\n", b"")
    # Two requests in one write: two answers, in order.
    responses = await exchange(gateway, keep_alive + request(json.dumps(chat_body("nope")).encode()))
    assert [r.status for r in responses] == [200, 404]
    assert responses[1].error()["code"] == "model_not_found"
    # Expect: 100-continue gets the interim answer; over the size limit it gets 413 instead.
    responses = await exchange(gateway, request(body, headers=b"Expect: 100-continue\r\n"))
    assert [r.status for r in responses] == [100, 200]
    too_big = b"POST %s HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 9999999999\r\n\r\n" % (
        CHAT.encode()
    )
    (response,) = await exchange(gateway, too_big)
    assert response.status == 413
    # HTTP/1.0: no chunking, so a relayed answer ends with the close, keep-alive asked or not;
    # an answer of known length keeps an HTTP/1.0 keep-alive connection open.
    # (Keep-alive relays used to hang: Tornado kept the connection open with no end in sight.)
    stream = json.dumps(chat_body("m", max_tokens=2, stream=True)).encode()
    for payload in (body, stream):
        for connection in (b"", b"Connection: keep-alive\r\n"):
            http10 = request(payload, version=b"HTTP/1.0").replace(b"Connection: close\r\n", connection)
            (response,) = await exchange(gateway, http10)
            assert response.status == 200 and response.body.rstrip().endswith((b"}", b"[DONE]")), response
    health = b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    assert [r.status for r in await exchange(gateway, health + b"GET /health HTTP/1.0\r\n\r\n")] == [200, 200]
    # No HTTP version (HTTP/0.9 style) or an unknown one: Tornado's bare 400.
    for line in (b"GET /health\r\n\r\n", b"POST /v1/chat/completions\r\n\r\n", b"GET /health HTTP/2.0\r\n\r\n"):
        assert [r.status for r in await exchange(gateway, line)] == [400], line
    await assert_still_serves(gateway)
    assert len(events_of(m, "request")) == 7


# ----------------------------------------------------------------------------- Ollama's routes

OLLAMA_BODIES = {
    "/api/chat": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False,
                  "options": {"num_predict": 2}},
    "/api/generate": {"model": "m", "prompt": "a b", "stream": False, "options": {"num_predict": 2}},
    "/api/embed": {"model": "m", "input": "a b"},
    "/api/embeddings": {"model": "m", "prompt": "a b"},
    "/api/show": {"model": "m"},
    "/api/pull": {"model": "m", "stream": False},
}  # fmt: skip


def ollama_error(response: Response) -> str:
    """Ollama's error shape: ``{"error": "..."}``, a string (its clients crash on an object), bounded."""
    assert response.headers.get("content-type", "").startswith("application/json"), response
    data = json.loads(response.body)
    assert list(data) == ["error"] and isinstance(data["error"], str) and data["error"], data
    assert len(data["error"]) <= MESSAGE_BOUND, clip(data["error"], 300)
    assert b"Traceback" not in response.body
    return str(data["error"])


def ollama_with_field(path: str, name: str, raw_value: bytes) -> bytes:
    body = json.dumps(OLLAMA_BODIES[path]).encode()
    return body[:-1] + b', "%s": %s}' % (name.encode(), raw_value)


@pytest.mark.parametrize("path", list(OLLAMA_BODIES))
async def test_hostile_bodies_on_the_ollama_routes(gw: tuple[Gateway, FakeModel], path: str) -> None:
    gateway, m = gw
    hostile = {
        "empty": b"",
        "not JSON": b"{nope",
        "not an object": b"[1, 2]",
        "deep nesting": ollama_with_field(path, "x", b"[" * 100_000 + b"]" * 100_000),
        "NaN": ollama_with_field(path, "options", b'{"temperature": NaN}'),
        "1e400": ollama_with_field(path, "options", b'{"temperature": 1e400}'),
        "5000 digits": ollama_with_field(path, "options", b'{"seed": ' + b"9" * 5000 + b"}"),
        "past 64 bits": ollama_with_field(path, "options", b'{"num_ctx": 1e300}'),
        "lone surrogate": ollama_with_field(path, "x", b'"\\ud800"'),
        "UTF-16": json.dumps(OLLAMA_BODIES[path]).encode("utf-16"),
        "huge model name": json.dumps({**OLLAMA_BODIES[path], "model": "x" * MEGA}).encode(),
        "huge keep_alive": json.dumps({**OLLAMA_BODIES[path], "keep_alive": "5" * MEGA + "x"}).encode(),
        "huge option name": json.dumps({**OLLAMA_BODIES[path], "options": {"x" * MEGA: "y", "top_k": "z"}}).encode(),
        "model a list": json.dumps({**OLLAMA_BODIES[path], "model": ["m"]}).encode(),
    }
    unread = {"past 64 bits", "huge keep_alive", "huge option name"}  # fields /api/show and /api/pull ignore
    for name, body in hostile.items():
        response = await post(gateway, body, path)
        if name in unread and path in ("/api/show", "/api/pull"):
            assert response.status == 200, (path, name, response.status, response.body[:200])
        else:
            assert 400 <= response.status < 500, (path, name, response.status, response.body[:200])
            ollama_error(response)
    assert events_of(m, "request") == []  # nothing reached an engine
    await assert_still_serves(gateway)
