"""Request-facing keys: the names a model answers to, the routes it serves, and the request
filters it applies (set, strip, completion_limit)."""

from __future__ import annotations

from typing import Any

from llmgw.config.reader import POSITIVE_INT_RE, Node, quote
from llmgw.config.schema import FEEDBACK_MODES

# What ``endpoints = { ... }`` may list: one name per family of routes (see llmgw.api.endpoints).
CAPABILITIES = ("chat", "completions", "embeddings", "responses", "messages", "infill", "rerank", "tokenize")


def names(node: Node, what: str) -> tuple[str, ...]:
    """A list of distinct non-empty strings."""
    items = node.items(what)
    seen: dict[str, None] = {}
    for item in items:
        name = item.string()
        if name in seen:
            item.fail(f"repeats {quote(name)}")
        seen[name] = None
    return tuple(seen)


def endpoints(node: Node) -> tuple[str, ...] | None:
    """The route families a model or variant serves; None when absent (all of them)."""
    if not node.exists():
        return None
    listed = names(node, "a list of route names")
    if not listed:
        node.fail(f"must not be empty (route names: {', '.join(CAPABILITIES)})")
    for index, name in enumerate(listed, 1):
        if name not in CAPABILITIES:
            node.item(index).fail(f"is not a route name: {quote(name)} (route names: {', '.join(CAPABILITIES)})")
    return listed


def loading_feedback(node: Node) -> str | None:
    """``loading_feedback``: one of FEEDBACK_MODES; None when absent."""
    if not node.exists():
        return None
    mode = node.string()
    if mode not in FEEDBACK_MODES:
        node.fail(f"must be one of {', '.join(map(quote, FEEDBACK_MODES))}, got {quote(mode)}")
    return mode


def json_value(node: Node) -> Any:
    """A Lua value as JSON: strings, numbers, booleans, arrays (keys 1..n) and objects."""
    kind = node.kind
    if kind == "string":
        return node.reader.text(node.key)
    if kind == "boolean":
        return node.boolean()
    if kind == "number":
        value = node.numeric()
        if value is None:
            node.expect("a finite number")
        return value
    if kind == "table":
        children = node.child_names()
        if children and all(POSITIVE_INT_RE.fullmatch(name) for name in children):
            return [json_value(item) for item in node.items("a list")]
        return {name: json_value(node.child(name)) for name in children}
    node.expect("a string, number, boolean or table")


def set_fields(node: Node) -> tuple[tuple[str, Any], ...]:
    """``set = { temperature = 0.6 }``: fields forced into every request."""
    if not node.exists():
        return ()
    node.table("a table of field = value")
    fields: list[tuple[str, Any]] = []
    for name in node.child_names():
        if POSITIVE_INT_RE.fullmatch(name):
            node.fail(f"must be a table of field = value, but has the key [{name}]")
        if name == "model":
            node.fail('cannot set "model" (use aliases to rename a model)')
        fields.append((name, json_value(node.child(name))))
    return tuple(fields)


def strip_fields(node: Node) -> tuple[str, ...]:
    """``strip = { "top_k" }``: fields removed from every request."""
    if not node.exists():
        return ()
    listed = names(node, "a list of field names")
    if "model" in listed:
        node.fail('cannot strip "model"')
    return listed


def cors_origins(node: Node) -> tuple[str, ...]:
    """Origins browsers may call from: "*" (any, the default, as llama-server), a list, or {} (none)."""
    if not node.exists():
        return ("*",)
    if node.kind == "string":
        return (node.string(),)
    if node.kind == "table" and not node.child_names():
        return ()
    return names(node, 'a list of origins like "http://localhost:3000", or "*"')
