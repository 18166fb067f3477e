"""``server.keys``: API keys by name, each with the models it may use, admin rights, limits and a
queue priority::

    keys = {
      alice = { key_file = "keys/alice", models = { "qwen3-8b" }, tokens_per_day = 2000000 },
      ci    = { key = "...", priority = "batch", requests_per_minute = 60, max_concurrent = 2 },
      ops   = { key_file = "/etc/llmgw/ops.key", admin = true },
    }

A ``key_file`` is read here, so it is read again on every reload (SIGHUP); a relative path is
taken from the config file's directory. A key's value never appears in a message: only the
place (``server.keys.alice.key``) or the file's path does.
"""

from __future__ import annotations

import os
import re

from llmgw.config.reader import POSITIVE_INT_RE, Node, quote
from llmgw.config.schema import ConfigError, KeyConfig, ModelConfig, Priority

_KEYS = frozenset(
    {"key", "key_file", "models", "admin", "requests_per_minute", "tokens_per_day", "max_concurrent", "priority"}
)
# Names show in metrics labels, logs and the page: plain words. (A dot would split the Lua table's
# flattened keys, too.)
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_WHAT = 'a table of NAME = { key = "..." or key_file = "...", ... }'
_LARGEST_FILE = 64 * 1024  # a key file is one line; a bigger one is a wrong path


def keys_section(node: Node, models: tuple[ModelConfig, ...], config_dir: str) -> tuple[KeyConfig, ...]:
    """``server.keys``, checked against the models (an allow-list names existing models only)."""
    if not node.exists():
        return ()
    if node.kind != "table":
        node.expect(_WHAT, secret=True)  # a key written where the table belongs must not be shown
    keys = []
    for name in sorted(node.child_names()):
        if POSITIVE_INT_RE.fullmatch(name):
            node.fail(f"must be {_WHAT}, but has the key [{name}] (a list: give each key a name)")
        if not _NAME_RE.fullmatch(name):
            node.fail(f"has the key name {quote(name)}: names are 1 to 64 letters, digits, '_' or '-'")
        keys.append(_key(node.child(name), name, models, config_dir))
    return tuple(keys)


def check_distinct(keys: tuple[KeyConfig, ...], places: dict[str, str]) -> None:
    """Two names for one key would make its usage land on either: refused (without the value)."""
    first: dict[str, str] = {}
    for key in keys:
        place = places.get(key.name, key.name)
        if key.secret in first:
            raise ConfigError(f"{place} has the same key as {first[key.secret]}: each key must be different")
        first[key.secret] = place


def _key(node: Node, name: str, models: tuple[ModelConfig, ...], config_dir: str) -> KeyConfig:
    if node.kind != "table":
        node.expect('a table like { key = "...", models = { "a-model" } }', secret=True)
    node.warn_unknown(node.label, _KEYS)
    return KeyConfig(
        name=name,
        secret=_secret(node, config_dir),
        models=_allowed(node.child("models"), models),
        admin=node.get_bool("admin", False),
        requests_per_minute=node.opt_int("requests_per_minute", 1),
        tokens_per_day=node.opt_int("tokens_per_day", 1),
        max_concurrent=node.opt_int("max_concurrent", 1),
        priority=_priority(node.child("priority")),
    )


def _secret(node: Node, config_dir: str) -> str:
    inline, file = node.child("key"), node.child("key_file")
    if inline.exists() and file.exists():
        node.fail("sets both key and key_file: set one")
    if inline.exists():
        return _checked(inline.string(secret=True), inline.label)
    if not file.exists():
        node.fail("needs key (the key itself) or key_file (a file holding it)")
    path = os.path.join(config_dir, os.path.expanduser(file.string()))
    try:
        with open(path, "rb") as handle:
            data = handle.read(_LARGEST_FILE + 1)
    except OSError as exc:
        file.fail(f"cannot be read: {quote(path)}: {exc.strerror or exc}")
    if len(data) > _LARGEST_FILE:
        file.fail(f"{quote(path)} is over {_LARGEST_FILE // 1024} KiB: a key file holds one key")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        file.fail(f"{quote(path)} is not UTF-8 text")
    if not text:
        file.fail(f"{quote(path)} is empty")
    return _checked(text, f"{file.label} {quote(path)}")


def _checked(secret: str, place: str) -> str:
    """What a client can send in a header: printable ASCII on one line (no value in the message)."""
    if "\n" in secret or "\r" in secret:
        raise ConfigError(f"{place} holds more than one line: a key is one line")
    if secret != secret.strip():
        raise ConfigError(f"{place} starts or ends with white space, which clients' headers lose")
    if not secret.isascii() or not secret.isprintable():
        raise ConfigError(f"{place} holds characters a client cannot send in a header (printable ASCII only)")
    return secret


def _allowed(node: Node, models: tuple[ModelConfig, ...]) -> tuple[str, ...] | None:
    if not node.exists():
        return None
    items = node.items('a list of model names, like { "qwen3-8b" }')
    if not items:
        node.fail("must list at least one model (leave it out for every model, or remove the key)")
    names: dict[str, None] = {}
    for item in items:
        given = item.string()
        model = next((m for m in models if m.name == given or given in m.aliases), None)
        if model is None:
            known = ", ".join(quote(m.name) for m in models)
            item.fail(f"is not a model name or alias: {quote(given)} (models: {known})")
        names[model.name] = None
    return tuple(names)


def _priority(node: Node) -> Priority:
    if not node.exists():
        return Priority.INTERACTIVE
    value = node.string()
    try:
        return Priority(value)
    except ValueError:
        node.fail(f"must be one of {', '.join(quote(p.value) for p in Priority)}, got {quote(value)}")
