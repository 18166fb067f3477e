"""Validation of each config section into the typed schema (server, models, variants...)."""

from __future__ import annotations

import re
import socket
from dataclasses import replace

from llmgw.config import budget as budget_keys
from llmgw.config import caching, peering, rpc, serving
from llmgw.config.reader import POSITIVE_INT_RE, Node, base_url, quote
from llmgw.config.schema import (
    KNOWN_ENGINES,
    ConfigError,
    ModelConfig,
    ServerConfig,
    Timeouts,
    Tokenization,
    Variant,
)

DEFAULT_TIMEOUTS = Timeouts(health_check=5.0, engine_startup=120.0, engine_idle=0.0, engine_stop=15.0)
DEFAULT_TOKENIZE_BASE_ARGS = ("--log-disable", "--stdin", "--ids")

_TIMEOUT_KEYS = frozenset(
    {
        "health_check_timeout",
        "engine_startup_timeout",
        "engine_idle_timeout",
        "engine_stop_timeout",
        "stream_idle_timeout",
    }
)
_SERVER_KEYS = (
    _TIMEOUT_KEYS
    | {
        "listen_v4",
        "listen_v6",
        "max_body_size",
        "queue_timeout",
        "completion_reserve",
        "shutdown_grace",
        "api_keys",
        "keys",
        "batch_overtakes",
        "max_engines",
        "memory_budget",
        "state_dir",
        "default_model",
        "list_aliases",
        "graceful_stop",
        "cors_origins",
        "strict_context",
        "loading_feedback",
        "slot_cache",
        "ollama_version",
    }
    | peering.POOL_KEYS
    | rpc.SERVER_KEYS
)
_MODEL_KEYS = _TIMEOUT_KEYS | {
    "name",
    "engine",
    "connect",
    "completion_reserve",
    "tokenization",
    "variants",
    "pinned",
    "exclusive",
    "devices",
    "aliases",
    "endpoints",
    "set",
    "strip",
    "completion_limit",
    "strict_context",
    "loading_feedback",
    "slot_cache",
    *rpc.VARIANT_KEYS,
}
_MODEL_IGNORED_KEYS = frozenset({"primary"})  # LLM-GW key, meaningless here: accepted silently
_VARIANT_KEYS = _TIMEOUT_KEYS | {"binary", "args", "context", "connect", "env", "memory", "devices", "endpoints"}
_VARIANT_KEYS |= rpc.VARIANT_KEYS
_TOKENIZATION_KEYS = frozenset({"binary", "base_args", "extra_args", "extra_tokens_per_message", "extra_tokens"})
_PORT_RE = re.compile(r"[0-9]{1,5}")
_VERSION_RE = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9}){1,3}")


def _timeouts(node: Node, base: Timeouts) -> Timeouts:
    """Values set on this table override ``base`` (server -> model -> variant cascade)."""
    return Timeouts(
        health_check=node.get_seconds("health_check_timeout", base.health_check),
        engine_startup=node.get_seconds("engine_startup_timeout", base.engine_startup),
        engine_idle=node.get_seconds("engine_idle_timeout", base.engine_idle, allow_zero=True),
        engine_stop=node.get_seconds("engine_stop_timeout", base.engine_stop),
        stream_idle=node.get_seconds("stream_idle_timeout", base.stream_idle, allow_zero=True),
    )


def _listen_address(node: Node, v6: bool) -> tuple[str, int]:
    """Parse ``host:port`` (IPv4 or localhost) or ``[host]:port`` (IPv6)."""
    text = node.string()
    family = "IPv6" if v6 else "IPv4"
    example = "[::1]:7777" if v6 else "127.0.0.1:7777"
    bad = f"must be an {family} address and port like {example}, got {quote(text)}"
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
        node.fail(f"has an invalid port in {quote(text)} (must be 1..65535)")
    if not v6 and host == "localhost":
        return host, int(port_text)
    family_id = socket.AF_INET6 if v6 else socket.AF_INET
    try:  # the socket module, not ipaddress: the config is read before the gateway's other imports
        address = socket.inet_ntop(family_id, socket.inet_pton(family_id, host))
    except (OSError, ValueError):
        node.fail(bad)
    return address, int(port_text)


def _listen_family(node: Node, v6: bool) -> list[tuple[Node, tuple[str, int]]]:
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


def _listen(server: Node) -> tuple[tuple[str, int], ...]:
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


