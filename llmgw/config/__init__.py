"""Configuration: a Lua file read with PyLuaHelper, validated into a small typed API.

``schema`` holds the dataclasses everything else reads; ``reader`` gives typed access to the
exported Lua values with exact places for errors; ``sections`` validates each section;
``loader`` runs Lua. Only this package reads configuration keys.
"""

from llmgw.config.loader import ConfigLoader
from llmgw.config.schema import (
    KNOWN_ENGINES,
    LLAMACPP,
    Config,
    ConfigError,
    KeyConfig,
    LiveConfig,
    ModelConfig,
    PeerConfig,
    Peering,
    Priority,
    RpcWorker,
    ServerConfig,
    SlotCache,
    Timeouts,
    Tokenization,
    Variant,
)
from llmgw.config.sections import DEFAULT_TIMEOUTS, DEFAULT_TOKENIZE_BASE_ARGS

__all__ = [
    "DEFAULT_TIMEOUTS",
    "DEFAULT_TOKENIZE_BASE_ARGS",
    "KNOWN_ENGINES",
    "LLAMACPP",
    "Config",
    "ConfigError",
    "ConfigLoader",
    "KeyConfig",
    "LiveConfig",
    "ModelConfig",
    "PeerConfig",
    "Peering",
    "Priority",
    "RpcWorker",
    "ServerConfig",
    "SlotCache",
    "Timeouts",
    "Tokenization",
    "Variant",
]
