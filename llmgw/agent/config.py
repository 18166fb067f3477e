"""The agent's Lua config: one global, ``agent``, read as the gateway reads its own (exact places
in errors, unknown keys warned about)::

    agent = {
      listen = "10.0.0.2:7790",                        -- GET /status, POST /restart
      api_key = "secret",                              -- asked of every route (optional)
      binary = "/opt/llama.cpp/ggml-rpc-server",
      env = { LD_LIBRARY_PATH = "/opt/llama.cpp" },
      cache_dir = "/var/cache/llama.cpp",              -- LLAMA_CACHE: weights kept across loads (-c)
      workers = {
        { address = "10.0.0.2:50052", devices = { "CUDA0" }, threads = 8 },
      },
    }
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmgw.config import ConfigError, ConfigLoader
from llmgw.config.reader import POSITIVE_INT_RE, Node, quote
from llmgw.config.rpc import address, device_names

_KEYS = frozenset(
    {"listen", "api_key", "binary", "env", "cache", "cache_dir", "restart_delay", "restart_delay_max", "workers"}
)
_WORKER_KEYS = frozenset({"address", "devices", "threads"})


@dataclass(frozen=True)
class WorkerSpec:
    """One ``ggml-rpc-server`` to keep running."""

    host: str
    port: int
    devices: tuple[str, ...] = ()  # its -d (empty: the server's own default)
    threads: int | None = None  # its -t

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class AgentConfig:
    path: str
    listen: tuple[str, int]
    binary: str
    workers: tuple[WorkerSpec, ...]
    api_key: str | None = field(default=None, repr=False)
    env: tuple[tuple[str, str], ...] = ()
    cache: bool = True  # -c: tensors over 10 MiB are kept in $LLAMA_CACHE/rpc, a reload sends only hashes
    cache_dir: str | None = None
    restart_delay: float = 1.0  # before the first restart of a worker that died; doubles for each quick failure
    restart_delay_max: float = 30.0

    def args(self, worker: WorkerSpec) -> list[str]:
        """The worker's command line (after the binary)."""
        args = ["-H", worker.host, "-p", str(worker.port)]
        if worker.devices:
            args += ["-d", ",".join(worker.devices)]
        if worker.threads is not None:
            args += ["-t", str(worker.threads)]
        if self.cache:
            args.append("-c")
        return args

    @property
    def environment(self) -> dict[str, str]:
        env = dict(self.env)
        if self.cache_dir is not None:
            env["LLAMA_CACHE"] = self.cache_dir
        return env


def load(path: str) -> AgentConfig:
    """Read and check ``path``; any problem is a ConfigError naming its place."""
    reader = ConfigLoader(path).reader(("agent",))
    node = Node(reader, "agent", "agent")
    try:
        return _agent(node, path)
    except ConfigError:
        raise
    except Exception as exc:  # a bug here must still surface as a config problem, not a crash
        raise ConfigError(f"cannot validate {path}: {type(exc).__name__}: {exc}") from exc


def _agent(node: Node, path: str) -> AgentConfig:
    node.table('a table like { listen = "10.0.0.2:7790", binary = "...", workers = { ... } }')
    node.warn_unknown("agent", _KEYS)
    listen_node = node.child("listen")
    host, port = _host_port(listen_node) if listen_node.exists() else ("127.0.0.1", 7790)
    key = node.child("api_key")
    env = node.child("env")
    cache_dir = node.child("cache_dir")
    items = node.child("workers").items("a non-empty list of worker tables")
    if not items:
        node.child("workers").fail("must be a non-empty list of worker tables")
    workers: list[WorkerSpec] = []
    for item in items:
        item.table("a worker table")
        item.warn_unknown(item.label, _WORKER_KEYS)
        w_host, w_port = _host_port(item.child("address"))
        if any(other.port == w_port for other in workers):
            item.child("address").fail(f"repeats the port {w_port} of another worker")
        threads = item.child("threads")
        workers.append(
            WorkerSpec(
                w_host, w_port, device_names(item.child("devices")), threads.integer(1) if threads.exists() else None
            )
        )
    delay = node.get_seconds("restart_delay", AgentConfig.restart_delay)
    return AgentConfig(
        path=path,
        listen=(host, port),
        binary=node.child("binary").string(),
        workers=tuple(workers),
        api_key=key.string(secret=True) if key.exists() else None,
        env=_env(env) if env.exists() else (),
        cache=node.get_bool("cache", True),
        cache_dir=cache_dir.string() if cache_dir.exists() else None,
        restart_delay=delay,
        restart_delay_max=max(delay, node.get_seconds("restart_delay_max", AgentConfig.restart_delay_max)),
    )


def _host_port(node: Node) -> tuple[str, int]:
    host, _, port = address(node).rpartition(":")
    return host, int(port)


def _env(node: Node) -> tuple[tuple[str, str], ...]:
    what = "a table of NAME = value strings"
    node.table(what)
    env: list[tuple[str, str]] = []
    for name in node.child_names():
        if POSITIVE_INT_RE.fullmatch(name) or "=" in name:
            node.fail(f"must be {what}, but has the key {quote(name)}")
        env.append((name, node.child(name).string(non_empty=False)))
    return tuple(env)
