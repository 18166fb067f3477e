"""The typed configuration: what the rest of the gateway reads (never the Lua file itself)."""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

LLAMACPP = "llama.cpp"
KNOWN_ENGINES = (LLAMACPP,)
# How a streaming request that waits for an engine hears about it (``loading_feedback``):
# progress as reasoning deltas, SSE comment lines (default: clients ignore them), or nothing.
FEEDBACK_MODES = ("reasoning", "comments", "none")


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the place and the problem."""


# A node's or a peer's name: it goes into headers (X-Llmgw-Served-By) and metric labels.
NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def default_node_name() -> str:
    """This machine's host name (its first label), as a node name; "llmgw" if it is not one."""
    name = socket.gethostname().split(".")[0]
    return name if NODE_NAME_RE.fullmatch(name) else "llmgw"


@dataclass(frozen=True)
class PeerConfig:
    """Another gateway (llmgw, or any OpenAI-compatible server) requests may be sent to."""

    name: str
    url: str  # http://host:port, without a trailing slash
    api_key: str | None = field(default=None, repr=False)  # sent as Authorization: Bearer; never shown
    models: tuple[str, ...] | None = None  # only these of its models are routed to it (None: all it lists)
    weight: float = 1.0  # its share of the load among nodes that could serve a request equally well


@dataclass(frozen=True)
class Peering:
    """``peers`` and how they are watched: the health checks and each peer's circuit breaker."""

    peers: tuple[PeerConfig, ...] = ()
    check_interval: float = 5.0  # an active /health check of each peer this often (seconds)
    check_timeout: float = 2.0  # each check, /api/state read and connect to a peer, at most this long
    trip_after: int = 3  # failures in a row (checks, connects, timeouts, 5xx) that trip a peer's breaker
    recover_after: int = 3  # good checks in a row that close it again...
    min_dwell: float = 30.0  # ...no sooner than this after it tripped (seconds)
    # A node with this many requests waiting for a model is passed over for one with room, and a
    # conversation leaves the node that holds its KV cache.
    spill_queue: int = 2

    def peer(self, name: str) -> PeerConfig | None:
        return next((peer for peer in self.peers if peer.name == name), None)

    @property
    def trip_bound(self) -> float:
        """Seconds within which a peer that stopped answering is tripped: the next check comes within
        one interval, and a failed check is repeated at once until it trips."""
        return self.check_interval + self.trip_after * self.check_timeout


class Priority(StrEnum):
    """A key's place in the queue for engines: interactive requests go before batch ones (within
    the bound ``server.batch_overtakes``; see llmgw.scheduling.scheduler)."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


@dataclass(frozen=True)
class KeyConfig:
    """One API key of ``server.keys`` (or of the old ``server.api_keys`` list, then named
    ``api_keys[N]``, with every model and admin). The key itself never shows in a repr or a message:
    only its name does."""

    name: str
    secret: str = field(repr=False)
    models: tuple[str, ...] | None = None  # model names it may use (aliases resolved); None: every model
    admin: bool = False  # load/unload and the operations routes (/running, /metrics, /events, /api/...)
    requests_per_minute: int | None = None  # model requests in any 60 s
    tokens_per_day: int | None = None  # prompt + generated tokens per UTC day
    max_concurrent: int | None = None  # model requests in flight at once
    priority: Priority = Priority.INTERACTIVE


@dataclass(frozen=True)
class Timeouts:
    """Effective timeouts in seconds, after the server -> model -> variant cascade."""

    health_check: float  # one /health probe
    engine_startup: float  # spawn -> healthy
    engine_idle: float  # idle engine is stopped after this; 0 disables idle unload
    engine_stop: float  # SIGTERM -> SIGKILL grace
    # A stream the engine sends nothing on for this long is ended with an error event and aborted;
    # 0 disables. llama-server sends a keep-alive comment every 30 s (--sse-ping-interval), during
    # prompt processing too, so a slow prefill never trips the default.
    stream_idle: float = 120.0


@dataclass(frozen=True)
class Tokenization:
    """A standalone tokenizer (llama-tokenize) used to count without a running engine."""

    binary: str
    args: tuple[str, ...]  # base args + extra_args, passed verbatim
    extra_tokens_per_message: int
    extra_tokens: int


@dataclass(frozen=True)
class SlotCache:
    """Where the KV cache of a model's engines is kept across stops (``slot_cache`` in the config)."""

    dir: str
    max_mb: float = 4096.0  # disk budget of the directory, least recently used files go first

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 1024 * 1024)