def server_section(node: Node) -> ServerConfig:
    node.table("a table")
    node.warn_unknown("server", _SERVER_KEYS)
    api_keys: tuple[str, ...] = ()
    keys_node = node.child("api_keys")
    if keys_node.exists():
        items = keys_node.items("a list of strings", secret=True)
        api_keys = tuple(item.string(secret=True) for item in items)
    state_dir = node.child("state_dir")
    default_model = node.child("default_model")
    budget = budget_keys.memory_budget(node.child("memory_budget"))
    name = peering.node_name(node.child("node_name"))
    return ServerConfig(
        listen=_listen(node),
        timeouts=_timeouts(node, DEFAULT_TIMEOUTS),
        max_body_bytes=node.get_int("max_body_size", 1, ServerConfig.max_body_bytes),
        queue_timeout=node.get_seconds("queue_timeout", ServerConfig.queue_timeout),
        completion_reserve=node.get_int("completion_reserve", 1, ServerConfig.completion_reserve),
        shutdown_grace=node.get_seconds("shutdown_grace", ServerConfig.shutdown_grace, allow_zero=True),
        api_keys=api_keys,
        batch_overtakes=node.get_int("batch_overtakes", 0, ServerConfig.batch_overtakes),
        max_engines=node.get_int("max_engines", 1, ServerConfig.max_engines),
        memory_budget=budget,
        state_dir=state_dir.string() if state_dir.exists() else None,
        default_model=default_model.string() if default_model.exists() else None,
        list_aliases=node.get_bool("list_aliases", True),
        graceful_stop=node.get_bool("graceful_stop", False),
        cors_origins=serving.cors_origins(node.child("cors_origins")),
        strict_context=node.get_bool("strict_context", False),
        loading_feedback=serving.loading_feedback(node.child("loading_feedback")) or ServerConfig.loading_feedback,
        slot_cache=caching.slot_cache(node.child("slot_cache"), None),
        rpc_workers=rpc.rpc_workers(node.child("rpc_workers"), budget),
        node_name=name,
        peering=peering.peering(node, name),
        ollama_version=_ollama_version(node.child("ollama_version")),
    )


def _ollama_version(node: Node) -> str:
    """Dotted numbers only: Open WebUI parses each part as an int, Copilot compares them."""
    if not node.exists():
        return ServerConfig.ollama_version
    text = node.string()
    if not _VERSION_RE.fullmatch(text):
        node.fail(f'must be a version of dotted numbers like "0.12.0", got {quote(text)}')
    return text


def _connect(node: Node) -> str:
    """An http:// base URL with host and port, returned without a trailing slash."""
    return base_url(node, "an http:// URL with host and port like http://127.0.0.1:7778")


def _arg(node: Node) -> str:
    """Command-line argument: strings verbatim, numbers as text (4096.0 -> "4096")."""
    if node.kind == "string":
        return node.reader.text(node.key)
    value = node.numeric()
    if value is None:
        node.expect("a string or a number")
    return str(value) if isinstance(value, int) else node.reader.text(node.key)


def _args(node: Node) -> tuple[str, ...]:
    return tuple(_arg(item) for item in node.items("a list of strings"))


def _env(node: Node) -> tuple[tuple[str, str], ...]:
    what = "a table of NAME = value strings"
    node.table(what)
    env: list[tuple[str, str]] = []
    for name in node.reader.subtree(node.key):
        entry = node.child(name)
        if POSITIVE_INT_RE.fullmatch(name) or "=" in name:
            node.fail(f"must be {what}, but has the key {quote(name)}")
        if entry.kind == "table":
            entry.expect("a string or a number")
        env.append((name, _arg(entry)))
    return tuple(env)


def _tokenization(node: Node, title: str) -> Tokenization:
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


def _variant(
    node: Node,
    index: int,
    model_connect: str | None,
    base: Timeouts,
    model_devices: tuple[str, ...] | None,
    server: ServerConfig,
    inherited: rpc.RpcKeys,
) -> Variant:
    """``inherited``: the model's RPC keys, which the variant's own replace."""
    budget = server.memory_budget
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
    chosen = budget_keys.devices(node.child("devices"), budget)
    args = _args(node.child("args"))
    keys = rpc.keys(node, inherited, server.rpc_workers)
    rpc.check_variant(node, args, keys)
    # A worker that declares memory is a pool of its own, which only its variants count in.
    pools = budget_keys.variant_pools(chosen if chosen is not None else model_devices, budget)
    pools += tuple(worker.name for worker in keys.workers if worker.memory is not None)
    return Variant(
        index=index,
        binary=node.child("binary").string(),
        args=args,
        context=node.child("context").integer(1),
        connect=connect,
        timeouts=_timeouts(node, base),
        env=_env(env_node) if env_node.exists() else (),
        pools=pools,
        memory=budget_keys.declared_memory(node.child("memory"), pools, server.pools),
        endpoints=serving.endpoints(node.child("endpoints")),
        rpc=keys.workers,
        tensor_split=keys.split,
        local_devices=keys.local,
    )


