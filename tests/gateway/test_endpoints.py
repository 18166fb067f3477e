"""Every llama-server route through the gateway, with fake engines: each routed, counted for its
context, answered in its own protocol, with the model name the client asked for; aliases, the
default model, capabilities, filters, CORS and request ids."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse

from conftest import FakeModel, assert_error, chat_body, events_of, get, post, running

ALL_ROUTES = ["--embeddings", "--reranking", "--fake-infill"]
WORDS = 3000  # a prompt over the small variant (2048) and under the large one (8192)


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def anthropic_error(resp: HTTPResponse, status: int, error_type: str) -> str:
    assert resp.code == status, (resp.code, resp.body)
    data = json.loads(resp.body)
    assert data["type"] == "error" and set(data) == {"type", "error"}, data
    assert data["error"]["type"] == error_type, data
    assert isinstance(data["error"]["message"], str) and data["error"]["message"]
    return str(data["error"]["message"])


async def started_contexts(model: FakeModel) -> list[int]:
    return [e["n_ctx"] for e in events_of(model, "start")]


# ----------------------------------------------------------------------------- every route

BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": chat_body("m", 3, max_tokens=4),
    "/chat/completions": chat_body("m", 3, max_tokens=4),
    "/v1/completions": {"model": "m", "prompt": "once upon a time", "max_tokens": 4},
    "/completion": {"model": "m", "prompt": "once upon a time", "n_predict": 4},
    "/completions": {"model": "m", "prompt": "once upon a time", "n_predict": 4},
    "/v1/embeddings": {"model": "m", "input": ["a b", "c d e"]},
    "/embedding": {"model": "m", "content": "a b"},
    "/embeddings": {"model": "m", "content": "a b"},
    "/v1/responses": {"model": "m", "input": "hello there", "max_output_tokens": 4},
    "/v1/responses/input_tokens": {"model": "m", "input": "hello there"},
    "/v1/chat/completions/input_tokens": chat_body("m", 3),
    "/v1/messages": {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/messages/count_tokens": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "/infill": {"model": "m", "input_prefix": "def f(", "input_suffix": "):", "n_predict": 4},
    "/rerank": {"model": "m", "query": "q", "documents": ["a", "b c"]},
    "/v1/rerank": {"model": "m", "query": "q", "documents": ["a", "b c"]},
    "/reranking": {"model": "m", "query": "q", "documents": ["a", "b c"]},
    "/v1/reranking": {"model": "m", "query": "q", "documents": ["a", "b c"]},
    "/tokenize": {"model": "m", "content": "a b c"},
    "/detokenize": {"model": "m", "tokens": [2, 100]},
    "/apply-template": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
}


async def test_every_route_reaches_the_engine_on_the_same_path(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048], extra_args=ALL_ROUTES)
    gw = await start_gateway([m])
    for path, body in BODIES.items():
        resp = await post(http, gw.url + path + "?beta=true", body)  # query strings are ignored
        assert resp.code == 200, (path, resp.code, resp.body[:300])
        assert resp.headers["Content-Type"].startswith("application/json"), path
        generated = [e for e in events_of(m, "request") if e["path"] == path]
        if path.startswith(("/tokenize", "/detokenize", "/apply-template")) or "count" in path or "input_" in path:
            continue  # the fake logs generation, embeddings and rerank requests only
        assert generated, f"{path} did not reach the engine's {path}"
    assert len(events_of(m, "start")) == 1


async def test_get_routes_without_v1_and_single_model(start_gateway, make_model, http) -> None:
    m = make_model("m", [1024, 4096], model_extra={"aliases": ["gpt-4o-mini"]})
    gw = await start_gateway([m])
    for path in ("/v1/models", "/models"):
        data = json.loads((await get(http, gw.url + path)).body)
        assert [e["id"] for e in data["data"]] == ["m", "gpt-4o-mini"]
    one = json.loads((await get(http, gw.url + "/v1/models/gpt-4o-mini")).body)
    assert one["id"] == "gpt-4o-mini" and one["alias_of"] == "m" and one["context_length"] == 4096
    assert_error(await get(http, gw.url + "/v1/models/nope"), 404, "model_not_found")


# ----------------------------------------------------------------------------- context per route

GENERATION_ROUTES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": chat_body("m", WORDS, max_tokens=8),
    "/v1/completions": {"model": "m", "prompt": words(WORDS), "max_tokens": 8},
    "/completion": {"model": "m", "prompt": words(WORDS), "n_predict": 8},
    "/v1/messages": {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": words(WORDS)}]},
    "/v1/responses": {"model": "m", "input": words(WORDS), "max_output_tokens": 8},
    "/infill": {"model": "m", "input_prefix": words(WORDS), "input_suffix": "", "n_predict": 8},
}


@pytest.mark.parametrize("path", list(GENERATION_ROUTES))
async def test_a_long_prompt_lands_on_the_larger_variant_on_every_route(
    start_gateway, make_model, http, path: str
) -> None:
    m = make_model("m", [2048, 8192], extra_args=ALL_ROUTES)
    gw = await start_gateway([m])
    resp = await post(http, gw.url + path, GENERATION_ROUTES[path])
    assert resp.code == 200, resp.body[:300]
    # The small variant started to count, then the large one for the request.
    assert await started_contexts(m) == [2048, 8192]
    resp = await post(
        http,
        gw.url + path,
        {**GENERATION_ROUTES[path], **({"prompt": "a"} if "prompt" in GENERATION_ROUTES[path] else {})},
    )
    assert resp.code == 200 and await started_contexts(m) == [2048, 8192]  # a big enough engine is kept


@pytest.mark.parametrize("path", ["/v1/completions", "/completion"])
async def test_prompt_forms_are_counted(start_gateway, make_model, http, path: str) -> None:
    m = make_model("m", [2048, 8192])
    gw = await start_gateway([m])
    key = "max_tokens" if path == "/v1/completions" else "n_predict"
    for prompt in ("a b c", [2, 100, 101], ["a b", words(WORDS)], [[2, 3], "x y"], ["a", 7, "b"]):
        resp = await post(http, gw.url + path, {"model": "m", "prompt": prompt, key: 2})
        assert resp.code == 200, (prompt if isinstance(prompt, str) else type(prompt), resp.body[:200])
    # Only the list holding a 3000-word prompt needed the large variant.
    assert await started_contexts(m) == [2048, 8192]
    assert_error(await post(http, gw.url + path, {"model": "m", "prompt": [{"x": 1}]}), 400)
    assert_error(await post(http, gw.url + path, {"model": "m"}), 400)


async def test_a_budget_no_variant_holds_runs_on_the_largest_until_its_context_is_full(
    start_gateway, make_model, http
) -> None:
    m = make_model("m", [2048, 8192])
    gw = await start_gateway([m])
    # Claude Code asks for 32000 tokens next to a small prompt: llama-server just generates until
    # the context is full, and so does the gateway, on the largest variant.
    body = {"model": "m", "max_tokens": 32000, "messages": [{"role": "user", "content": words(100)}]}
    resp = await post(http, gw.url + "/v1/messages", body)
    assert resp.code == 200, resp.body
    answer = json.loads(resp.body)
    assert answer["stop_reason"] == "max_tokens" and answer["usage"]["output_tokens"] > 0
    assert (await started_contexts(m))[-1] == 8192
    # A prompt that fits only without its budget, and not even with completion_reserve: a 400.
    resp = await post(http, gw.url + "/v1/chat/completions", chat_body("m", 8000, max_tokens=32000))
    error = assert_error(resp, 400, "context_length_exceeded")
    assert error["n_prompt_tokens"] == 8003 and error["n_ctx"] == 8192


async def test_strict_context_keeps_the_400(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048, 8192])
    gw = await start_gateway([m], strict_context=True)
    resp = await post(http, gw.url + "/v1/chat/completions", chat_body("m", 10, max_tokens=32000))
    error = assert_error(resp, 400, "context_length_exceeded")
    assert error["n_ctx"] == 8192 and "32013" in error["message"]
    assert await started_contexts(m) == [2048]  # counted on the small variant, never moved


async def test_context_is_per_slot_as_llama_server_splits_it(start_gateway, make_model, http) -> None:
    """With -np 2 each request gets half the context, as llama-server's own test
    test_context_size_exceeded_stream checks (n_ctx == server.n_ctx // server.n_slots)."""
    m = make_model("m", [4096], extra_args=["-np", "2"])
    gw = await start_gateway([m])
    listed = json.loads((await get(http, gw.url + "/v1/models")).body)["data"][0]
    assert listed["context_length"] == 2048  # known before the engine ever ran
    resp = await post(http, gw.url + "/v1/chat/completions", chat_body("m", 3000, max_tokens=16))
    error = assert_error(resp, 400, "context_length_exceeded")
    assert error["n_ctx"] == 2048 and error["n_prompt_tokens"] == 3003
    assert await started_contexts(m) == [2048]  # the engine reports its slot's context too


async def test_completion_limit_caps_the_budget_before_counting(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048, 8192], model_extra={"completion_limit": 64})
    gw = await start_gateway([m])
    resp = await post(http, gw.url + "/completion", {"model": "m", "prompt": words(10), "n_predict": 32000})
    assert resp.code == 200, resp.body
    answer = json.loads(resp.body)
    assert answer["generation_settings"]["n_predict"] == 64 and answer["tokens_predicted"] == 64
    resp = await post(http, gw.url + "/v1/completions", {"model": "m", "prompt": "a b"})  # no limit given
    assert json.loads(resp.body)["usage"]["completion_tokens"] <= 64
    assert await started_contexts(m) == [2048]  # the capped budget fits the small variant


