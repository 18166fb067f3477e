"""EngineProcess: one engine subprocess, its output, and a stop that always works.

The engine runs in its own process group so a stop reaches everything it spawned, and on
Linux it gets a parent-death signal so it dies with the gateway even if the gateway is
SIGKILLed. No shell is ever involved: binary and args go to exec as a list.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from llmgw.runtime.guard import ProcessGuard

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# llama-server writes all its log to stderr, tagged "0.01.234.567 I ..." with a level letter;
# honour that tag so normal progress is not logged as a warning.
_LLAMA_LEVEL = re.compile(rb"^\d+\.\d+\.\d+\.\d+ ([DIWE]) ")
_LEVELS = {b"D": logging.DEBUG, b"I": logging.INFO, b"W": logging.WARNING, b"E": logging.ERROR}


class EngineStatus(StrEnum):
    NOT_STARTED = "not_started"
    RUNNING = "running"
    STOPPED = "stopped"
    CRASHED = "crashed"


_SETPRIV = shutil.which("setpriv")  # util-linux: sets the parent-death signal, then execs the engine


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGKILL the engine when the gateway dies, however it dies (where setpriv is
    missing: a preexec_fn makes Python fork the whole gateway instead of a cheap vfork)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class EngineProcess:
    def __init__(
        self,
        binary_path: str,
        args: Sequence[str],
        work_dir: str | None = None,
        *,
        name: str = "engine",
        env: Mapping[str, str] | None = None,
        tail_lines: int = 40,
        on_exit: Callable[[EngineProcess], None] | None = None,
        guard: ProcessGuard | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.binary_path = binary_path
        self.args = list(args)
        self.work_dir = work_dir
        self.name = name
        self._env = dict(env) if env else None
        self._proc: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._waiter: asyncio.Task[None] | None = None
        self._status = EngineStatus.NOT_STARTED
        self._stopping = False
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._on_exit = on_exit
        self._guard = guard
        self._on_line = on_line  # every output line, for watchers (GET /events?logs=1)
        self.output_event = asyncio.Event()  # set whenever a line arrives (readiness probes react to it)
        self.lines_seen = 0
        self.exited = asyncio.Event()
        self.start_time: float | None = None
        self.returncode: int | None = None
        self._out_log = logging.getLogger(f"llmgw.engine.output.{name}")

    async def start(self) -> None:
        env = None
        if self._env:
            env = {**os.environ, **self._env}
        # The parent-death signal (Linux): set by setpriv, which then execs the engine in the same
        # process, so the gateway spawns with vfork (about 1 ms) instead of forking itself in full.
        argv, preexec = [self.binary_path, *self.args], None
        if sys.platform.startswith("linux"):
            if _SETPRIV is not None:
                argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
            else:
                preexec = _die_with_parent
        try:
            if _SETPRIV is not None and shutil.which(self.binary_path) is None:
                # setpriv would start and then fail to exec: report it as a failed spawn, as before.
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self.binary_path)
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.work_dir,
                env=env,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except OSError as exc:
            self._status = EngineStatus.CRASHED
            self._tail.append(f"cannot execute {self.binary_path}: {exc.strerror or exc}")
            self.exited.set()
            raise
        self.start_time = time.monotonic()
        self._status = EngineStatus.RUNNING
        logger.info("[%s] started pid %d: %s %s", self.name, self._proc.pid, self.binary_path, " ".join(self.args))
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._pump(self._proc.stdout, logging.INFO)),
            asyncio.create_task(self._pump(self._proc.stderr, logging.WARNING)),
        ]
        if self._guard is not None:
            self._guard.add(self._proc.pid)
        self._waiter = asyncio.create_task(self._wait_exit())

    async def _pump(self, stream: asyncio.StreamReader, level: int) -> None:
        """Log every line, tagged with the model; read in blocks so long lines cannot break it."""
        pending = b""
        while True:
            try:
                block = await stream.read(65536)
            except (OSError, ValueError):
                break
            if not block:
                break
            pending += block
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._line(raw, level)
            if len(pending) > 65536:
                self._line(pending, level)
                pending = b""
        if pending:
            self._line(pending, level)

    def _line(self, raw: bytes, level: int) -> None:
        """stdout -> INFO, stderr -> WARNING, unless the line carries llama-server's own level tag."""
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if not line:
            return
        if level >= logging.WARNING:
            self._tail.append(line)
            tagged = _LLAMA_LEVEL.match(raw)
            if tagged is not None:
                level = _LEVELS[tagged.group(1)]
        self._out_log.log(level, "[%s] %s", self.name, line)
        if self._on_line is not None:
            self._on_line(line)
        self.lines_seen += 1
        self.output_event.set()

    async def _wait_exit(self) -> None:
        assert self._proc is not None
        # Process.wait() also waits for the pipes; a grandchild could hold them, so watch the return
        # code, which asyncio sets as soon as the child is reaped.
        wait = asyncio.ensure_future(self._proc.wait())
        try:
            await self._until_reaped(self._proc, wait)
        finally:
            if not wait.done():
                wait.cancel()
        self.returncode = self._proc.returncode
        # Let the readers take the last lines, so the crash report below has them
        # (bounded: a grandchild may keep the pipes open).
        if self._readers:
            await asyncio.wait(self._readers, timeout=1.0)
        if self._stopping:
            self._status = EngineStatus.STOPPED
        else:
            self._status = EngineStatus.CRASHED
            logger.error(
                "[%s] engine pid %d exited unexpectedly with code %s; last output:\n%s",
                self.name,
                self._proc.pid,
                self.returncode,
                self.stderr_tail() or "(none)",
            )
        self.exited.set()
        if self._on_exit is not None:
            self._on_exit(self)

    @staticmethod
    async def _until_reaped(proc: asyncio.subprocess.Process, wait: asyncio.Future[int]) -> None:
        """Until ``proc`` has a return code. A pidfd (Linux) wakes this the moment the process ends,
        so a stop is noticed at once (then asyncio reaps it within a loop turn or two); without
        one, the return code is polled every 50 ms."""
        loop = asyncio.get_running_loop()
        ended = asyncio.Event()
        fd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            fd = os.pidfd_open(proc.pid)
        if fd is not None:
            try:
                loop.add_reader(fd, ended.set)
            except (OSError, NotImplementedError):
                os.close(fd)
                fd = None
        try:
            while proc.returncode is None:
                if fd is not None and not ended.is_set():
                    end = asyncio.ensure_future(ended.wait())
                    waits: list[asyncio.Future[Any]] = [wait, end]
                    try:
                        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        end.cancel()
                else:
                    await asyncio.wait([wait], timeout=0.001 if ended.is_set() else 0.05)
        finally:
            if fd is not None:
                loop.remove_reader(fd)
                os.close(fd)

    async def stop(self, timeout: float = 15.0, kill: bool = False) -> None:
        """SIGTERM the whole process group, SIGKILL it after ``timeout`` (``kill``: at once); always reaps."""
        proc = self._proc
        if proc is None:
            return
        self._stopping = True
        if proc.returncode is None and kill:
            logger.info("[%s] killing pid %d", self.name, proc.pid)
        elif proc.returncode is None:
            logger.info("[%s] stopping pid %d", self.name, proc.pid)
            self._signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.exited.wait(), timeout)
            except TimeoutError:
                logger.warning("[%s] pid %d ignored SIGTERM for %.1f s; killing it", self.name, proc.pid, timeout)
        # Kill the group even after a clean exit: children of the engine may still be alive.
        self._signal_group(proc.pid, signal.SIGKILL)
        if self._guard is not None:
            self._guard.remove(proc.pid)
        await self.exited.wait()
        for reader in self._readers:
            try:
                await asyncio.wait_for(reader, 2.0)
            except (TimeoutError, asyncio.CancelledError):
                reader.cancel()
        if self._status is EngineStatus.RUNNING:
            self._status = EngineStatus.STOPPED
        logger.info("[%s] stopped (exit code %s)", self.name, self.returncode)

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running and self._proc is not None else None

    @property
    def status(self) -> EngineStatus:
        return self._status

    def get_status(self) -> str:
        return self._status.value

    def stderr_tail(self, lines: int = 15) -> str:
        return "\n".join(list(self._tail)[-lines:])

    @property
    def uptime(self) -> float:
        return 0.0 if self.start_time is None else time.monotonic() - self.start_time
