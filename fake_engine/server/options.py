"""The fake llama-server's command line: llama-server's own flags it honours, and its ``--fake-*`` knobs.

Flags are matched by exact name (``--flag VALUE`` or ``--flag=VALUE``) and every other flag is
ignored with its value, so a gateway can pass the fake the same command line as the real server
(``-ctk q8_0`` is not read as ``-c tk``). ``FLAGS`` is the one table of what is read; README.md
documents each entry (a test checks that they agree).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FLAGS", "GARBAGE_MODES", "N_CTX_TRAIN", "Flag", "Options", "UsageError", "parse_args"]

N_CTX_TRAIN = 131072  # what the fake's "model" was trained with: -c 0 means this, as in llama-server
GARBAGE_MODES = ("truncated", "content-type", "shape")


@dataclass
class Options:
    """Every setting of one fake server (defaults as llama-server's, or the fake's own)."""

    host: str = "127.0.0.1"
    port: int = 8080
    ctx_size: int = 4096
    model: str = ""
    alias: str | None = None
    parallel: int = 1
    batch_size: int = 2048
    ubatch_size: int = 512
    embeddings: bool = False
    reranking: bool = False
    metrics: bool = False
    slot_save_path: str | None = None
    fake_load_delay: float = 0.0
    fake_never_healthy: bool = False
    fake_exit_at_startup: int | None = None
    fake_tokens: int = 8
    fake_token_delay: float = 0.0
    fake_prompt_delay: float = 0.0
    fake_exit_after_chunks: int | None = None
    fake_ignore_sigterm: bool = False
    fake_shutdown_delay: float = 0.0
    fake_spawn_child: bool = False
    fake_memory_mb: int = 0
    fake_events: str | None = None
    fake_infill: bool = False
    fake_embedding_dim: int = 64
    fake_count_garbage: str | None = None
    fake_truncate_body: bool = False
    fake_hang_requests: bool = False
    fake_hang_health: bool = False
    fake_health_flap: float | None = None
    fake_stall_after_chunks: int | None = None
    fake_stall_seconds: float = math.inf
    fake_slot_bytes_per_token: int = 64
    fake_slot_refuse_restore: bool = False
    fake_slot_disk_full: bool = False
    fake_reported_n_ctx: int | None = None
    fake_crash_linger: float = 0.0
    fake_strict_json: bool = False
    fake_count_process: bool = False
    rpc: str | None = None  # --rpc host:port,...: fake_rpc workers to connect to
    device: str | None = None  # --device: which of them must be there (RPC0, RPC1...)
    fake_build: str = "fake000"  # the commit --version prints
    fake_reasoning: int = 0
    fake_tool_calls: bool = False

    @property
    def n_ctx(self) -> int:
        """Context size of one slot, as llama-server computes it."""
        total = self.ctx_size if self.ctx_size > 0 else N_CTX_TRAIN
        return max(1, total // max(1, self.parallel))

    @property
    def physical_batch(self) -> int:
        """The batch an embedding input must fit: llama-server clamps ``-ub`` to ``-b``."""
        return max(1, min(self.batch_size, self.ubatch_size))

    @property
    def served_name(self) -> str:
        """The name llama-server puts in every ``model`` field: the alias, else the ``-m`` path."""
        return self.alias if self.alias else self.model


@dataclass(frozen=True)
class Flag:
    """One flag read from the command line: its names, the ``Options`` field it sets, how its value
    is converted (None: a switch without a value)."""

    names: tuple[str, ...]
    dest: str
    convert: Callable[[str], Any] | None


FLAGS: tuple[Flag, ...] = (
    Flag(("--host",), "host", str),
    Flag(("--port",), "port", int),
    Flag(("-c", "--ctx-size"), "ctx_size", int),
    Flag(("-m", "--model"), "model", str),
    Flag(("-a", "--alias"), "alias", str),
    Flag(("-np", "--parallel"), "parallel", int),
    Flag(("-b", "--batch-size"), "batch_size", int),
    Flag(("-ub", "--ubatch-size"), "ubatch_size", int),
    Flag(("--embedding", "--embeddings"), "embeddings", None),
    Flag(("--rerank", "--reranking"), "reranking", None),
    Flag(("--metrics",), "metrics", None),
    Flag(("--slot-save-path",), "slot_save_path", str),
    Flag(("--fake-load-delay",), "fake_load_delay", float),
    Flag(("--fake-never-healthy",), "fake_never_healthy", None),
    Flag(("--fake-exit-at-startup",), "fake_exit_at_startup", int),
    Flag(("--fake-tokens",), "fake_tokens", int),
    Flag(("--fake-token-delay",), "fake_token_delay", float),
    Flag(("--fake-prompt-delay",), "fake_prompt_delay", float),
    Flag(("--fake-exit-after-chunks",), "fake_exit_after_chunks", int),
    Flag(("--fake-ignore-sigterm",), "fake_ignore_sigterm", None),
    Flag(("--fake-shutdown-delay",), "fake_shutdown_delay", float),
    Flag(("--fake-spawn-child",), "fake_spawn_child", None),
    Flag(("--fake-memory-mb",), "fake_memory_mb", int),
    Flag(("--fake-events",), "fake_events", str),
    Flag(("--fake-infill",), "fake_infill", None),
    Flag(("--fake-embedding-dim",), "fake_embedding_dim", int),
    Flag(("--fake-count-garbage",), "fake_count_garbage", str),
    Flag(("--fake-truncate-body",), "fake_truncate_body", None),
    Flag(("--fake-hang-requests",), "fake_hang_requests", None),
    Flag(("--fake-hang-health",), "fake_hang_health", None),
    Flag(("--fake-health-flap",), "fake_health_flap", float),
    Flag(("--fake-stall-after-chunks",), "fake_stall_after_chunks", int),
    Flag(("--fake-stall-seconds",), "fake_stall_seconds", float),
    Flag(("--fake-slot-bytes-per-token",), "fake_slot_bytes_per_token", int),
    Flag(("--fake-slot-refuse-restore",), "fake_slot_refuse_restore", None),
    Flag(("--fake-slot-disk-full",), "fake_slot_disk_full", None),
    Flag(("--fake-reported-n-ctx",), "fake_reported_n_ctx", int),
    Flag(("--fake-crash-linger",), "fake_crash_linger", float),
    Flag(("--fake-strict-json",), "fake_strict_json", None),
    Flag(("--fake-count-process",), "fake_count_process", None),
    Flag(("--rpc",), "rpc", str),
    Flag(("--device", "-dev"), "device", str),
    Flag(("--fake-build",), "fake_build", str),
    Flag(("--fake-reasoning",), "fake_reasoning", int),
    Flag(("--fake-tool-calls",), "fake_tool_calls", None),
)

_BY_NAME: dict[str, Flag] = {name: flag for flag in FLAGS for name in flag.names}


class UsageError(Exception):
    """A known flag with a missing or bad value: the fake prints it and exits 1, as llama-server does."""


def parse_args(argv: Sequence[str]) -> Options:
    """Parse the known flags (exact names, so ``-ctk`` is not ``-c tk``); ignore all others."""
    options = Options()
    args = list(argv)
    i = 0
    while i < len(args):  # i grows by one or two per turn
        name, has_inline, inline = args[i].partition("=")
        i += 1
        flag = _BY_NAME.get(name)
        if flag is None:
            continue
        if flag.convert is None:
            setattr(options, flag.dest, True)
            continue
        if has_inline:
            raw = inline
        elif i < len(args):
            raw, i = args[i], i + 1
        else:
            raise UsageError(f"error: expected value for argument {name}")
        try:
            setattr(options, flag.dest, flag.convert(raw))
        except ValueError:
            raise UsageError(f"error: invalid value for argument {name}: {raw!r}") from None
    if options.fake_count_garbage is not None and options.fake_count_garbage not in GARBAGE_MODES:
        raise UsageError(f"error: --fake-count-garbage must be one of {', '.join(GARBAGE_MODES)}")
    if options.fake_health_flap is not None and options.fake_health_flap <= 0:
        raise UsageError("error: --fake-health-flap needs a period > 0")
    if options.fake_reported_n_ctx is not None and options.fake_reported_n_ctx <= 0:
        raise UsageError("error: --fake-reported-n-ctx needs a context > 0")
    if options.reranking:
        options.embeddings = True  # as llama-server: reranking runs on the embedding path
    return options
