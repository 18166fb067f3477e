"""Which saved slots an engine can take: one key per model and per the launch arguments that
shape its KV cache.

A slot file holds the KV cache as the engine laid it out, so it only fits an engine of the same
model file, binary, environment and cache-shaping arguments (``-np``, cache types, flash
attention, RoPE, LoRA...). The context size is left out on purpose: a slot saved by a small
variant restores into a larger one. Only arguments known *not* to touch the cache are left
out; anything else, known or not, is part of the key, so an unknown flag at worst keeps two
variants from sharing files, never restores a cache into an engine it does not fit.
"""

from __future__ import annotations

import hashlib
import json

from llmgw.config import ModelConfig, Variant

# Flags that take a value and do not change what the KV cache holds or how it is laid out.
_IGNORED_WITH_VALUE = frozenset(
    {
        "-c",
        "--ctx-size",
        "--port",
        "--host",
        "-t",
        "--threads",
        "-tb",
        "--threads-batch",
        "--threads-http",
        "-a",
        "--alias",
        "--api-key",
        "--api-key-file",
        "-to",
        "--timeout",
        "--log-file",
        "-lv",
        "--verbosity",
        "--log-verbosity",
        "--slot-save-path",
        "--sse-ping-interval",
        "--sleep-idle-seconds",
        "-cram",
        "--cache-ram",
        "--fit",
        "-fit",
        "--fit-ctx",
        "--fit-target",
        "-b",
        "--batch-size",
        "-ub",
        "--ubatch-size",
        "--ctx-checkpoints",
        "--checkpoint-min-step",
        "--path",
        "--chat-template",
        "--chat-template-file",
        "--reasoning-format",
        "--reasoning-budget",
    }
)
# Switches (no value) that do not change the KV cache either.
_IGNORED_SWITCHES = frozenset(
    {
        "--metrics",
        "--slots",
        "--no-slots",
        "--webui",
        "--no-webui",
        "--ui",
        "--no-ui",
        "--log-disable",
        "--log-colors",
        "--log-timestamps",
        "--log-prefix",
        "--no-warmup",
        "--jinja",
        "--no-jinja",
        "--props",
        "--verbose",
        "-v",
    }
)


def kv_args(args: tuple[str, ...]) -> list[str]:
    """``args`` without the ones that leave the KV cache as it is."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        name, has_value, _ = arg.partition("=")
        if name in _IGNORED_SWITCHES or (has_value and name in _IGNORED_WITH_VALUE):
            continue
        if arg in _IGNORED_WITH_VALUE:
            skip = True
            continue
        kept.append(arg)
    return kept


def launch_key(model: ModelConfig, variant: Variant) -> str:
    """16 hex digits: equal for the variants of a model whose saved slots fit one another."""
    launch = json.dumps([model.name, variant.binary, kv_args(variant.args), sorted(variant.env)])
    return hashlib.sha256(launch.encode()).hexdigest()[:16]