def _model(node: Node, server: ServerConfig) -> ModelConfig:
    node.table("a model table")
    name = node.child("name").string()
    title = f"{node.label} {quote(name)}"
    model = node.titled(title)
    node.warn_unknown(title, _MODEL_KEYS, _MODEL_IGNORED_KEYS)

    engine_node = model.child("engine")
    known = ", ".join(quote(engine) for engine in KNOWN_ENGINES)
    if not engine_node.exists():
        engine_node.fail(f"is required (one of {known})")
    engine = engine_node.string()
    if engine not in KNOWN_ENGINES:
        engine_node.fail(f"is unknown: {quote(engine)} (known engines: {known})")

    connect_node = model.child("connect")
    model_connect = _connect(connect_node) if connect_node.exists() else None
    timeouts = _timeouts(model, server.timeouts)
    model_devices = budget_keys.devices(model.child("devices"), server.memory_budget)

    variants_node = model.child("variants")
    items = variants_node.items("a non-empty list of variant tables")
    if not items:
        variants_node.fail("must be a non-empty list of variant tables, got an empty table")
    inherited = rpc.keys(model, rpc.RpcKeys(), server.rpc_workers)
    variants = [
        _variant(item, index, model_connect, timeouts, model_devices, server, inherited)
        for index, item in enumerate(items, 1)
    ]
    by_context: dict[int, Variant] = {}
    for variant in variants:
        other = by_context.setdefault(variant.context, variant)
        if other is not variant:
            raise ConfigError(
                f"{variants_node.label}[{other.index}] and variants[{variant.index}] "
                f"have the same context {variant.context}"
            )

    tokenization_node = model.child("tokenization")
    aliases = model.child("aliases")
    model_endpoints = serving.endpoints(model.child("endpoints"))
    if model_endpoints is not None:
        variants = [v if v.endpoints is not None else replace(v, endpoints=model_endpoints) for v in variants]
    cache = caching.slot_cache(model.child("slot_cache"), server.slot_cache)
    if cache is not None:
        for variant in variants:
            if any(arg.partition("=")[0] == "--slot-save-path" for arg in variant.args):
                raise ConfigError(
                    f"{variants_node.label}[{variant.index}].args has --slot-save-path, but slot_cache is set and "
                    "the gateway passes its own directory: remove it from args"
                )
        variants = [replace(v, slot_cache=cache) if v.caches_slots else v for v in variants]
    return ModelConfig(
        name=name,
        engine=engine,
        variants=tuple(sorted(variants, key=lambda variant: variant.context)),
        tokenization=_tokenization(tokenization_node, tokenization_node.label) if tokenization_node.exists() else None,
        completion_reserve=model.opt_int("completion_reserve", 1),
        pinned=model.get_bool("pinned", False),
        exclusive=model.get_bool("exclusive", False),
        aliases=serving.names(aliases, "a list of names") if aliases.exists() else (),
        set_fields=serving.set_fields(model.child("set")),
        strip_fields=serving.strip_fields(model.child("strip")),
        completion_limit=model.opt_int("completion_limit", 1),
        strict_context=model.get_bool("strict_context", False) if model.child("strict_context").exists() else None,
        loading_feedback=serving.loading_feedback(model.child("loading_feedback")),
        slot_cache=cache,
    )


def models_section(node: Node, server: ServerConfig) -> tuple[ModelConfig, ...]:
    pooled = bool(server.peering.peers)  # a node with peers may serve nothing itself
    if pooled and not node.exists():
        return ()
    what = "a list of model tables" if pooled else "a non-empty list of model tables"
    items = node.items(what)
    if not items and not pooled:
        node.fail(f"must be {what}, got an empty table")
    models: list[ModelConfig] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(items, 1):
        model = _model(item, server)
        for name in (model.name, *model.aliases):
            if name in first_index:
                what = "duplicate name" if name == model.name else f"alias {quote(name)}"
                raise ConfigError(
                    f"models[{index}] {quote(model.name)}: {what}, already used by models[{first_index[name]}]"
                )
            first_index[name] = index
        models.append(model)
    caching.check_shared_dirs(
        [(f"models[{i}] {quote(m.name)}", m.slot_cache) for i, m in enumerate(models, 1) if m.slot_cache is not None]
    )
    if server.default_model is not None and server.default_model not in first_index and not pooled:
        raise ConfigError(
            f"server.default_model {quote(server.default_model)} is not a model name or alias "
            f"(models: {', '.join(quote(m.name) for m in models)})"
        )
    return tuple(models)
