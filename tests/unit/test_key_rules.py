"""The keys room without sockets: who a key is, its limits against a driven clock, its usage and
what of it survives a restart."""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from llmgw.config import Config, KeyConfig, LiveConfig, Priority, ServerConfig, Timeouts
from llmgw.errors import RateLimited
from llmgw.keys import OPEN, KeyGate, KeyRegistry, Principal, presented_key
from llmgw.keys import registry as registry_module
from llmgw.keys.limits import KeyLimiter, seconds_to_next_day, utc_day
from llmgw.keys.usage import SECTION, UsageBook
from llmgw.state import StateStore

ALICE = KeyConfig("alice", "alice-key", models=("m",), requests_per_minute=3)
BOB = KeyConfig("bob", "bob-key", admin=True, priority=Priority.BATCH)
DAY = 1_796_000_000.0  # 2026-11-30 00:53:20 UTC


def server(*keys: KeyConfig, api_keys: tuple[str, ...] = ()) -> ServerConfig:
    return ServerConfig(listen=(("127.0.0.1", 1),), timeouts=Timeouts(1, 1, 0, 1), keys=keys, api_keys=api_keys)


# -- who a key is ------------------------------------------------------------------------------


def test_presented_key_reads_bearer_then_x_api_key() -> None:
    assert presented_key("Bearer abc", None) == "abc"
    assert presented_key("bEaReR  abc  ", "other") == "abc"
    assert presented_key(None, " xyz ") == "xyz"
    assert presented_key("Basic dXNlcjpwYXNz", "xyz") == "xyz"  # not a bearer token: x-api-key decides
    assert presented_key("Bearer", None) == ""
    assert presented_key(None, None) == ""


def test_registry_names_the_key_and_refuses_unknown_ones() -> None:
    registry = KeyRegistry(server(ALICE, BOB, api_keys=("old",)).all_keys())
    alice = registry.identify("alice-key")
    assert alice is not None and alice.name == "alice" and alice.models == frozenset({"m"}) and not alice.admin
    assert alice.requests_per_minute == 3 and alice.priority is Priority.INTERACTIVE
    bob = registry.identify("bob-key")
    assert bob is not None and bob.admin and bob.models is None and bob.priority is Priority.BATCH
    old = registry.identify("old")
    assert old is not None and old.name == "api_keys[1]" and old.admin and old.models is None
    for wrong in ("", "alice-ke", "alice-key ", "ALICE-KEY", "alice-key\x00", "\udcff"):
        assert registry.identify(wrong) is None


def test_every_key_is_compared_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(registry_module.hmac, "compare_digest", counting)
    registry = KeyRegistry(server(ALICE, BOB, api_keys=("a", "b")).all_keys())
    for given in ("alice-key", "b", "nobody", "x" * 10_000):
        calls.clear()
        registry.identify(given)
        assert calls == [(32, 32)] * 4  # digests: every comparison is as long as every other


def test_a_gateway_without_keys_is_open() -> None:
    registry = KeyRegistry(())
    assert registry.identify("") is OPEN and registry.identify("anything") is OPEN
    assert OPEN.admin and OPEN.name is None and OPEN.priority is Priority.INTERACTIVE


def test_sees_is_the_allow_list() -> None:
    from scheduling_world import model

    alice = Principal.of(ALICE)
    assert alice.sees(model("m", port=1)) and not alice.sees(model("other", port=2))
    assert Principal.of(BOB).sees(model("other", port=2)) and OPEN.sees(model("other", port=2))


# -- limits ------------------------------------------------------------------------------------


def principal(**limits: Any) -> Principal:
    return Principal.of(KeyConfig("k", "secret", **limits))


def test_requests_per_minute_is_a_sliding_minute() -> None:
    limiter, key = KeyLimiter(), principal(requests_per_minute=3)
    for now in (0.0, 10.0, 20.0):
        assert limiter.admit(key, now, 0, DAY) is None
        limiter.release(key)
    refusal = limiter.admit(key, 30.0, 0, DAY)
    assert refusal is not None and refusal.limit == "requests_per_minute" and refusal.retry_after == 30
    assert "requests_per_minute" in refusal.message and "'k'" in refusal.message
    refusal = limiter.admit(key, 59.5, 0, DAY)
    assert refusal is not None and refusal.retry_after == 1  # whole seconds, rounded up
    assert limiter.admit(key, 60.0, 0, DAY) is None  # the first one is a minute old
    refusal = limiter.admit(key, 60.0, 0, DAY)
    assert refusal is not None and refusal.retry_after == 10  # until the one at 10 s is a minute old
    assert limiter.admit(key, 200.0, 0, DAY) is None


def test_refused_requests_do_not_count_against_the_minute() -> None:
    limiter, key = KeyLimiter(), principal(requests_per_minute=1, max_concurrent=1)
    assert limiter.admit(key, 0.0, 0, DAY) is None
    assert limiter.admit(key, 1.0, 0, DAY) is not None
    limiter.release(key)
    assert limiter.admit(key, 60.0, 0, DAY) is None


def test_max_concurrent_counts_requests_in_flight() -> None:
    limiter, key = KeyLimiter(), principal(max_concurrent=2)
    assert limiter.admit(key, 0.0, 0, DAY) is None
    assert limiter.admit(key, 0.0, 0, DAY) is None
    refusal = limiter.admit(key, 0.0, 0, DAY)
    assert refusal is not None and refusal.limit == "max_concurrent" and refusal.retry_after == 1
    assert limiter.in_flight("k") == 2
    limiter.release(key)
    assert limiter.admit(key, 0.0, 0, DAY) is None
    for _ in range(2):
        limiter.release(key)
    assert limiter.in_flight("k") == 0


