"""Where a request goes: pure, from what each node said of the requested model.

Every node that could serve the model is ranked, and the request is tried on them in that
order until one begins to answer (a node that fails before the first byte reached the client
hands the request to the next; after it, never). The ranks, best first:

1. **warm**: the model is loaded with a free slot and nobody waiting; this node first, then peers,
   least loaded first;
2. **warm, short queue**: loaded, fewer than ``spill`` requests would wait there; least loaded
   first (this node wins ties);
3. **loading**: an engine of it is starting, fewer than ``spill`` would wait for it; this node first;
4. **start**: the node could start it now without stopping anything; this node first;
5. **busy**: loaded or loading, ``spill`` or more would wait; least loaded first;
6. **start, evicting**: idle engines would make room for it; this node first;
7. **wait**: it would queue behind busy engines (bounded by that node's ``queue_timeout``).

Load is what waits or runs there (what its state says, plus what this gateway sent it since)
divided by its ``weight``. A conversation (same API key and prompt prefix) goes first to the node
that served it last, which holds its KV cache, while that node is warm with fewer than ``spill``
waiting. Peers that are tripped or draining are never candidates, and a request that was
forwarded once (the hop header) is served here or nowhere.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from llmgw.peers.state import ModelState, Start

_PREFIX_CHARS = 2048  # of the prompt's start that names a conversation

# A request forwarded once carries this header (the forwarding node's name): it is never forwarded again.
HOP_HEADER = "X-Llmgw-Hop"
# Every answer names the node that served it (this node's name, or the peer's as this node calls it).
SERVED_BY_HEADER = "X-Llmgw-Served-By"


class Rank(IntEnum):
    WARM = 1
    WARM_QUEUE = 2
    LOADING = 3
    START = 4
    WARM_BUSY = 5
    START_EVICTING = 6
    WAIT = 7


_LOAD_FIRST = frozenset({Rank.WARM_QUEUE, Rank.WARM_BUSY})  # ranks ordered by load before locality


@dataclass(frozen=True)
class Candidate:
    """One node and what it said of the requested model."""

    node: str
    local: bool
    model: ModelState
    weight: float = 1.0
    pending: int = 0  # requests this gateway sent it since its state was read, still running
    ours: int = 0  # every request this gateway sent it that still runs (its state may lag behind them)
    available: bool = True  # its breaker lets requests through (always, for this node)
    draining: bool = False

    @property
    def busy(self) -> int:
        """Requests it serves for the model: what it said plus what was sent since, never fewer than
        this gateway knows it sent (a request sent while the state was read shows in neither)."""
        return max(self.model.in_flight + self.pending, self.ours)

    @property
    def waiting(self) -> int:
        """Requests that would be ahead of this one in a queue there: beyond its slots (while its
        engine loads, every request waits for the load and the first ``slots`` then run at once)."""
        model = self.model
        if model.loaded:
            return max(self.busy - model.slots, 0) + model.queued
        return max(self.busy + model.queued - model.slots, 0)

    @property
    def load(self) -> float:
        return (self.busy + self.model.queued) / max(self.weight, 1e-9)


@dataclass(frozen=True)
class Route:
    nodes: tuple[str, ...]  # tried in this order, each once
    ranks: tuple[Rank, ...]  # why each is where it is
    sticky: bool = False  # the first is there because it holds the conversation

    @property
    def first(self) -> str | None:
        return self.nodes[0] if self.nodes else None


def rank(candidate: Candidate, spill: int) -> Rank:
    model = candidate.model
    waiting = candidate.waiting
    if model.loaded:
        if waiting == 0 and candidate.busy < model.slots:
            return Rank.WARM
        if waiting < spill:
            return Rank.WARM_QUEUE
    elif model.loading and waiting < spill:
        return Rank.LOADING
    if model.start is Start.FITS and not model.loaded and not model.loading:
        return Rank.START
    if model.loaded or model.loading:
        return Rank.WARM_BUSY
    if model.start is Start.EVICTS:
        return Rank.START_EVICTING
    return Rank.WAIT


def route(
    candidates: Sequence[Candidate],
    *,
    capability: str | None = None,
    forwarded: bool = False,
    sticky: str | None = None,
    spill: int = 2,
) -> Route:
    """The nodes to try, best first. ``forwarded``: the request came from a peer (only this node
    may serve it); ``sticky``: the node that served this conversation last."""
    usable = [
        c
        for c in candidates
        if (c.local or (c.available and not c.draining and not forwarded)) and c.model.serves(capability)
    ]
    ranked = sorted(((rank(c, spill), c) for c in usable), key=lambda rc: _order(*rc))
    nodes: list[str] = []
    ranks: list[Rank] = []
    for r, c in ranked:
        if c.node not in nodes:
            nodes.append(c.node)
            ranks.append(r)
    stuck = False
    if sticky is not None and sticky in nodes:
        at = nodes.index(sticky)
        if ranks[at] in (Rank.WARM, Rank.WARM_QUEUE):
            nodes.insert(0, nodes.pop(at))
            ranks.insert(0, ranks.pop(at))
            stuck = True
    return Route(tuple(nodes), tuple(ranks), stuck)


def _order(r: Rank, c: Candidate) -> tuple[Any, ...]:
    if r in _LOAD_FIRST:
        return (r, c.load, not c.local, -c.weight, c.node)
    return (r, not c.local, c.load, -c.weight, c.node)


# ---------------------------------------------------------------------------------- stickiness


def conversation_key(api_key: str, data: dict[str, Any]) -> str | None:
    """What names a conversation: the API key and the start of its prompt (system prompt and the
    first messages, which every later turn repeats); None when the request has no prompt."""
    prompt: Any = None
    messages = data.get("messages")
    if isinstance(messages, list) and messages:
        prompt = [data.get("system"), _opening(messages)]
    elif "prompt" in data:
        prompt = data["prompt"]
    elif "input" in data:
        raw = data["input"]
        prompt = [data.get("instructions"), _opening(raw) if isinstance(raw, list) else raw]
    if prompt is None:
        return None
    try:
        text = json.dumps(prompt, ensure_ascii=False, sort_keys=True, default=str)[:_PREFIX_CHARS]
    except (TypeError, ValueError, RecursionError):
        return None
    digest = hashlib.blake2b(digest_size=16)
    digest.update(api_key.encode())
    digest.update(b"\0")
    digest.update(text.encode("utf-8", "replace"))
    return digest.hexdigest()


def _opening(messages: list[Any]) -> list[Any]:
    """The messages up to the first user message: what every later turn of the conversation repeats."""
    for index, message in enumerate(messages[:64]):
        if isinstance(message, dict) and message.get("role") == "user":
            return messages[: index + 1]
    return messages[:1]


class StickyTable:
    """Conversation -> the node that served it last; the least recently used are forgotten first,
    and entries older than ``ttl`` seconds are not followed (its KV cache is likely gone by then)."""

    def __init__(self, size: int = 10_000, ttl: float = 900.0) -> None:
        self.size = size
        self.ttl = ttl
        self._nodes: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, key: str | None, now: float) -> str | None:
        if key is None:
            return None
        entry = self._nodes.get(key)
        if entry is None:
            return None
        node, at = entry
        if now - at > self.ttl:
            del self._nodes[key]
            return None
        self._nodes.move_to_end(key)
        return node

    def put(self, key: str | None, node: str, now: float) -> None:
        if key is None:
            return
        self._nodes[key] = (node, now)
        self._nodes.move_to_end(key)
        while len(self._nodes) > self.size:
            self._nodes.popitem(last=False)

    def __len__(self) -> int:
        return len(self._nodes)
