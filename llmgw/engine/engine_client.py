"""EngineClient: what the gateway needs from a running inference engine, whatever its kind."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

from llmgw.engine.http import EngineHTTPClient, UpstreamCall
from llmgw.errors import BadRequest, echo


def completion_budget(request_data: dict[str, Any], reserve: int) -> int:
    """Tokens to keep free for the answer: the request's own limit, else the configured reserve.

    ``max_completion_tokens`` (the newer OpenAI name) wins over ``max_tokens``; -1 (llama.cpp's
    "until the context is full") and null fall back to the reserve. Every one present is
    checked, not only the one that wins: the engine reads them all.
    """
    budget: int | None = None
    for key in ("max_completion_tokens", "max_tokens", "n_predict"):
        value = request_data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise BadRequest(f"'{key}' must be a non-negative integer (or -1), got {echo(value)}")
        if budget is None and value != -1:
            budget = value
    return reserve if budget is None else budget


class EngineClient(ABC):
    """HTTP side of one running engine: health, context size, token counting, forwarding."""

    def __init__(self, base_url: str, http: EngineHTTPClient, completion_reserve: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.completion_reserve = completion_reserve
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")

    async def estimate_tokens(self, request_data: dict[str, Any]) -> int:
        """Context the request needs: exact prompt tokens plus the completion budget."""
        budget = completion_budget(request_data, self.completion_reserve)
        return await self.count_prompt_tokens(request_data) + budget

    @abstractmethod
    async def count_prompt_tokens(self, request_data: dict[str, Any]) -> int:
        """Prompt tokens exactly as the engine will count them; raises rather than guesses."""

    @abstractmethod
    async def check_health(self, timeout: float) -> bool:
        """True when the engine answers requests now."""

    @abstractmethod
    async def context_size(self) -> int | None:
        """Per-request context the engine reports (None if it cannot say)."""

    @abstractmethod
    def forward_request(self, path: str, body: bytes, headers: dict[str, str]) -> UpstreamCall:
        """Start proxying one request; the caller reads the head and body from the returned call."""
