"""EngineClient: what the gateway asks of a running engine over HTTP, whatever its kind.

Callers hold an EngineClient, never a concrete class: counting, forwarding and the slot cache
all go through these methods (LlamaCppClient is the one for llama-server).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from llmgw.upstream.http import EngineHTTPClient, JsonReply, UpstreamCall


class EngineClient(ABC):
    """HTTP side of one running engine: health, context size, token counting, forwarding, slots."""

    def __init__(self, base_url: str, http: EngineHTTPClient, count_timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.count_timeout = count_timeout or 600.0  # an engine that never answers a count is an error
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")

    # ----------------------------------------------------------------- counting

    @abstractmethod
    async def count_prompt_tokens(self, request_data: dict[str, Any]) -> int:
        """A chat request's prompt tokens exactly as the engine will count them; raises rather than guesses."""

    @abstractmethod
    async def count_body(self, path: str, request_data: dict[str, Any]) -> int:
        """Prompt tokens by one of the engine's counting routes, which takes the whole body."""

    @abstractmethod
    async def count_text(self, prompt: str | Sequence[int | str]) -> int:
        """Tokens of a prompt (text, token ids, or a mix) as the engine tokenizes it for generation."""

    @abstractmethod
    async def prompt_ids(
        self, prompt: str | Sequence[int | str] | None, chat: dict[str, Any] | None
    ) -> list[int] | None:
        """The token ids the engine will process for a prompt or a chat body; None when it cannot say."""

    # ----------------------------------------------------------------- state

    @abstractmethod
    async def check_health(self, timeout: float) -> bool:
        """True when the engine answers requests now."""

    @abstractmethod
    async def context_size(self) -> int | None:
        """Per-request context the engine reports (None if it cannot say)."""

    # ----------------------------------------------------------------- forwarding

    @abstractmethod
    def forward_request(self, path: str, body: bytes, headers: dict[str, str], method: str = "POST") -> UpstreamCall:
        """Start proxying one request; the caller reads the head and body from the returned call."""

    # ----------------------------------------------------------------- slots (the slot cache)

    @property
    def saves_slots(self) -> bool:
        """Whether the engine saves and restores its slots to files (``slots``, ``slot_action``)."""
        return False

    async def slots(self, timeout: float = 10.0) -> list[dict[str, Any]] | None:
        """Per slot ``id``, and once it ran a task ``id_task`` and ``n_prompt_tokens``; None when
        the engine does not say."""
        return None

    async def slot_action(self, slot_id: int, action: str, filename: str, timeout: float) -> JsonReply:
        """Save or restore one slot to or from a file in the engine's slot directory."""
        raise NotImplementedError(f"{type(self).__name__} does not save slots")