async def test_set_and_strip_filters(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048], model_extra={"set": {"temperature": 0.25}, "strip": ["max_tokens"]})
    gw = await start_gateway([m])
    resp = await post(http, gw.url + "/completion", {"model": "m", "prompt": "a", "temperature": 1.5, "max_tokens": 3})
    answer = json.loads(resp.body)
    assert answer["generation_settings"]["temperature"] == 0.25  # forced
    assert answer["tokens_predicted"] == 8  # max_tokens was stripped: the fake's default length


async def test_embeddings_take_the_variant_whose_batch_holds_the_longest_input(start_gateway, make_model, http) -> None:
    # The small variant keeps llama-server's default physical batch (512); the large one has 2048.
    m = make_model("emb", [1024, 4096], extra_args=["--embeddings"],
                   variant_extra={4096: {"args": ["-b", "2048", "-ub", "2048"]}})  # fmt: skip
    gw = await start_gateway([m])
    ok = await post(http, gw.url + "/v1/embeddings", {"model": "emb", "input": ["short", words(100)]})
    assert ok.code == 200 and len(json.loads(ok.body)["data"]) == 2
    assert await started_contexts(m) == [1024]
    ok = await post(http, gw.url + "/v1/embeddings", {"model": "emb", "input": ["short", words(600)]})
    assert ok.code == 200, ok.body  # 601 tokens: more than the small batch, so the large variant
    assert await started_contexts(m) == [1024, 4096]
    resp = await post(http, gw.url + "/v1/embeddings", {"model": "emb", "input": ["short", words(3000)]})
    error = assert_error(resp, 400)
    assert "input 1 has 3001 tokens" in error["message"] and "(2048 tokens)" in error["message"]
    resp = await post(http, gw.url + "/rerank", {"model": "emb", "query": "q", "documents": ["a", words(3000)]})
    assert resp.code == 400  # rerank pairs are sized the same way