# Variants started with these flags serve embeddings or rerank: their slots hold nothing worth keeping.
_EMBEDDING_FLAGS = frozenset({"--embedding", "--embeddings"})
_RERANK_FLAGS = frozenset({"--reranking", "--rerank"})
_NO_CACHE_FLAGS = _EMBEDDING_FLAGS | _RERANK_FLAGS
# The route families of a generating llama-server (config.serving.CAPABILITIES but embeddings and rerank).
_GENERATION_ENDPOINTS = frozenset({"chat", "completions", "responses", "messages", "infill", "tokenize"})


@dataclass(frozen=True)
class RpcWorker:
    """A host that lends its devices to engines over llama.cpp's RPC backend (``server.rpc_workers``):
    a ``ggml-rpc-server`` at ``address``, supervised by an llmgw agent at ``agent``."""

    name: str
    address: str  # host:port of its ggml-rpc-server, as llama-server's --rpc takes it
    devices: tuple[str, ...] = ("CPU",)  # the worker's devices (its -d), one RPC device each at the coordinator
    agent: str | None = None  # base URL of its llmgw agent (None: only a TCP probe before a start)
    api_key: str | None = field(default=None, repr=False)  # the agent's key
    memory: float | None = None  # MiB the worker lends (a memory pool named after the worker); None: not counted


# Flags the gateway sets itself on a variant that uses RPC workers (config.rpc refuses them in args).
RPC_FLAGS = frozenset({"--rpc", "--device", "-dev", "--tensor-split", "-ts"})

_PARALLEL_FLAGS = ("-np", "--parallel")
_UNIFIED_FLAGS = ("-kvu", "--kv-unified")


