"""Counting: the tokens a request needs, exactly as its engine will count them.

Counting needs a tokenizer with the model's vocabulary and template. If the model runs, its
engine counts. If not, a configured standalone tokenizer gives a first estimate (chat), so a
long chat does not start the smallest variant only to switch away from it; otherwise the
smallest variant starts (same tokenizer as the big ones). The engine's exact count has the
last word, and the big variant is never loaded just to count.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llmgw.api import Endpoint, Sizing
from llmgw.api.endpoints import CHAT, Prompt
from llmgw.config import ModelConfig
from llmgw.proxy.sizing import Need, batch_capacity
from llmgw.runtime import RunningEngine
from llmgw.upstream import EngineClient, StandaloneTokenizer


class TokenCounter:
    """Counts requests on their engine; keeps one standalone tokenizer per model that has one."""

    def __init__(self) -> None:
        self._tokenizers: dict[str, StandaloneTokenizer] = {}

    async def estimate(self, model: ModelConfig, data: dict[str, Any]) -> int:
        """A chat's prompt tokens by the model's standalone tokenizer (a hint, not the exact count)."""
        assert model.tokenization is not None
        tokenizer = self._tokenizers.get(model.name)
        if tokenizer is None:
            tokenizer = self._tokenizers[model.name] = StandaloneTokenizer(model.tokenization)
        return await tokenizer.count(data)

    async def measure(self, endpoint: Endpoint, engine: RunningEngine, data: dict[str, Any], reserve: int) -> Need:
        """What the request needs of ``engine``'s context: its exact prompt and its budget."""
        client = engine.client
        budget = endpoint.budget(data, reserve)
        if endpoint is CHAT:
            return Need(await client.count_prompt_tokens(data), budget)
        if endpoint.count_path is not None:
            return Need(await client.count_body(endpoint.count_path, data), budget)
        assert endpoint.prompts is not None
        prompts = endpoint.prompts(data)
        # Inputs that surely fit the batch need no count; a generation prompt always does (its budget adds up).
        limit = batch_capacity(engine.n_ctx, engine.variant) if endpoint.sizing is Sizing.BATCH else -1
        counts = await asyncio.gather(*(_prompt_tokens(client, pieces, endpoint.overhead, limit) for pieces in prompts))
        longest = max(range(len(counts)), key=counts.__getitem__)
        return Need(counts[longest], budget, longest)


async def _prompt_tokens(client: EngineClient, pieces: list[Prompt], overhead: int, limit: int) -> int:
    """Tokens of one prompt made of ``pieces``. An input whose bytes surely fit (a token is at
    least one byte) is not sent to the tokenizer: embedding batches are mostly such inputs."""
    bound = overhead + sum(len(p.encode()) + 2 if isinstance(p, str) else _pieces_bound(p) for p in pieces)
    if bound <= limit:
        return 0
    counts = await asyncio.gather(*(client.count_text(piece) for piece in pieces))
    return overhead + sum(counts)


def _pieces_bound(piece: list[int] | list[int | str]) -> int:
    return sum(1 if isinstance(t, int) else len(t.encode()) + 2 for t in piece)


def prompt_source(endpoint: Endpoint, data: dict[str, Any]) -> tuple[dict[str, Any] | None, Prompt | None]:
    """What gives a request's prompt tokens: a chat body (templated by the engine), or its one
    prompt; (None, None) when neither can (several prompts, infill, Messages, Responses)."""
    if endpoint is CHAT:
        return data, None
    if endpoint.prompts is not None and endpoint.overhead == 0:
        prompts = endpoint.prompts(data)
        if len(prompts) == 1 and len(prompts[0]) == 1:
            return None, prompts[0][0]
    return None, None