# ----------------------------------------------------------------------------- protocols


async def test_anthropic_errors_are_anthropic_shaped(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048])
    gw = await start_gateway([m], api_keys=["k"])
    key = {"x-api-key": "k"}
    anthropic_error(await post(http, gw.url + "/v1/messages", {"model": "m"}), 401, "authentication_error")
    body = {"model": "nope", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    anthropic_error(await post(http, gw.url + "/v1/messages", body, key), 404, "not_found_error")
    anthropic_error(await post(http, gw.url + "/v1/messages", {"model": "m", "messages": 5}, key), 400,
                    "invalid_request_error")  # fmt: skip
    too_long = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": words(5000)}]}
    message = anthropic_error(await post(http, gw.url + "/v1/messages", too_long, key), 400, "invalid_request_error")
    assert message.startswith("prompt is too long: ")
    anthropic_error(await post(http, gw.url + "/v1/messages/nope", {}, key), 404, "not_found_error")
    # The engine's own refusal (a text block without text), reshaped for Anthropic clients.
    bad_block = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "text"}]}]}
    message = anthropic_error(await post(http, gw.url + "/v1/messages", bad_block, key), 400, "invalid_request_error")
    assert "text" in message
    # The OpenAI routes keep the OpenAI shape.
    assert_error(await post(http, gw.url + "/v1/chat/completions", {"model": "nope"}, key), 404, "model_not_found")