def _flag_value(args: tuple[str, ...], names: tuple[str, ...]) -> str | None:
    """The value of the last of ``names`` in ``args`` (``-np 2`` or ``--parallel=2``), as llama-server reads it."""
    found = None
    for i, arg in enumerate(args):
        name, has_value, inline = arg.partition("=")
        if name in names:
            found = inline if has_value else (args[i + 1] if i + 1 < len(args) else None)
    return found


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
    # Memory pools (names of server.memory_budget) the engine uses, and the MiB it declares in each;
    # None: not declared, the gateway measures it.
    pools: tuple[str, ...] = ()
    memory: tuple[tuple[str, float], ...] | None = None
    endpoints: tuple[str, ...] | None = None  # route families it serves (None: all); see config.serving
    slot_cache: SlotCache | None = None  # set on generation variants of a model with slot_cache
    rpc: tuple[RpcWorker, ...] = ()  # the RPC workers the engine spreads the model over (exclusively)
    tensor_split: tuple[float, ...] | None = None  # share of each device (local ones, then the workers')
    local_devices: tuple[str, ...] = ()  # the coordinator's own llama.cpp devices used besides the workers'

    def serves(self, capability: str | None) -> bool:
        """Whether the variant serves a route family: its ``endpoints``, else what its launch flags
        let llama-server serve (:attr:`default_endpoints`)."""
        if capability is None:
            return True
        return capability in (self.endpoints if self.endpoints is not None else self.default_endpoints)

    @property
    def default_endpoints(self) -> frozenset[str]:
        """What llama-server 0.10068 serves by its flags: it always generates (and tokenizes);
        embeddings only with ``--embeddings`` and rerank only with ``--reranking``, else it answers
        them with a 501, which the gateway turns into a 400 naming the models that do serve them."""
        flags = {arg.partition("=")[0] for arg in self.args}
        served = set(_GENERATION_ENDPOINTS)
        if flags & _EMBEDDING_FLAGS:
            served.add("embeddings")
        if flags & _RERANK_FLAGS:
            served.add("rerank")
        return frozenset(served)

    @property
    def launch_args(self) -> tuple[str, ...]:
        """The arguments the engine is started with: ``args``, plus the RPC workers and devices
        (:attr:`rpc_args`), plus ``--slot-save-path`` (the gateway saves and restores slots there)
        when the variant's model has a slot cache."""
        args = (*self.args, *self.rpc_args)
        if self.slot_cache is None:
            return args
        return (*args, "--slot-save-path", self.slot_cache.dir)

    @property
    def devices(self) -> tuple[str, ...]:
        """The devices the engine offloads to, as ``--device`` names them: its local devices, then
        ``RPC0``.. for each device of each worker in order (llama.cpp numbers them so)."""
        count = sum(len(worker.devices) for worker in self.rpc)
        return (*self.local_devices, *(f"RPC{i}" for i in range(count)))

    @property
    def rpc_args(self) -> tuple[str, ...]:
        """``--rpc`` and an explicit ``--device`` list (without it llama-server drops a worker it
        cannot reach and loads everything elsewhere; with it, it fails at once), and
        ``--tensor-split``; empty for a variant without workers."""
        if not self.rpc:
            return ()
        args = ["--rpc", ",".join(worker.address for worker in self.rpc), "--device", ",".join(self.devices)]
        if self.tensor_split is not None:
            args += ["--tensor-split", ",".join(f"{share:g}" for share in self.tensor_split)]
        return tuple(args)

    @property
    def caches_slots(self) -> bool:
        """Whether a slot cache may apply: not for embedding or rerank engines."""
        return not any(arg.partition("=")[0] in _NO_CACHE_FLAGS for arg in self.args)

    @property
    def fingerprint(self) -> str:
        """Short stable id of the launch (binary, args, environment): state is remembered per launch."""
        launch = json.dumps([self.binary, self.args, self.env, *([self.rpc_args] if self.rpc else [])])
        import hashlib  # here: the config is read before the gateway's other imports (see llmgw.listen)

        return hashlib.sha256(launch.encode()).hexdigest()[:16]

    @property
    def address(self) -> str:
        """host:port the engine listens on; two engines never share one."""
        return self.connect.removeprefix("http://")

    @property
    def parallel(self) -> int:
        """The engine's slots as its arguments set them (``-np N``); 0: llama-server decides (auto)."""
        value = _flag_value(self.args, _PARALLEL_FLAGS)
        return int(value) if value is not None and value.isdigit() else 0

    @property
    def slot_context(self) -> int:
        """The context one request gets, as llama-server 0.10068 splits it: ``-np N`` gives each slot
        ``context / N``, unless the KV cache is unified (``-kvu``), where every slot may use all of
        it, as with the default (auto: 4 slots, unified). The engine's own figure (``/props``), once
        known, wins over this."""
        if self.parallel > 1 and not any(arg in _UNIFIED_FLAGS for arg in self.args):
            return self.context // self.parallel
        return self.context


