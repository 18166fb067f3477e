"""Configuration: load the Lua file with PyLuaHelper, validate it, expose a small typed API.

This is the only module that reads configuration keys. Everything else asks the
:class:`Config` object (``cfg.model("name")``, ``variant.context``, ``variant.timeouts``...).
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import logging
import math
import os
import re
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO, cast
from urllib.parse import urlsplit

from python_lua_helper import PyLuaHelper

logger = logging.getLogger(__name__)

LLAMACPP = "llama.cpp"
KNOWN_ENGINES = (LLAMACPP,)


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the place and the problem."""


@dataclass(frozen=True)
class Timeouts:
    """Effective timeouts in seconds, after the server -> model -> variant cascade."""

    health_check: float  # one /health probe
    engine_startup: float  # spawn -> healthy
    engine_idle: float  # idle engine is stopped after this; 0 disables idle unload
    engine_stop: float  # SIGTERM -> SIGKILL grace


@dataclass(frozen=True)
class Tokenization:
    """A standalone tokenizer (llama-tokenize) used to count without a running engine."""

    binary: str
    args: tuple[str, ...]  # base args + extra_args, passed verbatim
    extra_tokens_per_message: int
    extra_tokens: int


@dataclass(frozen=True)
class Variant:
    """One way to launch a model: a context size and the command line that gives it."""

    index: int  # 1-based position in the config's variants list (for messages)
    binary: str
    args: tuple[str, ...]
    context: int
    connect: str  # base URL of the engine, e.g. "http://127.0.0.1:7778"
    timeouts: Timeouts
    env: tuple[tuple[str, str], ...] = ()  # extra environment for the engine process


@dataclass(frozen=True)
class ModelConfig:
    name: str
    engine: str
    variants: tuple[Variant, ...]  # sorted by context, smallest first
    tokenization: Tokenization | None = None
    completion_reserve: int | None = None  # overrides ServerConfig.completion_reserve

    def smallest_fitting(self, tokens: int) -> Variant | None:
        """The variant with the smallest context that holds ``tokens``, or None."""
        for variant in self.variants:
            if variant.context >= tokens:
                return variant
        return None

    @property
    def largest(self) -> Variant:
        return self.variants[-1]