def test_tokens_per_day_refuses_once_the_budget_is_used_until_midnight_utc() -> None:
    limiter, key = KeyLimiter(), principal(tokens_per_day=1000, requests_per_minute=1)
    assert limiter.admit(key, 0.0, 999, DAY) is None  # under the budget: admitted, whatever it will use
    limiter.release(key)
    refusal = limiter.admit(key, 0.0, 1000, DAY)
    assert refusal is not None and refusal.limit == "tokens_per_day"  # the longest wait wins over the minute
    assert refusal.retry_after == 86400 - 3200  # 00:53:20 -> 00:00 the next day
    assert "1000 of 1000" in refusal.message and "00:00 UTC" in refusal.message
    assert utc_day(DAY) == "2026-11-30" and utc_day(DAY + seconds_to_next_day(DAY)) == "2026-12-01"


def test_a_key_without_limits_and_the_open_gateway_are_always_admitted() -> None:
    limiter = KeyLimiter()
    for _ in range(1000):
        assert limiter.admit(principal(), 0.0, 10**12, DAY) is None
        assert limiter.admit(OPEN, 0.0, 10**12, DAY) is None
    assert limiter.in_flight("k") == 1000


# -- usage and the state file ------------------------------------------------------------------


def test_usage_counts_and_today_survives_a_restart(tmp_path: Path) -> None:
    book = UsageBook(StateStore(tmp_path))
    book.admitted("alice")
    book.answered("alice", 100, 20, "2026-11-29")
    book.answered("alice", 5, 1, "2026-11-29")
    book.refused("alice", "tokens_per_day")
    assert book.tokens_today("alice", "2026-11-29") == 126
    assert (book.of("alice").prompt_tokens, book.of("alice").generated_tokens) == (105, 21)
    book.save()
    again = UsageBook(StateStore(tmp_path))
    assert again.tokens_today("alice", "2026-11-29") == 126
    assert again.of("alice").requests == 0  # since start only: only today's tokens are kept
    assert again.tokens_today("alice", "2026-11-30") == 0  # a new day starts from zero
    again.save()
    assert json.loads((tmp_path / "state.json").read_text())[SECTION] == {"day": "2026-11-30", "tokens": {}}


def test_save_writes_only_what_changed(tmp_path: Path) -> None:
    state = StateStore(tmp_path)
    book = UsageBook(state)
    book.save()
    assert not (tmp_path / "state.json").exists()
    book.answered("a", 0, 0, "2026-11-29")  # an answer without usage changes nothing
    book.save()
    assert not (tmp_path / "state.json").exists()
    book.answered("a", 1, 0, "2026-11-29")
    book.save()
    assert (tmp_path / "state.json").exists()


@pytest.mark.parametrize(
    "section",
    [
        "garbage",
        {"day": 5, "tokens": {}},
        {"day": "yesterday", "tokens": {}},
        {"day": "2026-11-29", "tokens": []},
        {"day": "2026-11-29", "tokens": {"a": -1}},
        {"day": "2026-11-29", "tokens": {"a": "12"}},
        {"day": "2026-11-29", "tokens": {"a": True}},
    ],
)
def test_a_corrupt_usage_section_is_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, section: Any
) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, SECTION: section, "memory": {"x": {}}}))
    with caplog.at_level(logging.WARNING):
        book = UsageBook(StateStore(tmp_path))
    assert book.tokens_today("a", "2026-11-29") == 0
    if isinstance(section, dict):
        assert any(SECTION in r.getMessage() for r in caplog.records)


# -- the gate ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.epoch = DAY

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.epoch


def gate(tmp_path: Path, *keys: KeyConfig) -> tuple[KeyGate, Clock, LiveConfig]:
    clock = Clock()
    live = LiveConfig(Config("c.lua", server(*keys), ()))
    return KeyGate(live, StateStore(tmp_path), clock.monotonic, clock.wall), clock, live


def test_the_gate_admits_counts_and_refuses_in_the_protocols_terms(tmp_path: Path) -> None:
    keys, clock, _ = gate(tmp_path, KeyConfig("a", "a-key", tokens_per_day=100, max_concurrent=1))
    a = keys.identify("Bearer a-key", None)
    assert a is not None
    admission = keys.admit(a)
    with pytest.raises(RateLimited) as info:
        keys.admit(a)
    assert info.value.status == 429 and info.value.retry_after == 1 and info.value.error_type == "requests"
    admission.done(90, 20)
    admission.done(90, 20)  # once only
    with pytest.raises(RateLimited) as info:
        keys.admit(a)
    assert info.value.error_type == "tokens" and info.value.code == "rate_limit_exceeded"
    (row,) = keys.view()
    assert row["requests"] == 1 and row["tokens_today"] == 110 and row["rate_limited"] == 2 and row["in_flight"] == 0
    assert "a-key" not in json.dumps(row)
    clock.epoch += seconds_to_next_day(clock.epoch)  # midnight UTC: a new budget
    keys.admit(a).done()


def test_a_reload_changes_keys_but_keeps_their_usage(tmp_path: Path) -> None:
    keys, _, live = gate(tmp_path, KeyConfig("a", "old-key", max_concurrent=1))
    a = keys.identify(None, "old-key")
    assert a is not None
    admission = keys.admit(a)
    live.current = Config("c.lua", server(KeyConfig("a", "new-key", max_concurrent=1)), ())
    assert keys.identify(None, "old-key") is None
    new_a = keys.identify(None, "new-key")
    assert new_a is not None
    with pytest.raises(RateLimited):  # the request admitted before the reload still counts
        keys.admit(new_a)
    admission.done()
    keys.admit(new_a)
