"""Supervisor: keeps one ``ggml-rpc-server`` running, and knows how it stands.

The worker runs as an engine does (its own process group, a parent-death signal, the process
guard), under ``stdbuf -oL`` where that exists: on a pipe its banner (protocol version, devices)
would otherwise only come out at the first client. It is *running* once it accepts a TCP
connection; the probe connects and closes without sending a byte (a client that sent bytes and
left before the worker got to it would kill the worker with SIGPIPE).

Any exit is a failure, whatever its code: ``ggml-rpc-server`` exits 0 when it cannot bind its
address, and on an unknown argument. It is started again after ``restart_delay``, doubled for
each exit within a minute of its start, up to ``restart_delay_max``. ``restart()`` (the
gateway's ``POST /restart``) starts it again at once: the way out when a coordinator's host died
without closing its connection and the worker waits on it for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
from dataclasses import dataclass
from enum import StrEnum

from llmgw.agent.config import AgentConfig, WorkerSpec
from llmgw.runtime.engine_process import EngineProcess
from llmgw.runtime.guard import ProcessGuard

logger = logging.getLogger(__name__)

_READY_TIMEOUT = 30.0  # spawn -> accepting connections
_PROBE_PERIOD = 0.1
_STOP_TIMEOUT = 5.0
_STABLE_AFTER = 60.0  # a worker that ran this long before dying restarts after the shortest delay
_BANNER = re.compile(r"Starting RPC server v(\d+\.\d+\.\d+)")
_DEVICE = re.compile(r"^\s+([A-Za-z][A-Za-z0-9_]*): (.+)$")
_NO_BIND = "Failed to create server socket"


class WorkerState(StrEnum):
    STARTING = "starting"  # spawned, not accepting connections yet
    RUNNING = "running"
    RESTARTING = "restarting"  # exited; started again after a delay
    STOPPED = "stopped"  # the agent is stopping


@dataclass(frozen=True)
class Exit:
    code: int | None
    at: float  # epoch seconds
    reason: str
    output: str  # its last lines on stderr


class Supervisor:
    def __init__(self, config: AgentConfig, spec: WorkerSpec, guard: ProcessGuard | None = None) -> None:
        self.config = config
        self.spec = spec
        self.guard = guard
        self.state = WorkerState.STARTING
        self.process: EngineProcess | None = None
        self.restarts = 0  # starts after the first
        self.started_at: float | None = None  # epoch seconds of the current process's start
        self.next_start_at: float | None = None  # while restarting
        self.last_exit: Exit | None = None
        self.protocol: str | None = None  # the RPC protocol version its banner gave
        self.device_info: list[str] = []  # "CPU: AMD EPYC (24105 MiB, 24105 MiB free)"...
        self._in_devices = False
        self._no_bind = False
        self._restart_now = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def restart(self) -> None:
        """Start the worker again now (stopping it first if it runs), with no delay."""
        logger.info("worker %s: restart asked for", self.spec.address)
        self._restart_now.set()

    async def stop(self) -> None:
        self._closing = True
        self._restart_now.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.state = WorkerState.STOPPED

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        quick_failures = 0
        while not self._closing:
            self._restart_now.clear()
            await self._spawn()
            asked = await self._until_exit_or_restart()
            if self._closing:
                break
            if asked:
                quick_failures = 0
                await self._stop_process()
                self.restarts += 1
                continue
            ran = time.time() - (self.started_at or time.time())
            quick_failures = quick_failures + 1 if ran < _STABLE_AFTER else 1
            delay = min(self.config.restart_delay * 2 ** (quick_failures - 1), self.config.restart_delay_max)
            self.state = WorkerState.RESTARTING
            self.next_start_at = time.time() + delay
            logger.warning("worker %s: starting it again in %.1f s", self.spec.address, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._restart_now.wait(), delay)
            self.next_start_at = None
            self.restarts += 1
        await self._stop_process()

    async def _spawn(self) -> None:
        self.state = WorkerState.STARTING
        self.protocol = None
        self.device_info = []
        self._in_devices = self._no_bind = False
        binary, args = self.config.binary, self.config.args(self.spec)
        stdbuf = shutil.which("stdbuf")
        if stdbuf is not None:
            binary, args = stdbuf, ["-oL", binary, *args]
        self.process = EngineProcess(
            binary,
            args,
            name=f"rpc-{self.spec.port}",
            env=self.config.environment,
            guard=self.guard,
            on_line=self._line,
        )
        self.started_at = time.time()
        try:
            await self.process.start()
        except OSError as exc:
            self._exited(None, f"cannot start {self.config.binary}: {exc.strerror or exc}")
            return
        if await self._accepting():
            self.state = WorkerState.RUNNING
            logger.info(
                "worker %s running (pid %s, protocol %s)", self.spec.address, self.process.pid, self.protocol or "?"
            )

    async def _accepting(self) -> bool:
        """Until the worker accepts a TCP connection (connect, then close without a byte)."""
        assert self.process is not None
        deadline = time.monotonic() + _READY_TIMEOUT
        while self.process.is_running and time.monotonic() < deadline and not self._restart_now.is_set():
            with contextlib.suppress(OSError, TimeoutError):
                _, writer = await asyncio.wait_for(asyncio.open_connection(self.spec.host, self.spec.port), 1.0)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return self.process.is_running
            await asyncio.sleep(_PROBE_PERIOD)
        if self.process.is_running and not self._restart_now.is_set():
            logger.error("worker %s: not accepting connections after %.0f s", self.spec.address, _READY_TIMEOUT)
        return False

    async def _until_exit_or_restart(self) -> bool:
        """True when a restart was asked for; False when the worker exited by itself."""
        process = self.process
        if process is None or not process.is_running:
            if process is not None:
                await process.exited.wait()
                self._exited(process.returncode, "")
            return False
        exited = asyncio.ensure_future(process.exited.wait())
        asked = asyncio.ensure_future(self._restart_now.wait())
        try:
            await asyncio.wait([exited, asked], return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            asked.cancel()
        if process.exited.is_set() and not self._restart_now.is_set():
            self._exited(process.returncode, "")
            return False
        return True

    def _exited(self, code: int | None, reason: str) -> None:
        process = self.process
        output = process.stderr_tail(5) if process is not None else ""
        if not reason:
            if self._no_bind:
                reason = f"could not bind {self.spec.address} (port in use, or not an address of this host)"
            elif code is not None and code < 0:
                reason = f"killed by signal {-code}"
            else:
                reason = f"exited with code {code}"
        self.last_exit = Exit(code, time.time(), reason, output)
        self.state = WorkerState.RESTARTING
        logger.error("worker %s: %s", self.spec.address, reason)

    async def _stop_process(self) -> None:
        process = self.process
        if process is not None and process.is_running:
            await process.stop(timeout=_STOP_TIMEOUT)
            self.last_exit = Exit(process.returncode, time.time(), "restarted", process.stderr_tail(5))

    def _line(self, line: str) -> None:
        """What the worker prints: its banner (protocol, devices), and why it could not start."""
        banner = _BANNER.search(line)
        if banner is not None:
            self.protocol = banner.group(1)
        elif line.startswith("Devices:"):
            self._in_devices = True
        elif self._in_devices and (device := _DEVICE.match(line)) is not None:
            self.device_info.append(f"{device.group(1)}: {device.group(2)}")
        elif _NO_BIND in line:
            self._no_bind = True
        elif line.startswith("error:"):
            logger.error("worker %s: %s", self.spec.address, line)
        if self._in_devices and not line.startswith(("Devices:", "  ")):
            self._in_devices = False
