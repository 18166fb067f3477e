"""What each key used: requests, prompt and generated tokens, refusals (since the gateway
started), and today's tokens, which survive a restart in the state file.

Today's tokens are kept in the state file's ``key_usage`` section as ``{"day": "2026-12-05",
"tokens": {"alice": 1234}}``; a section that is not of that shape is logged and ignored (the
day starts from zero), one of another day is simply old. Writes are batched: :meth:`UsageBook.save`
writes when something changed (the gateway calls it every second and at shutdown), so a request
never waits for the disk.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from llmgw.state import StateStore

logger = logging.getLogger(__name__)

SECTION = "key_usage"
_DAY_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass
class KeyUsage:
    """One key's figures since the gateway started (``tokens_today``: since 00:00 UTC, restarts included)."""

    requests: int = 0  # model requests admitted
    prompt_tokens: int = 0
    generated_tokens: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # 429s by limit
    tokens_today: int = 0


class UsageBook:
    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.keys: dict[str, KeyUsage] = {}
        self.day = ""
        self._dirty = False
        self._load(state.section(SECTION))

    def _load(self, saved: dict[str, Any]) -> None:
        if not saved:
            return
        day, tokens = saved.get("day"), saved.get("tokens")
        if (
            not isinstance(day, str)
            or not _DAY_RE.fullmatch(day)
            or not isinstance(tokens, dict)
            or not all(_count(v) for v in tokens.values())
        ):
            logger.warning("state file: the %r section is not what this version writes; ignoring it", SECTION)
            return
        self.day = day
        for name, count in tokens.items():
            self.of(str(name)).tokens_today = count

    def of(self, name: str) -> KeyUsage:
        usage = self.keys.get(name)
        if usage is None:
            usage = self.keys[name] = KeyUsage()
        return usage

    def tokens_today(self, name: str, day: str) -> int:
        self._roll(day)
        usage = self.keys.get(name)
        return usage.tokens_today if usage is not None else 0

    def admitted(self, name: str) -> None:
        self.of(name).requests += 1

    def refused(self, name: str, limit: str) -> None:
        refused = self.of(name).refused
        refused[limit] = refused.get(limit, 0) + 1

    def answered(self, name: str, prompt: int, generated: int, day: str) -> None:
        """The engine's own count of one answer, added to the key's totals."""
        self._roll(day)
        usage = self.of(name)
        usage.prompt_tokens += prompt
        usage.generated_tokens += generated
        if prompt or generated:
            usage.tokens_today += prompt + generated
            self._dirty = True

    def _roll(self, day: str) -> None:
        """A new UTC day: every key's tokens_today starts again from zero."""
        if day != self.day:
            if self.day:
                self._dirty = True
            self.day = day
            for usage in self.keys.values():
                usage.tokens_today = 0

    def save(self) -> None:
        """Write today's totals to the state file, if they changed since the last write."""
        if not self._dirty:
            return
        self._dirty = False
        tokens = {name: usage.tokens_today for name, usage in sorted(self.keys.items()) if usage.tokens_today}
        self.state.put(SECTION, {"day": self.day, "tokens": tokens})


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