async def test_engine_errors_from_counting_pass_through_unchanged(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048])
    gw = await start_gateway([m])
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}
    resp = await post(http, gw.url + "/v1/chat/completions", body)
    assert resp.code == 400
    assert json.loads(resp.body) == {
        "error": {"code": 400, "message": "a text part needs a string 'text'", "type": "invalid_request_error"}
    }


async def test_mid_stream_errors_use_each_protocols_event(start_gateway, make_model, http) -> None:
    crashing = ["--fake-exit-after-chunks", "2"]
    hi = [{"role": "user", "content": "hi"}]
    for path, body, marker in (
        ("/v1/messages", {"model": "m", "max_tokens": 20, "stream": True, "messages": hi},
         b'event: error\ndata: {"type": "error", "error": {"type": "api_error"'),
        ("/v1/responses", {"model": "m", "input": "hi", "max_output_tokens": 20, "stream": True},
         b'event: error\ndata: {"type": "error", "code": "engine_unavailable"'),
        ("/v1/chat/completions", chat_body("m", 3, max_tokens=20, stream=True), b'data: {"error": {'),
    ):  # fmt: skip
        m = make_model("m", [2048], extra_args=crashing)
        gw = await start_gateway([m])
        resp = await post(http, gw.url + path, body)
        assert resp.code == 200 and marker in resp.body, (path, resp.body[-300:])
        await gw.server.stop()


# ----------------------------------------------------------------------------- model names

STREAMS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": chat_body("x", 3, max_tokens=3, stream=True),
    "/v1/completions": {"model": "x", "prompt": "a b", "max_tokens": 3, "stream": True},
    "/completion": {"model": "x", "prompt": "a b", "n_predict": 3, "stream": True},
    "/v1/messages": {"model": "x", "max_tokens": 3, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": {"model": "x", "input": "hi", "max_output_tokens": 3, "stream": True},
}


async def test_answers_carry_the_name_the_client_asked_for(start_gateway, make_model, http) -> None:
    # The engine names itself by its file, as llama-server does without --alias.
    m = make_model("real-name", [2048], extra_args=["--embeddings", "--alias", "/models/x-q4_k_m.gguf"],
                   model_extra={"aliases": ["alias-a"]})  # fmt: skip
    gw = await start_gateway([m])
    for asked in ("real-name", "alias-a"):
        for path, body in {**BODIES, **STREAMS}.items():
            if path not in STREAMS and path not in (
                "/v1/chat/completions",
                "/v1/completions",
                "/v1/embeddings",
                "/v1/messages",
                "/v1/responses",
                "/completion",
            ):
                continue  # fmt: skip
            resp = await post(http, gw.url + path, {**body, "model": asked})
            assert resp.code == 200, (path, resp.body[:200])
            text = resp.body.decode()
            models = re.findall(r'"model":\s*"([^"]*)"', text)
            assert models, (path, text[:300])
            assert set(models) == {asked}, (path, models)
            assert "gguf" not in text, path


