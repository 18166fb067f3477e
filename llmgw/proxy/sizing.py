"""Sizing: does an engine hold a request, and if not, what context to switch to. Pure arithmetic.

What must fit depends on the route (llmgw.api.endpoints):

* generation routes need the prompt plus the completion budget. The smallest variant that
  holds both is taken. When none does (clients ask for 32000 or 1e9 tokens they never use),
  the largest variant is taken if it holds the prompt plus ``completion_reserve``, and the
  generation ends when its context is full, as llama-server does on its own; only a prompt
  too long even for that is refused. ``strict_context`` refuses every request whose budget
  does not fit;
* embeddings and rerank need each input to fit the engine's physical batch: the variant that
  holds the longest input is taken;
* counting and tokenizer routes take any variant: the running one, else the smallest.

No I/O: the contexts come through :class:`Contexts` (the engine manager knows what each variant
really gives, once an engine reported it), so tests drive every rule directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from llmgw.api import Endpoint, Sizing
from llmgw.config import ModelConfig, Variant
from llmgw.errors import BadRequest, ContextTooLarge
from llmgw.state import StateStore

# llama-server's defaults for the logical and physical batch (-b / -ub).
_DEFAULT_BATCH, _DEFAULT_UBATCH = 2048, 512
_BATCH_FLAGS = {"-b": "batch", "--batch-size": "batch", "-ub": "ubatch", "--ubatch-size": "ubatch"}
_DIGITS = re.compile(r"[0-9]+")


class Contexts(Protocol):
    """The context each variant gives (what its engine reported last, else the configured one)."""

    def effective_context(self, model: ModelConfig, variant: Variant) -> int: ...

    def largest_context(self, model: ModelConfig, capability: str | None = None) -> int: ...


@dataclass(frozen=True)
class Need:
    """What a request needs of an engine's context, as counted."""

    prompt: int  # exact prompt tokens (the longest input for embeddings and rerank)
    budget: int = 0  # tokens kept free for the answer
    index: int = 0  # which input is the longest (embeddings, rerank)

    @property
    def total(self) -> int:
        return self.prompt + self.budget


def physical_batch(args: Sequence[str]) -> int:
    """Longest input llama-server embeds or reranks in one go: its physical batch.

    With ``--embeddings`` llama-server sets the logical batch to the physical one, and a
    physical batch larger than the logical one is cut to it: the limit is min(-b, -ub).
    """
    sizes = {"batch": _DEFAULT_BATCH, "ubatch": _DEFAULT_UBATCH}
    items = list(args)
    for i, arg in enumerate(items):
        name, has_value, inline = arg.partition("=")
        which = _BATCH_FLAGS.get(name)
        value = inline if has_value else (items[i + 1] if i + 1 < len(items) else "")
        if which is not None and _DIGITS.fullmatch(value):
            sizes[which] = int(value)
    return min(sizes.values())


def batch_capacity(n_ctx: int, variant: Variant) -> int:
    """Longest single input an engine of ``variant`` with context ``n_ctx`` takes."""
    return min(n_ctx, physical_batch(variant.args))


