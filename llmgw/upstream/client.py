"""EngineClient: what the gateway needs from a running inference engine, whatever its kind."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

from llmgw.upstream.http import EngineHTTPClient, UpstreamCall


class EngineClient(ABC):
    """HTTP side of one running engine: health, context size, token counting, forwarding."""

    def __init__(self, base_url: str, http: EngineHTTPClient, count_timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.count_timeout = count_timeout or 600.0  # an engine that never answers a count is an error
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")

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
    def forward_request(self, path: str, body: bytes, headers: dict[str, str], method: str = "POST") -> UpstreamCall:
        """Start proxying one request; the caller reads the head and body from the returned call."""
