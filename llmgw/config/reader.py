"""Typed access to what PyLuaHelper exported, with error messages that name the exact place."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

from llmgw.config.schema import ConfigError

logger = logging.getLogger(__name__)

POSITIVE_INT_RE = re.compile(r"[1-9][0-9]*")
_MAX_SHOWN = 80  # longest string value quoted in a message


def quote(text: str) -> str:
    """A string as it is shown in messages: double-quoted, escaped, shortened."""
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return json.dumps(text, ensure_ascii=False)


def _int_what(minimum: int) -> str:
    if minimum == 1:
        return "a positive integer"
    if minimum == 0:
        return "a non-negative integer"
    return f"an integer >= {minimum}"


class Reader:
    """Typed access to what PyLuaHelper exported: the Lua type, text and children of each dotted key.

    PyLuaHelper flattens tables to keys like ``models.1.variants.2.context``; values it cannot
    export (functions...) are absent there, so their type comes from the loader's output instead.
    """

    def __init__(self, lua: Any, unsupported: Mapping[str, str]) -> None:
        self._lua = lua
        self._unsupported = dict(unsupported)
        self._keys = [str(key) for key in lua]  # PyLuaHelper iterates its keys
        self._children: dict[str, dict[str, None]] = {}
        for key in [*self._keys, *self._unsupported]:
            parts = key.split(".")
            for depth in range(1, len(parts)):
                self._children.setdefault(".".join(parts[:depth]), {})[parts[depth]] = None

    def kind(self, key: str) -> str:
        """'table', 'string', 'number', 'boolean', 'none' (absent) or an unexportable Lua type."""
        if key in self._unsupported:
            return self._unsupported[key]
        return str(self._lua.get_type(key))

    def text(self, key: str) -> str:
        value = self._lua.get(key)
        return "" if value is None else str(value)

    def children(self, key: str) -> list[str]:
        """Names of the direct children of a table (first dotted segment after ``key``)."""
        return list(self._children.get(key, {}))

    def subtree(self, key: str) -> list[str]:
        """Every exported key under ``key``, relative to it (keeps names that contain dots)."""
        prefix = key + "."
        return sorted(k[len(prefix) :] for k in [*self._keys, *self._unsupported] if k.startswith(prefix))


@dataclass(frozen=True)
class Node:
    """One value of the config: its dotted key for the reader and its label for error messages."""

    reader: Reader
    key: str
    label: str
    sep: str = "."  # between this label and a child's name

    def child(self, name: str) -> Node:
        return Node(self.reader, f"{self.key}.{name}", f"{self.label}{self.sep}{name}")

    def item(self, index: int) -> Node:
        return Node(self.reader, f"{self.key}.{index}", f"{self.label}[{index}]")

    def titled(self, title: str) -> Node:
        """Same table; its children are labelled ``title: child`` (``models[2] "qwen": variants``)."""
        return Node(self.reader, self.key, f"{title}:", " ")

    @property
    def kind(self) -> str:
        return self.reader.kind(self.key)

    def exists(self) -> bool:
        return self.kind != "none"

    def fail(self, problem: str) -> NoReturn:
        raise ConfigError(f"{self.label} {problem}")

    def shown(self, secret: bool = False) -> str:
        """The actual value for a message; only its type when ``secret``."""
        kind = self.kind
        if kind in ("string", "number", "boolean"):
            if secret:
                return f"a {kind}"
            text = self.reader.text(self.key)
            return quote(text) if kind == "string" else text
        if kind == "none":
            return "nothing"
        return f"a {kind}"

    def expect(self, what: str, secret: bool = False) -> NoReturn:
        """Fail with 'is required (what)' or 'must be what, got VALUE'."""
        if not self.exists():
            self.fail(f"is required ({what})")
        self.fail(f"must be {what}, got {self.shown(secret)}")

    # -- tables -----------------------------------------------------------------------------

    def table(self, what: str = "a table") -> Node:
        if self.kind != "table":
            self.expect(what)
        return self

    def child_names(self) -> list[str]:
        return self.reader.children(self.key)

    def items(self, what: str = "a list", secret: bool = False) -> list[Node]:
        """The elements of a Lua array (keys 1..n without holes)."""
        if self.kind != "table":
            self.expect(what, secret)
        indices: list[int] = []
        for name in self.child_names():
            if not POSITIVE_INT_RE.fullmatch(name):
                self.fail(f"must be {what}, but has the key {quote(name)}")
            indices.append(int(name))
        indices.sort()
        for expected, actual in enumerate(indices, 1):
            if expected != actual:
                self.fail(f"has a hole: [{expected}] is nil (misspelled variable?)")
        return [self.item(index) for index in indices]

    def warn_unknown(self, title: str, known: frozenset[str], ignored: frozenset[str] = frozenset()) -> None:
        unknown = sorted(set(self.child_names()) - known - ignored)
        if unknown:
            logger.warning("config: %s: unknown key(s) ignored: %s", title, ", ".join(unknown))

    # -- scalars ----------------------------------------------------------------------------

    def numeric(self) -> int | float | None:
        """The number, as an int when integral (Lua 5.3+ exports 4096.0 for floats); None if not finite."""
        if self.kind != "number":
            return None
        text = self.reader.text(self.key)
        with contextlib.suppress(ValueError):
            return int(text)
        try:
            value = float(text)
        except ValueError:
            return None
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() else value

    def string(self, non_empty: bool = True, secret: bool = False) -> str:
        what = "a non-empty string" if non_empty else "a string"
        if self.kind != "string":
            self.expect(what, secret)
        text = self.reader.text(self.key)
        if non_empty and not text:
            self.expect(what, secret)
        return text

    def integer(self, minimum: int) -> int:
        value = self.numeric()
        if not isinstance(value, int) or value < minimum:
            self.expect(_int_what(minimum))
        return value

    def seconds(self, allow_zero: bool) -> float:
        value = self.numeric()
        if value is None or value < 0 or (value == 0 and not allow_zero):
            self.expect("a number >= 0" if allow_zero else "a positive number")
        return float(value)

    # -- optional children with defaults -----------------------------------------------------

    def boolean(self) -> bool:
        if self.kind != "boolean":
            self.expect("true or false")
        return self.reader.text(self.key).lower() == "true"

    def get_bool(self, name: str, default: bool) -> bool:
        node = self.child(name)
        return node.boolean() if node.exists() else default

    def positive_number(self) -> float:
        value = self.numeric()
        if value is None or value <= 0:
            self.expect("a positive number")
        return float(value)

    def get_int(self, name: str, minimum: int, default: int) -> int:
        node = self.child(name)
        return node.integer(minimum) if node.exists() else default

    def opt_int(self, name: str, minimum: int) -> int | None:
        node = self.child(name)
        return node.integer(minimum) if node.exists() else None

    def get_seconds(self, name: str, default: float, allow_zero: bool = False) -> float:
        node = self.child(name)
        return node.seconds(allow_zero) if node.exists() else default


def base_url(node: Node, what: str, schemes: tuple[str, ...] = ("http",)) -> str:
    """A base URL (scheme, host and port; no path, query, fragment or credentials), returned
    without a trailing slash: engines, peers and agents are all addressed so."""
    text = node.string()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        node.expect(what)
    if (
        parts.scheme not in schemes
        or not parts.hostname
        or port is None
        or not 1 <= port <= 65535
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        node.expect(what)
    return f"{parts.scheme}://{parts.netloc}"
