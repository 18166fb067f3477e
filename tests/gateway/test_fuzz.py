"""Bad input never gets a 500 or a traceback, never leaks a process, and the gateway keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httpclient import AsyncHTTPClient

from conftest import FakeModel, Gateway, chat_body
from llmgw.api.endpoints import Dialect, dialect_of

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture
def fuzz_gateway(
    io_loop: Any, start_gateway: Callable[..., Awaitable[Gateway]], make_model: Callable[..., FakeModel]
) -> Gateway:
    model = make_model("alpha", [128, 512], extra_args=["--embeddings", "--reranking", "--fake-infill"])
    return io_loop.run_sync(lambda: start_gateway([model], max_body_size=200_000))


KEYS = {
    "user": {"key": "user-key", "models": ["alpha"], "requests_per_minute": 100000, "max_concurrent": 50},
    "tight": {"key": "tight-key", "requests_per_minute": 1, "tokens_per_day": 1, "priority": "batch"},
    "ops": {"key": "ops-key", "admin": True},
}


@pytest.fixture
def keyed_gateway(
    io_loop: Any, start_gateway: Callable[..., Awaitable[Gateway]], make_model: Callable[..., FakeModel]
) -> Gateway:
    models = [make_model("alpha", [128, 512]), make_model("beta", [256])]
    return io_loop.run_sync(lambda: start_gateway(models, keys=KEYS, api_keys=["old-key"], max_body_size=200_000))


def _request(
    io_loop: Any, gateway: Gateway, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        client = AsyncHTTPClient(force_instance=True)
        try:
            response = await client.fetch(
                gateway.url + path, method=method, body=body, headers=headers, raise_error=False, request_timeout=30
            )
            return response.code, response.body
        finally:
            client.close()

    return io_loop.run_sync(go, timeout=60)


def _post(io_loop: Any, gateway: Gateway, body: bytes, path: str = "/v1/chat/completions") -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        client = AsyncHTTPClient(force_instance=True)
        try:
            response = await client.fetch(
                gateway.url + path, method="POST", body=body, raise_error=False, request_timeout=30
            )
            return response.code, response.body
        finally:
            client.close()

    return io_loop.run_sync(go, timeout=60)


def _assert_clean(status: int, body: bytes, path: str = "/v1/chat/completions") -> None:
    assert status != 599, "no answer"
    assert status < 500, (path, status, body[:300])
    assert b"Traceback" not in body
    if status >= 400 and dialect_of(path) is Dialect.OLLAMA:  # Ollama's shape: the error a string
        error = json.loads(body)["error"]
        assert isinstance(error, str) and error and len(error) <= 1000, body[:300]
    elif status >= 400:
        data = json.loads(body)
        error = data["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert len(error["message"]) <= 1000, error["message"][:300]  # never the whole of a huge input
        assert isinstance(error["type"], str)
        if path.startswith("/v1/messages"):
            assert data["type"] == "error", data  # Anthropic's shape
        else:
            assert "code" in error, data


def _still_serves(io_loop: Any, gateway: Gateway) -> None:
    status, body = _post(io_loop, gateway, json.dumps(chat_body("alpha", 3, max_tokens=2)).encode())
    assert status == 200, body


@FUZZ
@given(body=json_values)
def test_random_json_bodies(io_loop: Any, fuzz_gateway: Gateway, body: Any) -> None:
    _assert_clean(*_post(io_loop, fuzz_gateway, json.dumps(body).encode()))


@FUZZ
@given(body=st.binary(max_size=300))
def test_random_bytes(io_loop: Any, fuzz_gateway: Gateway, body: bytes) -> None:
    _assert_clean(*_post(io_loop, fuzz_gateway, body))


@FUZZ
@given(
    path=st.sampled_from(["/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show", "/api/pull"]),
    body=st.binary(max_size=300),
)
def test_random_bytes_on_the_ollama_routes(io_loop: Any, fuzz_gateway: Gateway, path: str, body: bytes) -> None:
    _assert_clean(*_post(io_loop, fuzz_gateway, body, path), path)


@FUZZ
@given(
    model=st.sampled_from(["alpha", "nope", ""]) | json_values,
    messages=st.just([{"role": "user", "content": "hi there"}]) | json_values,
    field=st.sampled_from(["max_tokens", "max_completion_tokens", "stream", "tools", "temperature", "stop"]),
    value=json_values,
)
def test_wrong_types_in_fields(
    io_loop: Any, fuzz_gateway: Gateway, model: Any, messages: Any, field: str, value: Any
) -> None:
    body = {"model": model, "messages": messages, field: value}
    if field not in ("max_tokens", "max_completion_tokens"):
        body["max_tokens"] = 4
    _assert_clean(*_post(io_loop, fuzz_gateway, json.dumps(body).encode()))


# Every model route and the fields it reads, with a valid body each fuzzed field is put into.
ROUTE_FIELDS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "/v1/completions": ({"model": "alpha", "prompt": "a b", "max_tokens": 2}, ["prompt", "max_tokens", "stream"]),
    "/completion": ({"model": "alpha", "prompt": "a b", "n_predict": 2}, ["prompt", "n_predict", "stream"]),
    "/v1/embeddings": ({"model": "alpha", "input": "a b"}, ["input", "encoding_format"]),
    "/embedding": ({"model": "alpha", "content": "a b"}, ["content", "input"]),
    "/v1/messages": ({"model": "alpha", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
                     ["messages", "max_tokens", "system", "stream", "tools"]),
    "/v1/messages/count_tokens": ({"model": "alpha", "messages": [{"role": "user", "content": "hi"}]},
                                  ["messages", "system", "tools"]),
    "/v1/responses": ({"model": "alpha", "input": "hi", "max_output_tokens": 2},
                      ["input", "max_output_tokens", "instructions", "stream", "tools"]),
    "/v1/responses/input_tokens": ({"model": "alpha", "input": "hi"}, ["input", "instructions"]),
    "/v1/chat/completions/input_tokens": ({"model": "alpha", "messages": [{"role": "user", "content": "hi"}]},
                                          ["messages", "tools"]),
    "/infill": ({"model": "alpha", "input_prefix": "a", "input_suffix": "b", "n_predict": 2},
                ["input_prefix", "input_suffix", "input_extra", "prompt", "n_predict"]),
    "/rerank": ({"model": "alpha", "query": "q", "documents": ["a", "b"]}, ["query", "documents", "top_n"]),
    "/tokenize": ({"model": "alpha", "content": "a b"}, ["content", "add_special", "with_pieces"]),
    "/detokenize": ({"model": "alpha", "tokens": [2, 10]}, ["tokens"]),
    "/apply-template": ({"model": "alpha", "messages": [{"role": "user", "content": "hi"}]}, ["messages"]),
    "/api/chat": ({"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "stream": False,
                   "options": {"num_predict": 2}},
                  ["messages", "options", "stream", "tools", "format", "think", "keep_alive"]),
    "/api/generate": ({"model": "alpha", "prompt": "a b", "stream": False, "options": {"num_predict": 2}},
                      ["prompt", "suffix", "system", "raw", "context", "images", "options", "format", "keep_alive"]),
    "/api/embed": ({"model": "alpha", "input": "a b"}, ["input", "dimensions", "truncate", "options", "keep_alive"]),
    "/api/embeddings": ({"model": "alpha", "prompt": "a b"}, ["prompt", "options", "keep_alive"]),
    "/api/show": ({"model": "alpha"}, ["name", "verbose"]),
    "/api/pull": ({"model": "alpha", "stream": False}, ["name", "stream"]),
}  # fmt: skip
OLLAMA_PATHS = [path for path in ROUTE_FIELDS if path.startswith("/api/")]
ROUTE_CASES = [(path, field) for path, (_, fields) in ROUTE_FIELDS.items() for field in [*fields, "model"]]


@pytest.mark.parametrize(("path", "field"), ROUTE_CASES)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values)
def test_wrong_types_in_every_field_of_every_route(
    io_loop: Any, fuzz_gateway: Gateway, path: str, field: str, value: Any
) -> None:
    body = dict(ROUTE_FIELDS[path][0])
    for candidate in ({k: v for k, v in body.items() if k != field}, {**body, field: value}):  # missing, wrong
        status, answer = _post(io_loop, fuzz_gateway, json.dumps(candidate).encode(), path)
        _assert_clean(status, answer, path)


@FUZZ
@given(path=st.sampled_from(list(ROUTE_FIELDS)), body=json_values)
def test_random_json_bodies_on_every_route(io_loop: Any, fuzz_gateway: Gateway, path: str, body: Any) -> None:
    status, answer = _post(io_loop, fuzz_gateway, json.dumps(body).encode(), path)
    _assert_clean(status, answer, path)


# Values Ollama clients send in the fields the Ollama routes read, mixed with anything.
ollama_values = st.one_of(
    json_values,
    st.sampled_from([0, 0.0, -1, "5m", "-1s", "0s", "1h30m", "json", "high", True, False, [], {}, "", "300"]),
    st.dictionaries(
        st.sampled_from(["num_ctx", "num_predict", "temperature", "top_k", "stop", "seed", "num_keep"]),
        json_values,
        max_size=3,
    ),
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "assistant", "tool", "SYSTEM"]), "content": json_values}
        ),
        max_size=3,
    ),
)


@FUZZ
@given(
    path=st.sampled_from(OLLAMA_PATHS),
    field=st.sampled_from(
        [
            "model",
            "messages",
            "prompt",
            "input",
            "options",
            "keep_alive",
            "format",
            "think",
            "stream",
            "tools",
            "images",
            "suffix",
            "raw",
            "dimensions",
            "context",
        ]
    ),
    value=ollama_values,
)
def test_ollama_fields_with_values_clients_send_and_any_other(
    io_loop: Any, fuzz_gateway: Gateway, path: str, field: str, value: Any
) -> None:
    body = {**ROUTE_FIELDS[path][0], field: value}
    _assert_clean(*_post(io_loop, fuzz_gateway, json.dumps(body).encode(), path), path)


# What json.dumps never writes but a hostile client does: deep nesting, NaN and overflowing
# numbers, integers past 64 bits (and past Python's 4300-digit limit), unpaired surrogates.
raw_values = st.one_of(
    st.tuples(st.integers(1, 3000), st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b"[", b"")])).map(
        lambda t: t[1][0] * t[0] + (b"1" if t[1][0] == b'{"a":' else b"") + t[1][1] * t[0]
    ),
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"-0", b"1e-400", b"1E+2"]),
    st.integers(1, 6000).map(lambda n: b"9" * n),
    st.integers(-(2**70), 2**70).map(lambda i: str(i).encode()),
    st.sampled_from([b'"\\ud800"', b'"\\udfff x"', b'"\\ud83d\\ude00"', b'"a\\u0000"', b'"\\uDBFF"']),
    st.text(min_size=1, max_size=3000).map(lambda t: json.dumps(t).encode()),
)


@FUZZ
@given(
    field=st.sampled_from(
        [
            "model",
            "messages",
            "max_tokens",
            "max_completion_tokens",
            "n_predict",
            "stream",
            "stream_options",
            "tools",
            "temperature",
            "seed",
        ]
    ),
    value=raw_values,
    first=st.booleans(),
)
def test_hostile_raw_values_and_duplicate_keys(
    io_loop: Any, fuzz_gateway: Gateway, field: str, value: bytes, first: bool
) -> None:
    """The field goes in as raw JSON text, before or after the valid body's own keys (a duplicate
    for model, messages and max_tokens: the last one wins)."""
    valid = json.dumps(chat_body("alpha", 3, max_tokens=2)).encode()
    pair = b'"%s": %s' % (field.encode(), value)
    body = b"{" + pair + b", " + valid[1:] if first else valid[:-1] + b", " + pair + b"}"
    _assert_clean(*_post(io_loop, fuzz_gateway, body))


@FUZZ
@given(
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1"]),
    content=st.text(min_size=1, max_size=200),
)
def test_bodies_in_other_encodings(io_loop: Any, fuzz_gateway: Gateway, encoding: str, content: str) -> None:
    text = json.dumps(
        {"model": "alpha", "messages": [{"role": "user", "content": content}], "max_tokens": 2}, ensure_ascii=False
    )
    try:
        body = text.encode(encoding)
    except UnicodeEncodeError:
        return
    status, answer = _post(io_loop, fuzz_gateway, body)
    _assert_clean(status, answer)
    # UTF-8 only (a BOM is ignored): a UTF-16 or UTF-32 body would reach llama-server, which 500s on it.
    try:
        utf8 = not encoding.startswith(("utf-16", "utf-32")) and bool(body.decode("utf-8"))
    except UnicodeDecodeError:  # latin-1 bytes are UTF-8 only by chance
        utf8 = False
    assert status == (200 if utf8 else 400), (status, answer[:300])


@FUZZ
@given(content=st.text(min_size=0, max_size=2000) | st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u202e" * 50]))
def test_odd_unicode_content(io_loop: Any, fuzz_gateway: Gateway, content: str) -> None:
    body = {"model": "alpha", "messages": [{"role": "user", "content": content}], "max_tokens": 2}
    status, answer = _post(io_loop, fuzz_gateway, json.dumps(body).encode())
    _assert_clean(status, answer)
    assert status in (200, 400)


def test_huge_content_is_refused_or_served(io_loop: Any, fuzz_gateway: Gateway) -> None:
    over_limit = json.dumps(chat_body("alpha", 60_000)).encode()  # > max_body_size
    status, body = _post(io_loop, fuzz_gateway, over_limit)
    assert status == 413
    _assert_clean(status, body)
    over_context = json.dumps(chat_body("alpha", 5000, max_tokens=1)).encode()  # fits the body limit, not 512
    status, body = _post(io_loop, fuzz_gateway, over_context)
    assert status == 400 and json.loads(body)["error"]["code"] == "context_length_exceeded"
    _still_serves(io_loop, fuzz_gateway)


def test_random_disconnect_points(io_loop: Any, fuzz_gateway: Gateway) -> None:
    """Clients that vanish at random points (mid-headers, mid-body, while waiting, mid-stream)."""
    rng = random.Random(1234)
    body = json.dumps(chat_body("alpha", 20, max_tokens=50, stream=True)).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )

    async def vanish(cut: int, linger: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", fuzz_gateway.port)
        writer.write(request[:cut])
        await writer.drain()
        if linger:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(200), linger)
        writer.close()

    async def storm() -> None:
        await asyncio.gather(
            *(vanish(rng.randrange(1, len(request) + 1), rng.choice([0, 0.005, 0.05])) for _ in range(40))
        )

    io_loop.run_sync(storm, timeout=60)
    _still_serves(io_loop, fuzz_gateway)
    running = json.loads(_get_running(io_loop, fuzz_gateway))
    assert running["in_flight"] == 0 and running["queued"] == 0


def _get_running(io_loop: Any, gateway: Gateway) -> bytes:
    async def go() -> bytes:
        client = AsyncHTTPClient(force_instance=True)
        try:
            for _ in range(100):  # leases are released as the aborted requests unwind
                body = (await client.fetch(gateway.url + "/running")).body
                if json.loads(body)["in_flight"] == 0:
                    return body
                await asyncio.sleep(0.05)
            return body
        finally:
            client.close()

    return io_loop.run_sync(go, timeout=30)


# Header values a client may send (latin-1, no CR/LF, as HTTP/1.1 carries them), the real keys among them.
header_values = st.one_of(
    st.sampled_from(["user-key", "tight-key", "ops-key", "old-key", "", "Bearer", "user-key\t"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=80),
)
KEYED_ROUTES = [
    ("POST", "/v1/chat/completions"), ("POST", "/v1/messages"), ("POST", "/v1/embeddings"), ("GET", "/v1/models"),
    ("GET", "/v1/models/beta"), ("GET", "/running"), ("GET", "/metrics"), ("GET", "/api/requests"),
    ("GET", "/api/logs"), ("POST", "/load"), ("POST", "/unload"), ("GET", "/props"), ("GET", "/slots"),
]  # fmt: skip
OLLAMA_KEYED_ROUTES = [("GET", "/api/tags"), ("GET", "/api/ps"), ("POST", "/api/chat"), ("POST", "/api/show"),
                       ("POST", "/api/embed"), ("POST", "/api/generate"), ("POST", "/api/pull")]  # fmt: skip


@FUZZ
@given(
    route=st.sampled_from(KEYED_ROUTES),
    scheme=st.sampled_from(["Bearer ", "bearer ", "Basic ", "", "Token "]),
    auth=st.none() | header_values,
    x_api_key=st.none() | header_values,
    model=st.sampled_from(["alpha", "beta", "nope"]) | json_values,
)
def test_odd_keys_on_every_route(
    io_loop: Any,
    keyed_gateway: Gateway,
    route: tuple[str, str],
    scheme: str,
    auth: str | None,
    x_api_key: str | None,
    model: Any,
) -> None:
    """Any Authorization or x-api-key, any model, on the model routes and the operations routes
    of a gateway with keys (allow-lists, limits, admin): 2xx or 4xx in the route's shape, never 5xx."""
    _odd_key(io_loop, keyed_gateway, route, scheme, auth, x_api_key, model)


