"""Sizing rules, without processes: does an engine hold a request, and what context to switch to."""

from __future__ import annotations

from pathlib import Path

import pytest
from scheduling_world import model

from llmgw.api.endpoints import CHAT, EMBEDDINGS
from llmgw.config import ModelConfig, Variant
from llmgw.errors import BadRequest, ContextTooLarge
from llmgw.proxy.sizing import CountBounds, Fit, Need, batch_capacity, physical_batch, surely_fits
from llmgw.state import StateStore


class Contexts:
    """The configured (per-slot) contexts: no engine ever reported another."""

    def effective_context(self, model: ModelConfig, variant: Variant) -> int:
        return variant.slot_context

    def largest_context(self, model: ModelConfig, capability: str | None = None) -> int:
        return max(v.slot_context for v in model.variants if v.serves(capability))


def fit(contexts: tuple[int, ...] = (2048, 8192), strict: bool = False, reserve: int = 1024, **kw: object) -> Fit:
    return Fit(model("m", contexts, port=1, **kw), CHAT, Contexts(), strict, reserve)  # type: ignore[arg-type]


def test_a_request_that_fits_the_engine_stays() -> None:
    f = fit()
    small = f.model.variants[0]
    assert f.bigger(Need(1000, 1000), 2048, small) is None
    assert f.bigger(Need(2048, 0), 2048, small) is None


def test_a_request_that_does_not_fit_asks_for_what_it_needs() -> None:
    f = fit()
    small = f.model.variants[0]
    assert f.bigger(Need(3000, 100), 2048, small) == 3100
    assert f.bigger(Need(2000, 49), 2048, small) == 2049


def test_a_budget_no_variant_holds_runs_on_the_largest_with_the_reserve() -> None:
    f = fit(reserve=1024)
    small, large = f.model.variants
    # 6000 + 32000 fits nothing; 6000 + 1024 fits the largest: it runs there, cut at its context.
    assert f.bigger(Need(6000, 32000), 2048, small) == 8192
    assert f.bigger(Need(6000, 32000), 8192, large) is None
    # The reserve is at most half the largest context (else every request without max_tokens fails).
    assert fit(reserve=100_000).bigger(Need(4000, 200_000), 8192, large) is None


def test_a_prompt_too_long_for_the_largest_is_refused_with_its_figures() -> None:
    f = fit()
    with pytest.raises(ContextTooLarge) as info:
        f.bigger(Need(8000, 32000), 8192, f.model.variants[1])
    assert (info.value.prompt, info.value.largest) == (8000, 8192)


def test_strict_context_refuses_a_budget_no_variant_holds() -> None:
    f = fit(strict=True)
    with pytest.raises(ContextTooLarge) as info:
        f.bigger(Need(100, 9000), 2048, f.model.variants[0])
    assert info.value.needed == 9100


def test_the_largest_is_per_slot() -> None:
    f = fit((4096, 8192), args=("-np", "2"))
    assert f.largest() == 4096
    with pytest.raises(ContextTooLarge) as info:
        f.bigger(Need(5000, 0), 2048, f.model.variants[0])
    assert info.value.largest == 4096


def test_embedding_inputs_must_fit_the_physical_batch() -> None:
    m = model("e", (2048, 8192), port=1, args=("--embeddings", "-ub", "1024", "-b", "4096"))
    f = Fit(m, EMBEDDINGS, Contexts(), False, 0)
    small = m.variants[0]
    assert batch_capacity(2048, small) == 1024
    assert f.bigger(Need(1000), 2048, small) is None
    with pytest.raises(BadRequest, match="input 3 has 2000 tokens"):
        f.bigger(Need(2000, 0, 3), 2048, small)


@pytest.mark.parametrize(
    ("args", "batch"),
    [((), 512), (("-ub", "1024"), 1024), (("-ub", "4096"), 2048), (("-b=256",), 256), (("-ub", "x"), 512)],
)
def test_physical_batch_is_the_smaller_of_the_batches(args: tuple[str, ...], batch: int) -> None:
    assert physical_batch(args) == batch


def test_surely_fits_counts_a_byte_per_token() -> None:
    assert surely_fits(1000, 1000, 2048)
    assert not surely_fits(1049, 1000, 2048)


def test_no_bound_before_an_exact_count() -> None:
    assert CountBounds().bound(("m", "v", "chat"), 500) is None


def test_the_bound_is_the_bytes_plus_the_largest_excess_seen() -> None:
    bounds, key = CountBounds(), ("m", "v", "chat")
    bounds.learn(key, 400, 120)  # the usual: far fewer tokens than bytes
    assert bounds.bound(key, 500) == 500 + CountBounds.MARGIN
    bounds.learn(key, 100, 180)  # a template that adds 80 tokens the body does not hold
    bounds.learn(key, 400, 120)  # a smaller excess does not lower it
    assert bounds.bound(key, 500) == 500 + 80 + CountBounds.MARGIN
    assert bounds.bound(("m", "v", "messages"), 500) is None  # per route (and model and variant)


def test_what_was_learned_survives_a_restart_and_odd_entries_are_ignored(tmp_path: Path) -> None:
    key = ("m", "0123abcd", "chat")
    first = CountBounds(StateStore(tmp_path))
    first.learn(key, 100, 150)
    again = CountBounds(StateStore(tmp_path))
    assert again.bound(key, 500) == 500 + 50 + CountBounds.MARGIN
    store = StateStore(tmp_path)
    store.put(CountBounds.SECTION, {"not json": 5, '["a", "b"]': 3, '["a", "b", "c"]': "x", '["m", "v", "chat"]': 7})
    odd = CountBounds(StateStore(tmp_path))
    assert odd.bound(("m", "v", "chat"), 10) == 10 + 7 + CountBounds.MARGIN
    assert odd.bound(("a", "b", "c"), 10) is None
