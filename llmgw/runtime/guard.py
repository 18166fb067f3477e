"""ProcessGuard: kills every engine process group if the gateway dies, however it dies.

The parent-death signal only reaches the engine itself (and only on Linux); an engine's
own children would survive a SIGKILLed gateway. The guard is a tiny helper process
holding the read end of a pipe from the gateway: the gateway writes ``+PGID`` / ``-PGID``
lines as engines start and stop, and when the pipe closes (the kernel closes it when the
gateway dies) the guard SIGKILLs every group still listed. It runs in its own session so
a Ctrl-C in the terminal reaches the gateway, which then stops engines cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys

logger = logging.getLogger(__name__)

# The guard process itself: stdlib only, run with -I -S so it starts in a few milliseconds.
_GUARD_SCRIPT = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
groups = set()
for raw in sys.stdin.buffer:
    line = raw.strip()
    if len(line) < 2 or line[:1] not in (b"+", b"-") or not line[1:].isdigit():
        continue
    pgid = int(line[1:])
    if line[:1] == b"+":
        groups.add(pgid)
    else:
        groups.discard(pgid)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class ProcessGuard:
    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self._proc is not None:
            return
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _GUARD_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )

    def _send(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
        except OSError as exc:  # the guard died: engines still stop normally, just without the safety net
            logger.warning("process guard is gone (%s); engines will not be killed if the gateway crashes", exc)
            self._proc = None

    def add(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def remove(self, pgid: int) -> None:
        self._send(f"-{pgid}")

    def stop(self) -> None:
        """Close the pipe: the guard kills what is still listed (nothing, after a clean stop) and exits."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