# ----------------------------------------------------------------------------- names, defaults, capabilities


async def test_default_model_serves_requests_without_model(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048])
    gw = await start_gateway([m])
    no_model = {"messages": [{"role": "user", "content": "hi"}]}
    error = assert_error(await post(http, gw.url + "/v1/chat/completions", no_model), 400)
    assert "'model' is required" in error["message"]
    await gw.server.stop()
    gw = await start_gateway([m], default_model="m")
    resp = await post(http, gw.url + "/v1/chat/completions", no_model)
    assert resp.code == 200 and json.loads(resp.body)["model"] == "m"


async def test_aliases_can_be_hidden_from_the_list(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048], model_extra={"aliases": ["claude-3-5-haiku-latest"]})
    gw = await start_gateway([m], list_aliases=False)
    data = json.loads((await get(http, gw.url + "/v1/models")).body)
    assert [e["id"] for e in data["data"]] == ["m"] and data["data"][0]["aliases"] == ["claude-3-5-haiku-latest"]
    body = {"model": "claude-3-5-haiku-latest", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    resp = await post(http, gw.url + "/v1/messages", body)
    assert resp.code == 200 and json.loads(resp.body)["model"] == "claude-3-5-haiku-latest"


async def test_a_route_the_model_does_not_serve_is_a_400_naming_those_that_do(start_gateway, make_model, http) -> None:
    embed = make_model("embed", [2048], extra_args=["--embeddings"], model_extra={"endpoints": ["embeddings"]})
    chat = make_model("chat", [2048], model_extra={"endpoints": ["chat", "messages", "tokenize"]})
    gw = await start_gateway([embed, chat], max_engines=2)
    error = assert_error(await post(http, gw.url + "/v1/chat/completions", chat_body("embed")), 400)
    assert "does not serve chat" in error["message"] and "chat" in error["message"].split("do:")[1]
    error = assert_error(await post(http, gw.url + "/v1/embeddings", {"model": "chat", "input": "x"}), 400)
    assert error["message"].endswith("models that do: embed")
    assert events_of(embed, "start") == events_of(chat, "start") == []  # refused before any engine started
    assert (await post(http, gw.url + "/v1/embeddings", {"model": "embed", "input": "x"})).code == 200


async def test_a_variant_can_serve_its_own_routes(start_gateway, make_model, http) -> None:
    """One model: a chat variant, and an embeddings variant started with --embeddings."""
    m = make_model("m", [2048, 4096], variant_extra={
        2048: {"endpoints": ["chat"]},
        4096: {"args": ["--embeddings", "--pooling", "mean"], "endpoints": ["embeddings"]},
    })  # fmt: skip
    gw = await start_gateway([m])
    assert (await post(http, gw.url + "/v1/embeddings", {"model": "m", "input": "x"})).code == 200
    assert await started_contexts(m) == [4096]
    assert (await post(http, gw.url + "/v1/chat/completions", chat_body("m"))).code == 200
    assert await started_contexts(m) == [4096, 2048]  # the chat variant (variants of one model alternate)
    assert_error(await post(http, gw.url + "/v1/completions", {"model": "m", "prompt": "a"}), 400)


# ----------------------------------------------------------------------------- props and slots


async def test_props_and_slots_answer_from_a_running_engine_only(start_gateway, make_model, http) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    gw = await start_gateway([a, b], max_engines=2)
    resp = await get(http, gw.url + "/props?model=a")
    error = assert_error(resp, 503, "model_not_loaded")
    assert "not running" in error["message"]
    assert events_of(a, "start") == []  # never started just to answer
    assert (await post(http, gw.url + "/v1/chat/completions", chat_body("a"))).code == 200
    props = json.loads((await get(http, gw.url + "/props?model=a")).body)
    assert props["default_generation_settings"]["n_ctx"] == 2048
    assert isinstance(json.loads((await get(http, gw.url + "/slots?model=a")).body), list)
    assert (await get(http, gw.url + "/props")).code == 200  # one engine runs: it answers
    assert (await post(http, gw.url + "/v1/chat/completions", chat_body("b"))).code == 200
    assert_error(await get(http, gw.url + "/props"), 400)  # two run: say which


# ----------------------------------------------------------------------------- CORS and request ids


async def test_cors_preflight_and_origin(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048])
    gw = await start_gateway([m], api_keys=["k"])
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type, authorization"}  # fmt: skip
    for path in ("/v1/chat/completions", "/whatever"):
        resp = await http.fetch(gw.url + path, method="OPTIONS", headers=preflight, raise_error=False)
        assert resp.code == 200, (path, resp.code)
        assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert resp.headers["Access-Control-Allow-Headers"] == "content-type, authorization"
    resp = await post(http, gw.url + "/v1/chat/completions", chat_body("m"),
                      {"Origin": "http://app.example", "Authorization": "Bearer k"})  # fmt: skip
    assert resp.code == 200 and resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
    await gw.server.stop()

    gw = await start_gateway([m], cors_origins=["http://ok.example"])
    resp = await get(http, gw.url + "/v1/models", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await get(http, gw.url + "/v1/models", headers={"Origin": "http://ok.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "http://ok.example"


async def test_every_answer_carries_a_request_id(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048])
    gw = await start_gateway([m])
    resp = await post(http, gw.url + "/v1/chat/completions", chat_body("m"), {"X-Request-Id": "trace-42"})
    assert resp.headers["X-Request-Id"] == "trace-42"
    for resp in (
        await post(http, gw.url + "/v1/chat/completions", chat_body("m")),
        await post(http, gw.url + "/v1/chat/completions", chat_body("nope")),
        await get(http, gw.url + "/nothing"),
        await post(http, gw.url + "/v1/chat/completions", chat_body("m"), {"X-Request-Id": "bad id\twith spaces"}),
    ):
        assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-Id"]), resp.headers.get("X-Request-Id")


async def test_a_route_the_launch_flags_do_not_serve_is_a_400_before_any_engine(
    start_gateway, make_model, http
) -> None:
    m = make_model("m", [2048])  # no --embeddings: llama-server would answer 501
    e = make_model("e", [2048], extra_args=["--embeddings"])
    gw = await start_gateway([m, e])
    resp = await post(http, gw.url + "/v1/embeddings", {"model": "m", "input": "x"})
    error = assert_error(resp, 400)
    assert "does not serve embeddings" in error["message"] and "models that do: e" in error["message"]
    assert (await running(http, gw))["engines"] == []  # nothing started for it
    assert (await post(http, gw.url + "/v1/embeddings", {"model": "e", "input": "x"})).code == 200


async def test_an_engines_refusal_of_a_route_is_relayed(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048])  # no FIM tokens (the fake without --fake-infill): llama-server answers 501
    gw = await start_gateway([m])
    resp = await post(http, gw.url + "/infill", {"model": "m", "input_prefix": "a", "input_suffix": "b"})
    assert resp.code == 501 and json.loads(resp.body)["error"]["type"] == "not_supported_error"
    assert [e["model"] for e in (await running(http, gw))["engines"]] == ["m"]


async def test_a_reserve_as_big_as_the_context_does_not_refuse_requests_without_a_budget(
    start_gateway, make_model, http
) -> None:
    m = make_model("m", [1024])
    gw = await start_gateway([m], completion_reserve=4096)  # more than the model's whole context
    resp = await post(http, gw.url + "/v1/chat/completions", chat_body("m", 10))
    assert resp.code == 200, resp.body  # half the context is kept for the answer instead
    resp = await post(http, gw.url + "/v1/chat/completions", chat_body("m", 700))
    assert_error(resp, 400, "context_length_exceeded")  # 703 + 512 do not fit 1024
