"""Counting without loading a big variant: the standalone tokenizer, and the smallest variant."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable

import pytest
from tornado.httpclient import AsyncHTTPClient

from conftest import FAKE_TOKENIZE, FakeModel, Gateway, chat_body
from llmgw.config import Tokenization
from llmgw.errors import TokenCountError
from llmgw.upstream import StandaloneTokenizer


def _starts(model: FakeModel) -> list[int]:
    return [e["n_ctx"] for e in model.read_events() if e["event"] == "start"]


async def _chat(gateway: Gateway, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(
            gateway.url + "/v1/chat/completions", method="POST", body=json.dumps(body), raise_error=False
        )
        return response.code, json.loads(response.body)
    finally:
        client.close()


async def test_tokenizer_estimate_starts_the_big_variant_directly(
    start_gateway: Callable[..., Awaitable[Gateway]], make_model: Callable[..., FakeModel]
) -> None:
    model = make_model("alpha", [256, 4096], tokenization=True)
    gateway = await start_gateway([model])
    status, answer = await _chat(gateway, chat_body("alpha", 1000, max_tokens=8))
    assert status == 200, answer
    assert _starts(model) == [4096]  # the small variant was never loaded just to count


async def test_without_tokenizer_the_smallest_variant_counts_then_switches(
    start_gateway: Callable[..., Awaitable[Gateway]], make_model: Callable[..., FakeModel]
) -> None:
    model = make_model("alpha", [256, 4096])
    gateway = await start_gateway([model])
    status, answer = await _chat(gateway, chat_body("alpha", 1000, max_tokens=8))
    assert status == 200, answer
    assert _starts(model) == [256, 4096]  # counted on the smallest, never on a big one first
    status, answer = await _chat(gateway, chat_body("alpha", 10, max_tokens=8))
    assert status == 200 and _starts(model) == [256, 4096]  # the big one is kept


async def test_tokenizer_counts_text_messages_and_extras() -> None:
    tokenizer = StandaloneTokenizer(Tokenization(sys.executable, (FAKE_TOKENIZE,), 4, 10))
    body = {"messages": [{"role": "system", "content": "a b"}, {"role": "user", "content": "c d e"}]}
    # text "a b\nc d e" -> 5 words + BOS, plus 2 messages x 4, plus 10.
    assert await tokenizer.count(body) == 6 + 8 + 10


async def test_failing_tokenizer_is_an_error_not_a_guess() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    failing = StandaloneTokenizer(Tokenization(sys.executable, (FAKE_TOKENIZE, "--fake-fail"), 0, 0))
    with pytest.raises(TokenCountError, match="failed"):
        await failing.count(body)
    missing = StandaloneTokenizer(Tokenization("/nonexistent/llama-tokenize", (), 0, 0))
    with pytest.raises(TokenCountError, match="cannot run"):
        await missing.count(body)