@dataclass(frozen=True)
class ModelConfig:
    name: str
    engine: str
    variants: tuple[Variant, ...]  # sorted by context, smallest first
    tokenization: Tokenization | None = None
    completion_reserve: int | None = None  # overrides ServerConfig.completion_reserve
    pinned: bool = False  # placement never stops it to make room (idle unload and explicit unload still do)
    exclusive: bool = False  # runs alone: starting it stops the others, nothing else starts next to it
    aliases: tuple[str, ...] = ()  # other names clients may use; answers carry the name they asked for
    set_fields: tuple[tuple[str, Any], ...] = ()  # forced into every request
    strip_fields: tuple[str, ...] = ()  # removed from every request
    completion_limit: int | None = None  # caps every route's completion budget
    strict_context: bool | None = None  # overrides ServerConfig.strict_context
    loading_feedback: str | None = None  # overrides ServerConfig.loading_feedback
    slot_cache: SlotCache | None = None  # effective (the model's own, else the server's; None: off)

    def serves(self, capability: str | None) -> bool:
        """Some variant serves the route family."""
        return any(variant.serves(capability) for variant in self.variants)

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
    keys: tuple[KeyConfig, ...] = ()  # server.keys, by name (api_keys are not in here)
    batch_overtakes: int = 4  # interactive requests that may go ahead of one waiting batch request
    max_engines: int = 1  # engines running at once
    # MiB per memory pool, e.g. (("total", 64000.0),) or (("gpu0", 24000.0), ("gpu1", 24000.0)); () = no budget.
    memory_budget: tuple[tuple[str, float], ...] = ()
    state_dir: str | None = None  # where measured figures survive restarts (None: $XDG_STATE_HOME/llmgw)
    default_model: str | None = None  # for requests that name no model
    list_aliases: bool = True  # /v1/models lists aliases as models of their own
    cors_origins: tuple[str, ...] = ("*",)  # browser origins allowed ("*": any, as llama-server)
    # True: a request whose completion budget fits no variant is refused (400) instead of running
    # on the largest variant until its context is full.
    strict_context: bool = False
    loading_feedback: str = "comments"  # one of FEEDBACK_MODES
    # False: an engine with no request in flight is stopped with SIGKILL at once (its slots saved
    # first): it holds nothing a graceful shutdown would keep, and llama-server's own takes 80-95 ms,
    # which every switch would wait for. True: SIGTERM, then SIGKILL after engine_stop_timeout.
    graceful_stop: bool = False
    slot_cache: SlotCache | None = None  # the default of every model (None: off)
    rpc_workers: tuple[RpcWorker, ...] = ()  # hosts lending devices over llama.cpp RPC

    @property
    def pools(self) -> tuple[tuple[str, float], ...]:
        """Every memory pool placement counts: ``memory_budget``'s, and one per RPC worker that
        declares its ``memory`` (named after the worker)."""
        workers = tuple((worker.name, worker.memory) for worker in self.rpc_workers if worker.memory is not None)
        return (*self.memory_budget, *workers)

    def rpc_worker(self, name: str) -> RpcWorker | None:
        return next((worker for worker in self.rpc_workers if worker.name == name), None)

    node_name: str = field(default_factory=default_node_name)  # X-Llmgw-Served-By, /api/state
    peering: Peering = field(default_factory=Peering)
    # What GET /api/version says: Ollama clients gate features on it (GitHub Copilot Chat wants >= 0.6.4).
    ollama_version: str = "0.12.0"

    def all_keys(self) -> tuple[KeyConfig, ...]:
        """``keys``, then each of the old ``api_keys`` as a key of its own: every model, admin (a
        key listed twice there, which was always accepted, counts once, as its first place)."""
        first: dict[str, int] = {}
        for i, key in enumerate(self.api_keys, 1):
            first.setdefault(key, i)
        return (*self.keys, *(KeyConfig(f"api_keys[{i}]", key, admin=True) for key, i in first.items()))


OLLAMA_DEFAULT_TAG = ":latest"  # Ollama clients add it to names without a tag


