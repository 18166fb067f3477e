"""The typed configuration: what the rest of the gateway reads (never the Lua file itself)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
