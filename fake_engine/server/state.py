"""What one fake server remembers while it runs: its slots (the prompt cache), the ``/metrics``
counters, the loading state, the events file; and the lines it writes, in llama-server's format,
since the gateway reads an engine's output."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .. import fake_rpc
from ..fake_llama_tokenize import piece_id
from . import shapes
from .options import Options

__all__ = [
    "Engine",
    "EventLog",
    "Metrics",
    "Slot",
    "common_prefix",
    "crash",
    "generated_id",
    "log",
    "log_tagged",
]

_STARTED = time.monotonic()


def log(message: str) -> None:
    """One line on stderr, where llama-server writes its log."""
    print(message, file=sys.stderr, flush=True)


def log_tagged(message: str, level: str = "I") -> None:
    """A line in llama-server's own format ("0.01.234.567 I ..."), whose level tag the gateway honours."""
    elapsed_us = int((time.monotonic() - _STARTED) * 1_000_000)
    minutes, rest = divmod(elapsed_us, 60_000_000)
    seconds, rest = divmod(rest, 1_000_000)
    stamp = f"{minutes}.{seconds:02d}.{rest // 1000:03d}.{rest % 1000:03d}"
    print(f"{stamp} {level} {message}", file=sys.stderr, flush=True)


def crash(
    reason: str, linger: float = 0.0, listening: Sequence[socket.socket] = (), helper: int | None = None
) -> NoReturn:
    """Die the way an engine that hits a fatal error does: no cleanup, exit code 3.

    The ``helper`` process (``--fake-count-process``'s HTTP side, which shares the listening
    socket) is killed and reaped first, as a crash takes all of an engine's threads at once. With
    ``linger`` (``--fake-crash-linger``) every file descriptor but stdio is closed then, the
    ``listening`` sockets before the others (so a client that sees its connection break finds the
    port closed too), and the process exits only ``linger`` seconds later: its death is noticed
    after its connections broke, as with an engine that takes a while to die."""
    log(f"error: {reason}")
    sys.stdout.flush()
    if helper is not None:
        with contextlib.suppress(OSError):
            os.kill(helper, signal.SIGKILL)
            os.waitpid(helper, 0)
    if linger > 0:
        for sock in listening:
            sock.close()
        os.closerange(3, _max_fd())
        time.sleep(linger)
    os._exit(3)


def _max_fd() -> int:
    try:
        return max(256, os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 65536


class EventLog:
    """Appends one JSON line per event to the ``--fake-events`` file (one write per line), so a test
    can see what the engine did without asking it."""

    def __init__(self, path: str | None) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if path else None

    def emit(self, event: str, **fields: Any) -> None:
        if self._fd is None:
            return
        line = json.dumps({"event": event, **fields, "t": time.time()}) + "\n"
        os.write(self._fd, line.encode())


def generated_id(index: int) -> int:
    """Token id of the ``index``-th generated token (its piece is ``tok{index}``)."""
    return piece_id(f"tok{index}")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two token lists: what a slot's cache can reuse."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class Slot:
    """One llama-server slot: its cached tokens (the prompt cache) and what it is doing."""

    id: int
    tokens: list[int] = field(default_factory=list)
    run: shapes.Run | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    id_task: int | None = None
    n_prompt_processed: int = 0
    last_used: float = 0.0


@dataclass
class Metrics:
    """The counters behind ``/metrics`` (``--metrics``)."""

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    predicted_tokens: int = 0
    predicted_seconds: float = 0.0
    decodes: int = 0
    n_tokens_max: int = 0


class Engine:
    """State shared by all handlers of one fake server."""

    rpc: fake_rpc.Links | None = None  # the workers of --rpc

    def __init__(
        self,
        options: Options,
        port: int,
        listening: Sequence[socket.socket] = (),
        started: float | None = None,
        helper: int | None = None,
    ) -> None:
        """``started`` (``time.monotonic()``, default now) is when loading began: the HTTP process of
        ``--fake-count-process`` gets the main process's, so both say "Loading model" until the
        same moment; ``helper`` is that process's pid, in the main process."""
        self.options = options
        self.port = port
        self.listening = list(listening)
        self.helper = helper
        self.events = EventLog(options.fake_events)
        self.created = int(time.time())
        self.active: set[str] = set()
        self.slots = [Slot(i) for i in range(max(1, options.parallel))]
        self.metrics = Metrics()
        self._tasks = 0
        delay = math.inf if options.fake_never_healthy else options.fake_load_delay
        self.ready_at = (time.monotonic() if started is None else started) + delay

    def crash(self, reason: str) -> NoReturn:
        """Die at once (``--fake-exit-after-chunks``), lingering as ``--fake-crash-linger`` says."""
        crash(reason, self.options.fake_crash_linger, self.listening, self.helper)

    @property
    def n_ctx(self) -> int:
        """The context of one slot, which generation enforces."""
        return self.options.n_ctx

    @property
    def reported_n_ctx(self) -> int:
        """The context of one slot as ``/props``, ``/slots`` and ``/v1/models`` report it: the
        enforced one unless ``--fake-reported-n-ctx`` makes the engine claim another."""
        reported = self.options.fake_reported_n_ctx
        return reported if reported is not None else self.n_ctx

    def loading(self) -> bool:
        return time.monotonic() < self.ready_at

    def healthy_now(self) -> bool:
        """False in the 503 half of each ``--fake-health-flap`` period (200 first)."""
        period = self.options.fake_health_flap
        if period is None:
            return True
        return int((time.monotonic() - self.ready_at) / period) % 2 == 0

    def acquire(self, run: shapes.Run, settings: dict[str, Any], wanted: int, use_cache: bool) -> Slot | None:
        """Pick an idle slot as llama-server does (asked id, else best prompt match above 10 %, else
        least recently used) and set ``run.cache_n``; None when every slot is busy (no queue here)."""
        idle = [slot for slot in self.slots if slot.run is None]
        if not idle:
            return None
        ids = run.prompt_ids
        if 0 <= wanted < len(self.slots) and self.slots[wanted].run is None:
            slot = self.slots[wanted]
        else:
            best = max(idle, key=lambda s: common_prefix(s.tokens, ids))
            similar = bool(ids) and common_prefix(best.tokens, ids) / len(ids) > 0.1
            slot = best if similar else min(idle, key=lambda s: s.last_used)
        if use_cache:  # at least the last prompt token is always evaluated again
            run.cache_n = max(0, min(common_prefix(slot.tokens, ids), len(ids) - 1))
        self._tasks += 1
        slot.id_task, slot.run, slot.settings = self._tasks, run, settings
        slot.tokens = list(ids)
        slot.n_prompt_processed = run.prompt_tokens - run.cache_n
        run.id_slot = slot.id
        return slot

    def release(self, slot: Slot | None, run: shapes.Run) -> None:
        """Keep the prompt and all generated tokens but the last in the slot's cache; count metrics."""
        timings = run.timings()
        self.metrics.prompt_tokens += timings["prompt_n"]
        self.metrics.prompt_seconds += timings["prompt_ms"] / 1000
        self.metrics.predicted_tokens += run.generated
        self.metrics.predicted_seconds += timings["predicted_ms"] / 1000
        self.metrics.decodes += 1 + run.generated
        self.metrics.n_tokens_max = max(self.metrics.n_tokens_max, run.prompt_tokens + run.generated)
        if slot is None:
            return
        slot.tokens = run.prompt_ids + [generated_id(i) for i in range(run.generated - 1)]
        slot.run = None
        slot.last_used = time.monotonic()