@dataclass(frozen=True)
class Config:
    path: str
    server: ServerConfig
    models: tuple[ModelConfig, ...]

    def model(self, name: str) -> ModelConfig | None:
        """The model called ``name`` or known by the alias ``name``. Ollama's default tag is
        understood on every route: ``name:latest`` is ``name`` (Ollama clients add the tag to the
        names they list, then send it back), unless a model or alias is called that exactly."""
        found = self._named(name)
        if found is None and name[-len(OLLAMA_DEFAULT_TAG) :].lower() == OLLAMA_DEFAULT_TAG:
            found = self._named(name[: -len(OLLAMA_DEFAULT_TAG)])
        return found

    def _named(self, name: str) -> ModelConfig | None:
        for model in self.models:
            if model.name == name or name in model.aliases:
                return model
        return None

    def reserve(self, model: ModelConfig) -> int:
        """Tokens kept for the answer of a request that sets no budget (``completion_reserve``)."""
        return model.completion_reserve or self.server.completion_reserve

    def strict(self, model: ModelConfig) -> bool:
        return self.server.strict_context if model.strict_context is None else model.strict_context

    def feedback(self, model: ModelConfig) -> str:
        """The model's ``loading_feedback``, else the server's."""
        return model.loading_feedback or self.server.loading_feedback

    def model_names(self) -> list[str]:
        return [model.name for model in self.models]

    def shared_addresses(self) -> dict[str, list[str]]:
        """Engine addresses used by more than one model: those models never run together."""
        users: dict[str, list[str]] = {}
        for model in self.models:
            for address in dict.fromkeys(v.address for v in model.variants):
                users.setdefault(address, []).append(model.name)
        return {address: names for address, names in users.items() if len(names) > 1}

    def summary(self) -> str:
        """Short human summary for --check-config, placement rules included."""
        lines = [f"config {self.path}: OK"]
        listen = ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.server.listen)
        lines.append(f"listen: {listen}")
        server = self.server
        budget = ", ".join(f"{pool} {_mib(mib)}" for pool, mib in server.memory_budget) or "none (count only)"
        lines.append(f"placement: up to {server.max_engines} engine(s) at once; memory budget: {budget}")
        for model in self.models:
            contexts = ", ".join(str(v.context) for v in model.variants)
            count = len(model.variants)
            rules = [rule for rule, on in (("pinned", model.pinned), ("exclusive", model.exclusive)) if on]
            line = f"model {model.name!r} ({model.engine}): {count} variant(s), context {contexts}"
            if server.memory_budget:
                line += "; memory " + ", ".join(_declared(v) for v in model.variants)
            lines.append(line + "".join(f"; {rule}" for rule in rules))
        caches: dict[SlotCache, list[str]] = {}
        for model in self.models:
            if model.slot_cache is not None:
                caches.setdefault(model.slot_cache, []).append(model.name)
        for cache, names in caches.items():
            lines.append(f"slot cache {cache.dir} (up to {_mib(cache.max_mb)}): model(s) {', '.join(map(repr, names))}")
        if caches:
            lines.append(
                "note: sliding-window models (gemma-2/3, ...) reuse a restored slot only with --swa-full in args"
            )
        for worker in server.rpc_workers:
            agent = f"agent {worker.agent}" if worker.agent else "no agent: TCP probe only, no build check"
            lends = f"; lends {_mib(worker.memory)}" if worker.memory is not None else ""
            users = [m.name for m in self.models if any(worker in v.rpc for v in m.variants)]
            used = f"; used by {', '.join(map(repr, users))}, one engine at a time" if users else "; unused"
            devices = ", ".join(worker.devices)
            lines.append(f"rpc worker {worker.name!r} at {worker.address} (devices {devices}; {agent}{lends}{used})")
        keys = server.all_keys()
        if keys:
            admin = [key.name for key in keys if key.admin]
            batch = [key.name for key in keys if key.priority is Priority.BATCH]
            line = f"keys: {', '.join(key.name for key in keys)}; admin: {', '.join(admin) or 'none'}"
            lines.append(line + (f"; batch: {', '.join(batch)}" if batch else ""))
        lines.extend(self._peering_summary())
        for address, names in self.shared_addresses().items():
            listed = ", ".join(repr(name) for name in names)
            lines.append(f"models {listed} share the engine address {address}: they never run together")
        pinned = [model.name for model in self.models if model.pinned]
        if pinned and server.max_engines <= len(pinned):
            lines.append(
                f"note: pinned model(s) {', '.join(map(repr, pinned))} can fill all {server.max_engines} engine "
                "place(s): other models then wait until a pinned one idles out or is unloaded"
            )
        return "\n".join(lines)

    def _peering_summary(self) -> list[str]:
        """The node and its peers, never their keys."""
        peering = self.server.peering
        if not peering.peers:
            return []
        lines = [
            f"node {self.server.node_name!r}: {len(peering.peers)} peer(s); checked every "
            f"{peering.check_interval:g} s (timeout {peering.check_timeout:g} s); a peer trips after "
            f"{peering.trip_after} failure(s) in a row (within {peering.trip_bound:g} s of going silent) and "
            f"recovers after {peering.recover_after} good check(s), {peering.min_dwell:g} s at the least"
        ]
        for peer in peering.peers:
            models = ", ".join(map(repr, peer.models)) if peer.models is not None else "all it lists"
            key = "with an API key" if peer.api_key else "no API key"
            lines.append(f"peer {peer.name!r}: {peer.url}, models {models}, weight {peer.weight:g}, {key}")
        if not self.models:
            lines.append("no local models: every request goes to a peer")
        return lines


def _mib(value: float) -> str:
    return f"{value:g} MiB"


def _declared(variant: Variant) -> str:
    if variant.memory is None:
        return f"{variant.context}: measured on {'+'.join(variant.pools)}"
    return f"{variant.context}: " + " + ".join(f"{_mib(mib)} on {pool}" for pool, mib in variant.memory)


class LiveConfig:
    """The configuration in force. Every service that reads it holds this one object, so a reload
    (SIGHUP) replaces the configuration in one place."""

    def __init__(self, config: Config) -> None:
        self.current = config
