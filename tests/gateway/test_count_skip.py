"""The exact count only when it matters: a bound learned from earlier counts skips it when it proves
the engine holds the request; when it cannot decide, the engine counts as before."""

from __future__ import annotations

import json
from typing import Any

from conftest import chat_body, events_of, post, running

CHAT = "/v1/chat/completions"


def sample(gw: Any, name: str, model: str = "m") -> float:
    registry = gw.server.services.metrics.registry
    return float(registry.get_sample_value(name, {"model": model}) or 0.0)


async def test_a_small_request_after_a_counted_one_is_sent_without_a_count(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048, 8192])
    gw = await start_gateway([m])
    first = await post(http, gw.url + CHAT, chat_body("m", 5, max_tokens=16))
    assert first.code == 200, first.body
    assert sample(gw, "llmgw_counts_skipped_total") == 0  # nothing learned yet: counted exactly
    counted = sample(gw, "llmgw_tokens_counted_total")
    assert counted > 0

    for words in (3, 40, 200):
        resp = await post(http, gw.url + CHAT, chat_body("m", words, max_tokens=16))
        assert resp.code == 200, resp.body
        assert json.loads(resp.body)["usage"]["prompt_tokens"] > 0
    assert sample(gw, "llmgw_counts_skipped_total") == 3
    assert sample(gw, "llmgw_tokens_counted_total") == counted  # no count since the first
    (engine,) = (await running(http, gw))["engines"]
    assert engine["context"] == 2048  # the smallest variant served them all
    assert len(events_of(m, "start")) == 1


async def test_a_bound_that_cannot_decide_leaves_the_count_to_the_engine(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048, 8192])
    gw = await start_gateway([m])
    assert (await post(http, gw.url + CHAT, chat_body("m", 3, max_tokens=16))).code == 200
    # Long words: 700 tokens by the fake engine's rule, ~21,000 bytes: the bound says it may not fit
    # the 2048 variant, the exact count says it does. No switch.
    long_words = " ".join("w" * 29 for _ in range(700))
    body = {"model": "m", "messages": [{"role": "user", "content": long_words}], "max_tokens": 16}
    resp = await post(http, gw.url + CHAT, body)
    assert resp.code == 200, resp.body
    assert sample(gw, "llmgw_counts_skipped_total") == 0
    (engine,) = (await running(http, gw))["engines"]
    assert engine["context"] == 2048
    assert len(events_of(m, "start")) == 1


async def test_a_budget_too_big_for_the_engine_is_counted_and_switches(start_gateway, make_model, http) -> None:
    m = make_model("m", [2048, 8192])
    gw = await start_gateway([m])
    assert (await post(http, gw.url + CHAT, chat_body("m", 3, max_tokens=16))).code == 200
    resp = await post(http, gw.url + CHAT, chat_body("m", 3, max_tokens=4000))
    assert resp.code == 200, resp.body
    (engine,) = (await running(http, gw))["engines"]
    assert engine["context"] == 8192  # the budget needs the big variant: the bound never skips past that
    assert sample(gw, "llmgw_counts_skipped_total") == 0


async def test_a_request_sent_on_a_bound_that_overflows_goes_once_to_a_bigger_variant(
    start_gateway, make_model, http
) -> None:
    # The small variant's engine claims 4096 tokens and enforces 1024: the bound (2 bytes a token
    # here) proves the request fits what it claims, the engine refuses it, and the request goes to
    # the big variant, counted exactly there: one retry, no failure.
    m = make_model("m", [1024, 8192], variant_extra={1024: {"args": ["--fake-reported-n-ctx", "4096"]}})
    gw = await start_gateway([m])
    assert (await post(http, gw.url + CHAT, chat_body("m", 3, max_tokens=16))).code == 200
    body = {"model": "m", "messages": [{"role": "user", "content": " ".join(["a"] * 1500)}], "max_tokens": 16}
    resp = await post(http, gw.url + CHAT, body)
    assert resp.code == 200, resp.body
    assert sample(gw, "llmgw_counts_skipped_total") == 1
    assert [e["n_ctx"] for e in events_of(m, "start")] == [1024, 8192]
