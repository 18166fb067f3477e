"""The saved slots of one cache directory and the decisions about them, with no I/O: which one
to restore for a prompt, which ones a new file makes useless, which ones go when the directory
is over its budget.

Tokens are kept as int32 little-endian bytes: compact, and a common prefix is found with a few
C-speed comparisons instead of a Python loop over thousands of tokens.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_MIN_COMMON = 1  # a restore needs at least this many tokens in common with the prompt


def pack(tokens: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(tokens)}i", *tokens)


def common_prefix(a: bytes, b: bytes) -> int:
    """Tokens two packed token strings share from their start (binary search on memcmp)."""
    n = min(len(a), len(b)) // 4
    if a[: n * 4] == b[: n * 4]:
        return n
    low, high = 0, n  # a[:low] == b[:low] (in tokens); a[:high] != b[:high]
    while high - low > 1:
        mid = (low + high) // 2
        if a[: mid * 4] == b[: mid * 4]:
            low = mid
        else:
            high = mid
    return low


@dataclass(eq=False)
class Entry:
    """One saved slot: ``name.bin`` (the engine's file) and ``name.json`` (what the gateway knows of it)."""

    name: str
    key: str  # launch key (llmgw.slotcache.keys)
    model: str
    tokens: bytes  # packed token ids the slot holds
    size: int  # bytes of the slot file
    used_at: float  # saved or last restored (wall clock): the least recently used go first

    @property
    def n_tokens(self) -> int:
        return len(self.tokens) // 4


class SlotIndex:
    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self.entries: dict[str, Entry] = {entry.name: entry for entry in entries}

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.entries.values())

    def has_key(self, key: str) -> bool:
        return any(entry.key == key for entry in self.entries.values())

    def add(self, entry: Entry) -> list[Entry]:
        """Add a new file; returns the entries it makes useless (same key, their tokens a prefix of
        its own: whatever prompt they would serve, it serves as well), removed from the index."""
        dominated = [
            old
            for old in self.entries.values()
            if old.key == entry.key and len(old.tokens) <= len(entry.tokens) and entry.tokens.startswith(old.tokens)
        ]
        for old in dominated:
            del self.entries[old.name]
        self.entries[entry.name] = entry
        return dominated

    def remove(self, name: str) -> Entry | None:
        return self.entries.pop(name, None)

    def same_as(self, key: str, tokens: bytes) -> Entry | None:
        """A file already holding exactly these tokens (a slot restored and not used since)."""
        return next((e for e in self.entries.values() if e.key == key and e.tokens == tokens), None)

    def best(
        self, key: str, prompt: bytes | None, n_prompt: int, n_ctx: int, exclude: Iterable[str] = ()
    ) -> tuple[Entry, int] | None:
        """The file to restore for a prompt, and the tokens it shares with it.

        With the prompt's tokens: the file sharing the longest common prefix with it, if that
        prefix covers at least half of the file (normally all of it: the conversation so far,
        saved with its last answer, is a prefix of the next prompt). Without them (routes whose
        template the gateway cannot apply): the most recently used file no longer than the
        prompt's counted tokens; the engine then reuses whatever matches, or nothing. A file
        larger than the engine's context per slot is never chosen (the engine refuses it).
        """
        skip = set(exclude)
        candidates = [e for e in self.entries.values() if e.key == key and e.name not in skip and e.n_tokens <= n_ctx]
        if prompt is None:
            fitting = [e for e in candidates if e.n_tokens <= n_prompt]
            chosen = max(fitting, key=lambda e: e.used_at, default=None)
            return None if chosen is None else (chosen, 0)
        best: tuple[Entry, int] | None = None
        for entry in candidates:
            common = common_prefix(entry.tokens, prompt)
            if common < _MIN_COMMON or common * 2 < entry.n_tokens:
                continue
            if best is None or (common, entry.used_at) > (best[1], best[0].used_at):
                best = (entry, common)
        return best

    def over_budget(self, budget: int, extra: int = 0, keep: str | None = None) -> list[Entry]:
        """Least recently used entries to delete so that the files (plus ``extra`` bytes about to be
        written) fit ``budget``; ``keep`` is never chosen."""
        total = self.total_bytes + extra
        victims: list[Entry] = []
        for entry in sorted(self.entries.values(), key=lambda e: e.used_at):
            if total <= budget:
                break
            if entry.name == keep:
                continue
            victims.append(entry)
            total -= entry.size
        return victims