class CountBounds:
    """A bound on a request's prompt tokens, learned from exact counts, so the count can be skipped.

    A token is at least one byte of text, and a request's JSON body holds its text (escaped, so
    no shorter) plus keys and punctuation a template does not render: the body's bytes bound
    the prompt, but for what the template adds that is not in the body (role markers, a system
    preamble, BOS). That part is learned per model, variant and route: the most an exact count
    ever exceeded its body's bytes (usually it falls far short), plus a margin. Until a first exact
    count there is no bound. A bound that proves wrong costs one retry (the engine reports the
    overflow, which is learned too), never a failure.
    """

    MARGIN = 16  # tokens beyond the largest excess seen (BOS/EOS and the like)
    SECTION = "count_bounds"  # in the state file: a gateway that restarts keeps what it learned

    def __init__(self, state: StateStore | None = None) -> None:
        self._state = state
        self._excess: dict[tuple[str, str, str], int] = {}
        for name, excess in (state.section(self.SECTION) if state is not None else {}).items():
            try:
                key = json.loads(name)
            except ValueError:
                continue
            if (
                isinstance(key, list)
                and len(key) == 3
                and all(isinstance(part, str) for part in key)
                and isinstance(excess, int)
                and not isinstance(excess, bool)
            ):
                self._excess[(key[0], key[1], key[2])] = excess

    def learn(self, key: tuple[str, str, str], body_bytes: int, prompt_tokens: int) -> None:
        """An exact count (or the engine's own figure) of a request of ``body_bytes`` bytes."""
        excess = prompt_tokens - body_bytes
        known = self._excess.get(key)
        if known is None or excess > known:
            self._excess[key] = excess
            if self._state is not None:  # rare: only a new largest excess is written
                self._state.put(self.SECTION, {json.dumps(list(k)): v for k, v in self._excess.items()})

    def bound(self, key: tuple[str, str, str], body_bytes: int) -> int | None:
        """At least the prompt tokens of a request of ``body_bytes`` bytes; None: nothing learned yet."""
        excess = self._excess.get(key)
        return None if excess is None else body_bytes + max(excess, 0) + self.MARGIN


def surely_fits(body_bytes: int, budget: int, n_ctx: int) -> bool:
    """A text prompt takes at least a byte per token: a body this small fits whatever the count says."""
    return body_bytes + budget <= n_ctx


@dataclass(frozen=True)
class Fit:
    """The sizing rules of one model, for one route."""

    model: ModelConfig
    endpoint: Endpoint
    contexts: Contexts
    strict: bool  # strict_context: a budget no variant holds is refused, not cut short
    reserve: int  # completion_reserve: the budget of a request that sets none

    def largest(self) -> int:
        return self.contexts.largest_context(self.model, self.endpoint.capability)

    def bigger(self, need: Need, n_ctx: int, variant: Variant) -> int | None:
        """None when an engine of ``variant`` with context ``n_ctx`` holds the request; else the
        context to switch to. Raises when no variant ever will."""
        if self.endpoint.sizing is Sizing.BATCH:
            return self._bigger_batch(need, n_ctx, variant)
        full = need.total
        if full <= n_ctx:
            return None
        largest = self.largest()
        if full <= largest:
            return max(full, n_ctx + 1)
        if self.strict:
            raise ContextTooLarge(self.model.name, full, largest, need.prompt)
        # No variant holds the whole budget: the largest runs, and the answer ends at its context,
        # provided it leaves the answer completion_reserve tokens (at most half of that context:
        # a reserve as big as the model's context would refuse every request without max_tokens).
        minimum = need.prompt + max(1, min(need.budget, self.reserve, largest // 2))
        if minimum <= n_ctx and n_ctx >= largest:
            return None
        if minimum <= largest:
            return largest
        raise ContextTooLarge(
            self.model.name,
            minimum,
            largest,
            need.prompt,
            detail="prompt plus the smaller of its budget and completion_reserve",
        )

    def _bigger_batch(self, need: Need, n_ctx: int, variant: Variant) -> int | None:
        if need.prompt <= batch_capacity(n_ctx, variant):
            return None
        model, contexts = self.model, self.contexts
        serving = [v for v in model.variants if v.serves(self.endpoint.capability)]

        def capacity(v: Variant) -> int:
            return batch_capacity(contexts.effective_context(model, v), v)

        fitting = [contexts.effective_context(model, v) for v in serving if capacity(v) >= need.prompt]
        if not fitting:
            most = max(capacity(v) for v in serving)
            raise BadRequest(
                f"input {need.index} has {need.prompt} tokens, more than model {model.name!r} can "
                f"take in one batch ({most} tokens): split it, or give a variant "
                "a larger physical batch (-ub)"
            )
        return max(min(fitting), n_ctx + 1)
