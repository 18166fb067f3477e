"""server.keys: keys by name with allow-lists, admin, limits and priority; key files; exact errors
that never show a key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from test_config import DELETE, base_config, config_text, load_error, load_text, with_value

from llmgw.config import KeyConfig, Priority


def keyed(keys: Any, **server: Any) -> str:
    cfg = base_config() if keys is DELETE else with_value(base_config(), ("server", "keys"), keys)
    cfg["models"].append({**cfg["models"][0], "name": "other", "aliases": ["other-alias"]})
    cfg["models"][1]["connect"] = "http://127.0.0.1:7779"
    for name, value in server.items():
        cfg = with_value(cfg, ("server", name), value)
    return config_text(cfg)


def test_keys_with_every_setting(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "bob").write_text("bob-key-from-file\n")
    cfg = load_text(
        tmp_path,
        keyed(
            {
                "alice": {"key": "alice-key", "models": ["m", "other-alias"], "requests_per_minute": 30,
                          "tokens_per_day": 100000, "max_concurrent": 2, "priority": "batch"},
                "bob": {"key_file": "keys/bob", "admin": True},
            },
            api_keys=["old-key"],
            batch_overtakes=2,
        ),
    )  # fmt: skip
    alice, bob = sorted(cfg.server.keys, key=lambda k: k.name)
    assert alice == KeyConfig("alice", "alice-key", ("m", "other"), False, 30, 100000, 2, Priority.BATCH)
    assert bob == KeyConfig("bob", "bob-key-from-file", admin=True)  # relative to the config's directory
    assert cfg.server.batch_overtakes == 2
    old = cfg.server.all_keys()[-1]
    assert (old.name, old.secret, old.models, old.admin) == ("api_keys[1]", "old-key", None, True)
    assert "alice-key" not in repr(cfg) and "bob-key-from-file" not in repr(cfg)


def test_a_key_file_is_read_at_every_load(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("first")
    text = keyed({"a": {"key_file": str(path)}})
    assert load_text(tmp_path, text).server.keys[0].secret == "first"
    path.write_text("second\n")
    assert load_text(tmp_path, text).server.keys[0].secret == "second"


K = "server.keys"

KEY_ERRORS: list[tuple[Any, str]] = [
    ("secret", K + ' must be a table of NAME = { key = "..." or key_file = "...", ... }, got a string'),
    ([{"key": "secret"}], K + ' must be a table of NAME = { key = "..." or key_file = "...", ... }, but has the key [1] (a list: give each key a name)'),  # noqa: E501
    ({"a b": {"key": "secret"}}, K + ' has the key name "a b"'),
    ({"a": "secret"}, K + '.a must be a table like { key = "...", models = { "a-model" } }, got a string'),
    ({"a": {}}, K + ".a needs key (the key itself) or key_file (a file holding it)"),
    ({"a": {"key": "secret", "key_file": "/x"}}, K + ".a sets both key and key_file: set one"),
    ({"a": {"key": ""}}, K + ".a.key must be a non-empty string, got a string"),
    ({"a": {"key": 12345}}, K + ".a.key must be a non-empty string, got a number"),
    ({"a": {"key": "secret\nsecret"}}, K + ".a.key holds more than one line"),
    ({"a": {"key": " secret"}}, K + ".a.key starts or ends with white space"),
    ({"a": {"key": "sécret"}}, K + ".a.key holds characters a client cannot send in a header"),
    ({"a": {"key_file": "/nonexistent/llmgw-key"}}, K + '.a.key_file cannot be read: "/nonexistent/llmgw-key": No such file or directory'),  # noqa: E501
    ({"a": {"key": "secret", "models": []}}, K + ".a.models must list at least one model"),
    ({"a": {"key": "secret", "models": "m"}}, K + '.a.models must be a list of model names, like { "qwen3-8b" }, got "m"'),  # noqa: E501
    ({"a": {"key": "secret", "models": ["m", "nope"]}}, K + '.a.models[2] is not a model name or alias: "nope" (models: "m", "other")'),  # noqa: E501
    ({"a": {"key": "secret", "admin": "yes"}}, K + '.a.admin must be true or false, got "yes"'),
    ({"a": {"key": "secret", "requests_per_minute": 0}}, K + ".a.requests_per_minute must be a positive integer, got 0"),  # noqa: E501
    ({"a": {"key": "secret", "tokens_per_day": 1.5}}, K + ".a.tokens_per_day must be a positive integer, got 1.5"),
    ({"a": {"key": "secret", "max_concurrent": -1}}, K + ".a.max_concurrent must be a positive integer, got -1"),
    ({"a": {"key": "secret", "priority": "urgent"}}, K + '.a.priority must be one of "interactive", "batch", got "urgent"'),  # noqa: E501
    ({"a": {"key": "secret"}, "b": {"key": "secret"}}, K + ".b has the same key as server.keys.a"),
]  # fmt: skip


@pytest.mark.parametrize(("keys", "expected"), KEY_ERRORS, ids=[e[1][:60] for e in KEY_ERRORS])
def test_key_errors_name_the_place_and_never_the_key(tmp_path: Path, keys: Any, expected: str) -> None:
    message = load_error(tmp_path, keyed(keys))
    assert message.startswith(expected), message
    assert "secret" not in message and "sécret" not in message


def test_errors_about_key_files_and_old_keys(tmp_path: Path) -> None:
    empty, big, binary = tmp_path / "empty", tmp_path / "big", tmp_path / "binary"
    empty.write_text(" \n")
    big.write_text("x" * 70_000)
    binary.write_bytes(b"\xff\xfe secret")
    assert load_error(tmp_path, keyed({"a": {"key_file": "empty"}})).endswith(f'"{empty}" is empty')
    assert "is over 64 KiB" in load_error(tmp_path, keyed({"a": {"key_file": "big"}}))
    message = load_error(tmp_path, keyed({"a": {"key_file": "binary"}}))
    assert message.endswith("is not UTF-8 text") and "secret" not in message
    (tmp_path / "two").write_text("secret\nline two\n")
    message = load_error(tmp_path, keyed({"a": {"key_file": "two"}}))
    assert message.startswith("server.keys.a.key_file ") and "more than one line" in message and "secret" not in message
    unreadable = tmp_path / "unreadable"
    unreadable.write_text("secret")
    if os.geteuid() != 0:  # root reads anything
        unreadable.chmod(0)
        assert "cannot be read" in load_error(tmp_path, keyed({"a": {"key_file": "unreadable"}}))
    message = load_error(tmp_path, keyed({"a": {"key": "secret"}}, api_keys=["other", "secret"]))
    assert message == "server.api_keys[2] has the same key as server.keys.a: each key must be different"
    assert load_error(tmp_path, keyed(DELETE, batch_overtakes=-1)).startswith(
        "server.batch_overtakes must be a non-negative integer, got -1"
    )


def test_a_key_listed_twice_in_the_old_list_still_loads_and_counts_once(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, keyed(DELETE, api_keys=["k1", "k2", "k1"]))
    assert [(k.name, k.secret) for k in cfg.server.all_keys()] == [("api_keys[1]", "k1"), ("api_keys[2]", "k2")]