@FUZZ
@given(
    route=st.sampled_from(OLLAMA_KEYED_ROUTES),
    scheme=st.sampled_from(["Bearer ", "bearer ", "Basic ", "", "Token "]),
    auth=st.none() | header_values,
    x_api_key=st.none() | header_values,
    model=st.sampled_from(["alpha", "alpha:latest", "beta", "nope"]) | json_values,
)
def test_odd_keys_on_the_ollama_routes(
    io_loop: Any,
    keyed_gateway: Gateway,
    route: tuple[str, str],
    scheme: str,
    auth: str | None,
    x_api_key: str | None,
    model: Any,
) -> None:
    """The same on Ollama's routes: 2xx or 4xx in Ollama's shape, never 5xx."""
    _odd_key(io_loop, keyed_gateway, route, scheme, auth, x_api_key, model)


def _odd_key(
    io_loop: Any,
    gateway: Gateway,
    route: tuple[str, str],
    scheme: str,
    auth: str | None,
    x_api_key: str | None,
    model: Any,
) -> None:
    method, path = route
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = (scheme + auth).strip()
    if x_api_key is not None:
        headers["x-api-key"] = x_api_key.strip()
    body = None
    if method == "POST":
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                           "input": "a b", "prompt": "a b", "stream": False}).encode()  # fmt: skip
    status, answer = _request(io_loop, gateway, method, path, body, headers)
    if status < 400:
        return
    if status == 503 and path in ("/props", "/slots"):
        return  # "not running": the engine is not started just to answer this
    _assert_clean(status, answer, path)
    assert b"user-key" not in answer and b"ops-key" not in answer and b"old-key" not in answer