@dataclass(frozen=True)
class ServerConfig:
    listen: tuple[tuple[str, int], ...]  # (host, port); IPv6 hosts without brackets
    timeouts: Timeouts
    max_body_bytes: int = 64 * 1024 * 1024
    queue_timeout: float = 600.0  # longest wait for a switch or a queue slot before 503
    completion_reserve: int = 1024  # completion budget when a request sets no max_tokens
    shutdown_grace: float = 5.0  # in-flight requests get this long on SIGTERM
    api_keys: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Config:
    path: str
    server: ServerConfig
    models: tuple[ModelConfig, ...]

    def model(self, name: str) -> ModelConfig | None:
        for model in self.models:
            if model.name == name:
                return model
        return None

    def model_names(self) -> list[str]:
        return [model.name for model in self.models]

    def summary(self) -> str:
        """Short human summary for --check-config."""
        lines = [f"config {self.path}: OK"]
        listen = ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.server.listen)
        lines.append(f"listen: {listen}")
        for model in self.models:
            contexts = ", ".join(str(v.context) for v in model.variants)
            count = len(model.variants)
            lines.append(f"model {model.name!r} ({model.engine}): {count} variant(s), context {contexts}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

_PRE_SCRIPT = Path(__file__).with_name("pre.lua")
_EXPORTS = ("server", "models")

DEFAULT_TIMEOUTS = Timeouts(health_check=5.0, engine_startup=120.0, engine_idle=0.0, engine_stop=15.0)
DEFAULT_TOKENIZE_BASE_ARGS = ("--log-disable", "--stdin", "--ids")

_TIMEOUT_KEYS = frozenset(
    {"health_check_timeout", "engine_startup_timeout", "engine_idle_timeout", "engine_stop_timeout"}
)
_SERVER_KEYS = _TIMEOUT_KEYS | {
    "listen_v4",
    "listen_v6",
    "max_body_size",
    "queue_timeout",
    "completion_reserve",
    "shutdown_grace",
    "api_keys",
}
_MODEL_KEYS = _TIMEOUT_KEYS | {"name", "engine", "connect", "completion_reserve", "tokenization", "variants"}
_MODEL_IGNORED_KEYS = frozenset({"primary"})  # LLM-GW key, meaningless here: accepted silently
_VARIANT_KEYS = _TIMEOUT_KEYS | {"binary", "args", "context", "connect", "env"}
_TOKENIZATION_KEYS = frozenset({"binary", "base_args", "extra_args", "extra_tokens_per_message", "extra_tokens"})

# Lines that PyLuaHelper's loader.lua prints on stdout (we capture it, see _run_lua).
_EXPORT_FAILED_RE = re.compile(r"^failed to export node '(.*)' with unsupported type '(\w+)'$")
_NOT_EXIST_RE = re.compile(r"^requested global variable or table with name \S+ is not exist$")
# "lua5.4: " / "/usr/bin/lua: " prefix the standalone interpreter puts before an uncaught error.
_INTERPRETER_RE = re.compile(r"^\S*lua[\w.-]*(?:\.exe)?: ", re.IGNORECASE)
_POSITIVE_INT_RE = re.compile(r"[1-9][0-9]*")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_MAX_SHOWN = 80  # longest string value quoted in a message


def _quote(text: str) -> str:
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


class _Reader:
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
class _Node:
    """One value of the config: its dotted key for the reader and its label for error messages."""

    reader: _Reader
    key: str
    label: str
    sep: str = "."  # between this label and a child's name

    def child(self, name: str) -> _Node:
        return _Node(self.reader, f"{self.key}.{name}", f"{self.label}{self.sep}{name}")

    def item(self, index: int) -> _Node:
        return _Node(self.reader, f"{self.key}.{index}", f"{self.label}[{index}]")

    def titled(self, title: str) -> _Node:
        """Same table; its children are labelled ``title: child`` (``models[2] "qwen": variants``)."""
        return _Node(self.reader, self.key, f"{title}:", " ")

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
            return _quote(text) if kind == "string" else text
        if kind == "none":
            return "nothing"
        return f"a {kind}"

    def expect(self, what: str, secret: bool = False) -> NoReturn:
        """Fail with 'is required (what)' or 'must be what, got VALUE'."""
        if not self.exists():
            self.fail(f"is required ({what})")
        self.fail(f"must be {what}, got {self.shown(secret)}")

    # -- tables -----------------------------------------------------------------------------

    def table(self, what: str = "a table") -> _Node:
        if self.kind != "table":
            self.expect(what)
        return self

    def keys(self) -> list[str]:
        return self.reader.children(self.key)

    def items(self, what: str = "a list", secret: bool = False) -> list[_Node]:
        """The elements of a Lua array (keys 1..n without holes)."""
        if self.kind != "table":
            self.expect(what, secret)
        indices: list[int] = []
        for name in self.keys():
            if not _POSITIVE_INT_RE.fullmatch(name):
                self.fail(f"must be {what}, but has the key {_quote(name)}")
            indices.append(int(name))
        indices.sort()
        for expected, actual in enumerate(indices, 1):
            if expected != actual:
                self.fail(f"has a hole: [{expected}] is nil (misspelled variable?)")
        return [self.item(index) for index in indices]

    def warn_unknown(self, title: str, known: frozenset[str], ignored: frozenset[str] = frozenset()) -> None:
        unknown = sorted(set(self.keys()) - known - ignored)
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

    def get_int(self, name: str, minimum: int, default: int) -> int:
        node = self.child(name)
        return node.integer(minimum) if node.exists() else default

    def opt_int(self, name: str, minimum: int) -> int | None:
        node = self.child(name)
        return node.integer(minimum) if node.exists() else None

    def get_seconds(self, name: str, default: float, allow_zero: bool = False) -> float:
        node = self.child(name)
        return node.seconds(allow_zero) if node.exists() else default


# -- sections ---------------------------------------------------------------------------------


def _timeouts(node: _Node, base: Timeouts) -> Timeouts:
    """Values set on this table override ``base`` (server -> model -> variant cascade)."""
    return Timeouts(
        health_check=node.get_seconds("health_check_timeout", base.health_check),
        engine_startup=node.get_seconds("engine_startup_timeout", base.engine_startup),
        engine_idle=node.get_seconds("engine_idle_timeout", base.engine_idle, allow_zero=True),
        engine_stop=node.get_seconds("engine_stop_timeout", base.engine_stop),
    )


def _listen_address(node: _Node, v6: bool) -> tuple[str, int]:
    """Parse ``host:port`` (IPv4 or localhost) or ``[host]:port`` (IPv6)."""
    text = node.string()
    family = "IPv6" if v6 else "IPv4"
    example = "[::1]:7777" if v6 else "127.0.0.1:7777"
    bad = f"must be an {family} address and port like {example}, got {_quote(text)}"
    host, sep, port_text = text.rpartition(":")
    if v6:
        if not (host.startswith("[") and host.endswith("]")):
            node.fail(bad)
        host = host[1:-1]
    elif "[" in host or ":" in host:
        node.fail(bad + " (IPv6 addresses belong in listen_v6)")
    if not sep or not host:
        node.fail(bad)
    if not _PORT_RE.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        node.fail(f"has an invalid port in {_quote(text)} (must be 1..65535)")
    if not v6 and host == "localhost":
        return host, int(port_text)
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = (
            ipaddress.IPv6Address(host) if v6 else ipaddress.IPv4Address(host)
        )
    except ValueError:
        node.fail(bad)
    return str(address), int(port_text)


def _listen_family(node: _Node, v6: bool) -> list[tuple[_Node, tuple[str, int]]]:
    """A string (one address or "none") or a list of addresses."""
    if not node.exists():
        return []
    if node.kind == "string" and node.reader.text(node.key) == "none":
        return []
    if node.kind == "string":
        return [(node, _listen_address(node, v6))]
    what = 'an address, a list of addresses or "none"'
    items = node.items(what)
    if not items:
        node.fail('must not be an empty list (use "none" to disable it)')
    return [(item, _listen_address(item, v6)) for item in items]


def _listen(server: _Node) -> tuple[tuple[str, int], ...]:
    v4 = _listen_family(server.child("listen_v4"), False)
    entries = v4 + _listen_family(server.child("listen_v6"), True)
    seen: dict[tuple[str, int], str] = {}
    for node, address in entries:
        if address in seen:
            node.fail(f"repeats the address of {seen[address]}")
        seen[address] = node.label
    if not seen:
        raise ConfigError(
            'server has no listener: set server.listen_v4 and/or server.listen_v6 (both are missing or "none")'
        )
    return tuple(seen)


def _server(node: _Node) -> ServerConfig:
    node.table("a table")
    node.warn_unknown("server", _SERVER_KEYS)
    api_keys: tuple[str, ...] = ()
    keys_node = node.child("api_keys")
    if keys_node.exists():
        items = keys_node.items("a list of strings", secret=True)
        api_keys = tuple(item.string(secret=True) for item in items)
    return ServerConfig(
        listen=_listen(node),
        timeouts=_timeouts(node, DEFAULT_TIMEOUTS),
        max_body_bytes=node.get_int("max_body_size", 1, ServerConfig.max_body_bytes),
        queue_timeout=node.get_seconds("queue_timeout", ServerConfig.queue_timeout),
        completion_reserve=node.get_int("completion_reserve", 1, ServerConfig.completion_reserve),
        shutdown_grace=node.get_seconds("shutdown_grace", ServerConfig.shutdown_grace, allow_zero=True),
        api_keys=api_keys,
    )


def _connect(node: _Node) -> str:
    """An http:// base URL with host and port, returned without a trailing slash."""
    text = node.string()
    what = "an http:// URL with host and port like http://127.0.0.1:7778"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        node.expect(what)
    if (
        parts.scheme != "http"
        or not parts.hostname
        or port is None
        or not 1 <= port <= 65535
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        node.expect(what)
    return f"http://{parts.netloc}"


def _arg(node: _Node) -> str:
    """Command-line argument: strings verbatim, numbers as text (4096.0 -> "4096")."""
    if node.kind == "string":
        return node.reader.text(node.key)
    value = node.numeric()
    if value is None:
        node.expect("a string or a number")
    return str(value) if isinstance(value, int) else node.reader.text(node.key)


def _args(node: _Node) -> tuple[str, ...]:
    return tuple(_arg(item) for item in node.items("a list of strings"))


def _env(node: _Node) -> tuple[tuple[str, str], ...]:
    what = "a table of NAME = value strings"
    node.table(what)
    env: list[tuple[str, str]] = []
    for name in node.reader.subtree(node.key):
        entry = node.child(name)
        if _POSITIVE_INT_RE.fullmatch(name) or "=" in name:
            node.fail(f"must be {what}, but has the key {_quote(name)}")
        if entry.kind == "table":
            entry.expect("a string or a number")
        env.append((name, _arg(entry)))
    return tuple(env)


def _tokenization(node: _Node, title: str) -> Tokenization:
    node.table("a table")
    node.warn_unknown(title, _TOKENIZATION_KEYS)
    base = node.child("base_args")
    extra = node.child("extra_args")
    return Tokenization(
        binary=node.child("binary").string(),
        args=(_args(base) if base.exists() else DEFAULT_TOKENIZE_BASE_ARGS) + (_args(extra) if extra.exists() else ()),
        extra_tokens_per_message=node.get_int("extra_tokens_per_message", 0, 0),
        extra_tokens=node.get_int("extra_tokens", 0, 0),
    )


def _variant(node: _Node, index: int, model_connect: str | None, base: Timeouts) -> Variant:
    node.table("a variant table")
    node.warn_unknown(node.label, _VARIANT_KEYS)
    connect_node = node.child("connect")
    if connect_node.exists():
        connect = _connect(connect_node)
    elif model_connect is not None:
        connect = model_connect
    else:
        connect_node.fail("is required (set connect on the variant or on its model)")
    env_node = node.child("env")
    return Variant(
        index=index,
        binary=node.child("binary").string(),
        args=_args(node.child("args")),
        context=node.child("context").integer(1),
        connect=connect,
        timeouts=_timeouts(node, base),
        env=_env(env_node) if env_node.exists() else (),
    )


def _model(node: _Node, server_timeouts: Timeouts) -> ModelConfig:
    node.table("a model table")
    name = node.child("name").string()
    title = f"{node.label} {_quote(name)}"
    model = node.titled(title)
    node.warn_unknown(title, _MODEL_KEYS, _MODEL_IGNORED_KEYS)

    engine_node = model.child("engine")
    known = ", ".join(_quote(engine) for engine in KNOWN_ENGINES)
    if not engine_node.exists():
        engine_node.fail(f"is required (one of {known})")
    engine = engine_node.string()
    if engine not in KNOWN_ENGINES:
        engine_node.fail(f"is unknown: {_quote(engine)} (known engines: {known})")

    connect_node = model.child("connect")
    model_connect = _connect(connect_node) if connect_node.exists() else None
    timeouts = _timeouts(model, server_timeouts)

    variants_node = model.child("variants")
    items = variants_node.items("a non-empty list of variant tables")
    if not items:
        variants_node.fail("must be a non-empty list of variant tables, got an empty table")
    variants = [_variant(item, index, model_connect, timeouts) for index, item in enumerate(items, 1)]
    by_context: dict[int, Variant] = {}
    for variant in variants:
        other = by_context.setdefault(variant.context, variant)
        if other is not variant:
            raise ConfigError(
                f"{variants_node.label}[{other.index}] and variants[{variant.index}] "
                f"have the same context {variant.context}"
            )

    tokenization_node = model.child("tokenization")
    return ModelConfig(
        name=name,
        engine=engine,
        variants=tuple(sorted(variants, key=lambda variant: variant.context)),
        tokenization=_tokenization(tokenization_node, tokenization_node.label) if tokenization_node.exists() else None,
        completion_reserve=model.opt_int("completion_reserve", 1),
    )


def _models(node: _Node, server_timeouts: Timeouts) -> tuple[ModelConfig, ...]:
    what = "a non-empty list of model tables"
    items = node.items(what)
    if not items:
        node.fail(f"must be {what}, got an empty table")
    models: list[ModelConfig] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(items, 1):
        model = _model(item, server_timeouts)
        if model.name in first_index:
            raise ConfigError(
                f"models[{index}] {_quote(model.name)}: duplicate name, "
                f"already used by models[{first_index[model.name]}]"
            )
        first_index[model.name] = index
        models.append(model)
    return tuple(models)


# -- running Lua --------------------------------------------------------------------------------


def _lua_error(output: str) -> str | None:
    """The interpreter's one error message from the captured output, without the stack traceback."""
    head = output.split("stack traceback:", 1)[0]
    lines = head.splitlines()
    for start in range(len(lines) - 1, -1, -1):
        match = _INTERPRETER_RE.match(lines[start])
        if match:
            message = " ".join([lines[start][match.end() :], *lines[start + 1 :]])
            message = " ".join(message.split())
            return message[:500] or None
    return None


def _restore_chunkname(message: str, full_path: str, shown: str) -> str:
    """Lua cuts long file names in messages to "...tail"; put the config path back as the user gave it."""
    if message.startswith(full_path + ":"):
        return shown + message[len(full_path) :]
    if message.startswith("..."):
        for start in range(len(full_path)):
            tail = full_path[start:]
            if message.startswith(f"...{tail}:"):
                return shown + message[3 + len(tail) :]
    return message


def _lua_failure(path: str, reason: str, output: str) -> str:
    if "detect compatible Lua" in reason:
        return (
            "no Lua interpreter found: install Lua 5.1-5.5 (for example the lua5.4 package) "
            "so that 'lua' or 'lua5.4' is on PATH"
        )
    if "timed out" in reason:
        return f"running {path} timed out (the Lua config must finish within 180 s)"
    message = _lua_error(output)
    if message:
        return f"Lua error: {_restore_chunkname(message, os.path.abspath(path), path)}"
    return f"cannot run {path}: {reason}"


def _split_output(output: str) -> tuple[dict[str, str], list[str]]:
    """Separate the loader's notes about unexportable values from what the config printed."""
    unsupported: dict[str, str] = {}
    printed: list[str] = []
    for line in output.splitlines():
        match = _EXPORT_FAILED_RE.match(line)
        if match:
            unsupported[match.group(1)] = match.group(2)
        elif line.strip() and not _NOT_EXIST_RE.match(line):
            printed.append(line)
    return unsupported, printed


class _ThreadCapture(io.TextIOBase):
    """Stand-in for sys.stdout: the loading thread's writes are kept, other threads' pass through."""

    def __init__(self, target: TextIO) -> None:
        super().__init__()
        self._target = target
        self._thread = threading.get_ident()
        self.captured = io.StringIO()

    def write(self, text: str) -> int:
        if threading.get_ident() == self._thread:
            return self.captured.write(text)
        return self._target.write(text)

    def flush(self) -> None:
        self._target.flush()


_CAPTURE_LOCK = threading.Lock()  # one capture at a time: each restores the stdout it replaced


class ConfigLoader:
    """Loads and validates a Lua config file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> Config:
        """Run the config with Lua and build a validated :class:`Config`; any problem is a ConfigError."""
        if not os.path.isfile(self.path):
            raise ConfigError(f"config file not found: {self.path}")
        lua, output = self._run_lua()
        unsupported, printed = _split_output(output)
        for line in printed:
            logger.debug("config output: %s", line)
        reader = _Reader(lua, unsupported)
        try:
            server = _server(_Node(reader, "server", "server"))
            models = _models(_Node(reader, "models", "models"), server.timeouts)
        except ConfigError:
            raise
        except Exception as exc:  # a bug here must still surface as a config problem, not a crash
            logger.debug("unexpected error while validating %s", self.path, exc_info=True)
            raise ConfigError(f"cannot validate {self.path}: {type(exc).__name__}: {exc}") from exc
        return Config(path=self.path, server=server, models=models)

    def _run_lua(self) -> tuple[Any, str]:
        """Run PyLuaHelper and return it with the output it printed (Lua's prints and error messages).

        PyLuaHelper raises a bare RuntimeError on failure and prints the interpreter's stderr
        to ``sys.stdout``: capturing that is how the ``file:line: message`` of a Lua error is
        recovered. Only this thread's writes are captured (reloads run in a worker thread).
        """
        config_path = os.path.abspath(self.path)
        with _CAPTURE_LOCK:
            original = sys.stdout
            capture = _ThreadCapture(original)
            sys.stdout = cast(TextIO, capture)
            try:
                lua = PyLuaHelper(
                    lua_config_script=config_path,
                    export_vars=list(_EXPORTS),
                    pre_script=str(_PRE_SCRIPT),
                    work_dir=os.path.dirname(config_path),
                )
            except FileNotFoundError:
                raise ConfigError(f"config file not found: {self.path}") from None
            except RuntimeError as exc:
                raise ConfigError(_lua_failure(self.path, str(exc), capture.captured.getvalue())) from None
            except UnicodeDecodeError:
                raise ConfigError(f"{self.path}: a string value is not valid UTF-8") from None
            except Exception as exc:
                raise ConfigError(f"cannot load {self.path}: {type(exc).__name__}: {exc}") from exc
            finally:
                sys.stdout = original
        return lua, capture.captured.getvalue()
