"""RpcWorkers: the gateway's side of llama.cpp RPC workers (``server.rpc_workers``).

Before an engine that uses workers starts, each worker is checked, all at once:

* its **agent** (``python -m llmgw agent`` on the worker's host) is asked how the worker stands.
  An agent that does not answer fails the start at once (the host is down or cut off); a worker
  its agent is starting again is waited for, up to ``queue_timeout``; a worker another client
  holds is waited for too, and one held by a client on *this* host while no engine of ours uses
  it (a coordinator of ours died without closing its connection, so the worker waits on it for
  ever) is restarted through the agent;
* its **build** must be the engine's (``llama-server --version`` against the agent's
  ``ggml_commit``): the RPC protocol changes with every build;
* the gateway's host must reach it: a TCP connect, closed without a byte (a worker that was
  sent bytes by a client that then left dies of SIGPIPE), with a short timeout, so a worker
  whose packets are dropped fails the start in seconds instead of stalling llama-server's
  start-up for two minutes.

A worker without an agent gets the TCP check only. While the engine runs, :meth:`still_there`
says whether its workers are the processes it started with (the health probe of a busy engine
asks it: a coordinator whose worker vanished aborts or hangs, and its ``/health`` stays 200),
and :meth:`usage` what each worker holds for it (placement counts it in the worker's pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from llmgw.config import LiveConfig, ModelConfig, RpcWorker, Variant
from llmgw.errors import EngineStartError, ShuttingDown, WorkerBuildMismatch, WorkerUnavailable

logger = logging.getLogger(__name__)

_VERSION = re.compile(r"version: \S+ \(([0-9a-fA-F]+)\)")
_POLL = 0.25  # seconds between looks at a worker being started again or held
_PROBE_TIMEOUT = 3.0  # the TCP connect to a worker
_AGENT_TIMEOUT = 5.0
_HELD_GRACE = 3.0  # a coordinator that just exited: its connection closes within moments
_DEFAULT_WAIT = 60.0
_AGENT_TRIES = 3  # an agent that does not answer this many times in a row: its host is down or cut off


@dataclass(frozen=True)
class WorkerView:
    """One worker as its agent reports it (``GET /status``)."""

    state: str
    pid: int | None
    clients: tuple[str, ...]
    memory_mib: float | None
    build: str | None
    device_count: int | None  # from its banner, when the agent saw it
    next_start_at: float | None
    last_exit: str


class RpcWorkers:
    def __init__(self, live: LiveConfig | None = None) -> None:
        self.live = live
        self._client: AsyncHTTPClient | None = None
        self._builds: dict[tuple[str, float, tuple[tuple[str, str], ...]], str | None] = {}
        self._warned: set[str] = set()
        self._closed = False

    def close(self) -> None:
        """Shutting down: starts waiting for a worker give up (ShuttingDown)."""
        self._closed = True
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------ before a start

    async def prepare(self, model: ModelConfig, variant: Variant) -> dict[str, int | None]:
        """Check every worker of ``variant`` (waiting for one its agent is starting again); the
        pid of each worker's process by name. Raises WorkerUnavailable or EngineStartError."""
        wait = self.live.current.server.queue_timeout if self.live is not None else _DEFAULT_WAIT
        deadline = time.monotonic() + wait
        build = await self.coordinator_build(variant)
        found = await asyncio.gather(
            *(self._ready(model, variant, worker, build, deadline) for worker in variant.rpc), return_exceptions=True
        )
        pids: dict[str, int | None] = {}
        for worker, result in zip(variant.rpc, found, strict=True):
            if isinstance(result, BaseException):
                raise result
            pids[worker.name] = result
        return pids

    async def _ready(
        self, model: ModelConfig, variant: Variant, worker: RpcWorker, build: str | None, deadline: float
    ) -> int | None:
        name = f"RPC worker {worker.name!r} ({worker.address})"
        if worker.agent is None:
            await self._reach(name, worker)
            return None
        restarted = False
        held_since: float | None = None
        local: str | None = None  # this host's address toward the worker
        misses = 0
        while True:
            view, problem = await self.view(worker)
            if view is None:
                misses += 1  # one lost answer is not a host down: ask again, briefly
                if misses >= _AGENT_TRIES or time.monotonic() >= deadline or self._closed:
                    raise WorkerUnavailable(f"model {model.name!r}: {name}: {problem}")
                await asyncio.sleep(_POLL)
                continue
            misses = 0
            if view.build is not None and build is not None and not _same_build(view.build, build):
                raise WorkerBuildMismatch(
                    f"model {model.name!r}: {name} runs llama.cpp build {view.build}, the engine's "
                    f"{os.path.basename(variant.binary)} is build {build}: install the same build on both "
                    "(the RPC protocol changes with every build)"
                )
            if view.device_count is not None and view.device_count != len(worker.devices):
                raise EngineStartError(
                    f"model {model.name!r}: {name} offers {view.device_count} device(s), the config says "
                    f"{len(worker.devices)} ({', '.join(worker.devices)}): set rpc_workers.{worker.name}.devices"
                )
            now = time.monotonic()
            if view.state == "running" and not view.clients:
                await self._reach(name, worker)
                return view.pid
            if view.state == "running":  # held by a client
                held_since = held_since if held_since is not None else now
                local = local or await self._reach(name, worker)
                ours = all(client.rpartition(":")[0].strip("[]") == local for client in view.clients)
                if ours and not restarted and now - held_since >= _HELD_GRACE:
                    logger.warning(
                        "%s is held by %s on this host, but no engine of ours uses it (a coordinator that "
                        "died without closing its connection): restarting it",
                        name,
                        ", ".join(view.clients),
                    )
                    await self._restart(worker)
                    restarted = True
                why = f"held by {', '.join(view.clients)}"
            else:
                why = f"{view.state}" + (f" (last exit: {view.last_exit})" if view.last_exit else "")
            if self._closed:
                raise ShuttingDown("the gateway is shutting down")
            if now >= deadline:
                retry = 10.0
                if view.next_start_at is not None:
                    retry = max(1.0, view.next_start_at - time.time() + 2.0)
                raise WorkerUnavailable(f"model {model.name!r}: {name} is not ready: {why}", retry_after=retry)
            await asyncio.sleep(_POLL)

    async def _reach(self, name: str, worker: RpcWorker, timeout: float = _PROBE_TIMEOUT) -> str:
        """Connect to the worker and close without sending a byte; this host's address toward it."""
        host, _, port = worker.address.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
        except (OSError, TimeoutError) as exc:
            raise WorkerUnavailable(f"{name}: cannot connect from this host: {_reason(exc)}") from None
        local = str(writer.get_extra_info("sockname", ("",))[0])
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return local

    async def _restart(self, worker: RpcWorker) -> None:
        assert worker.agent is not None
        port = int(worker.address.rpartition(":")[2])
        try:
            await self._call(worker, "/restart", {"port": port})
        except (OSError, HTTPClientError, ValueError) as exc:
            logger.warning("RPC worker %r: the agent refused to restart it: %s", worker.name, exc)

    # ------------------------------------------------------------------ builds

    async def coordinator_build(self, variant: Variant) -> str | None:
        """The llama.cpp commit of the variant's binary (``--version``), once per binary and
        environment; None when it does not say (its workers' builds are then not checked)."""
        try:
            mtime = os.stat(variant.binary).st_mtime
        except OSError:
            mtime = 0.0
        key = (variant.binary, mtime, variant.env)
        if key not in self._builds:
            self._builds[key] = await _version(variant.binary, dict(variant.env))
            if self._builds[key] is None and variant.binary not in self._warned:
                self._warned.add(variant.binary)
                logger.warning("%s --version gives no build: RPC workers' builds are not checked", variant.binary)
        return self._builds[key]

    # ------------------------------------------------------------------ while it runs

    async def still_there(
        self, variant: Variant, started_with: Mapping[str, int | None], timeout: float = _AGENT_TIMEOUT
    ) -> bool:
        """False when a worker of the engine is surely gone: its agent reports another process
        (or none), or, with no agent answering within ``timeout``, the worker's port takes no
        connection (a host down or cut off: llama-server then waits on it for ever)."""
        for worker in variant.rpc:
            view = (await self.view(worker, timeout))[0] if worker.agent is not None else None
            if view is not None:
                if view.state != "running" or view.pid != started_with.get(worker.name):
                    logger.warning("RPC worker %r is not the process the engine started with", worker.name)
                    return False
                continue
            try:
                await self._reach(f"RPC worker {worker.name!r}", worker, min(timeout, _PROBE_TIMEOUT))
            except WorkerUnavailable as exc:
                logger.warning("%s", exc)
                return False
        return True

    async def usage(self, variant: Variant) -> dict[str, float]:
        """MiB each worker's process uses (RSS plus GPU), by worker name, as its agent reports."""
        found: dict[str, float] = {}
        for worker in variant.rpc:
            if worker.agent is None:
                continue
            view, _ = await self.view(worker)
            if view is not None and view.memory_mib is not None:
                found[worker.name] = view.memory_mib
        return found

    # ------------------------------------------------------------------ the agent

    async def view(self, worker: RpcWorker, timeout: float = _AGENT_TIMEOUT) -> tuple[WorkerView | None, str]:
        """The worker as its agent reports it, or None and why not."""
        try:
            status = await self._call(worker, "/status", timeout=min(timeout, _AGENT_TIMEOUT))
        except (OSError, HTTPClientError, ValueError) as exc:
            return None, f"its agent {worker.agent} does not answer ({_reason(exc)})"
        port = int(worker.address.rpartition(":")[2])
        entries = status.get("workers") if isinstance(status, dict) else None
        entry = next((w for w in entries or [] if isinstance(w, dict) and w.get("port") == port), None)
        if entry is None:
            return None, f"its agent {worker.agent} supervises no worker on port {port}"
        build = status.get("build")
        last = entry.get("last_exit")
        info = entry.get("device_info")
        return (
            WorkerView(
                state=str(entry.get("state")),
                pid=entry.get("pid") if isinstance(entry.get("pid"), int) else None,
                clients=tuple(str(c) for c in entry.get("clients") or ()),
                memory_mib=_number(entry.get("memory_mib")),
                build=str(build["commit"]) if isinstance(build, dict) and build.get("commit") else None,
                device_count=len(info) if isinstance(info, list) and info else None,
                next_start_at=_number(entry.get("next_start_at")),
                last_exit=str(last.get("reason", "")) if isinstance(last, dict) else "",
            ),
            "",
        )

    async def _call(self, worker: RpcWorker, path: str, body: Any = None, timeout: float = _AGENT_TIMEOUT) -> Any:
        if self._closed:
            raise OSError("the gateway is shutting down")
        if self._client is None:
            self._client = AsyncHTTPClient(force_instance=True)
        headers = {"Authorization": f"Bearer {worker.api_key}"} if worker.api_key else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = HTTPRequest(
            f"{worker.agent}{path}",
            method="GET" if body is None else "POST",
            body=None if body is None else json.dumps(body),
            headers=headers,
            request_timeout=timeout,
            connect_timeout=timeout,
        )
        response = await self._client.fetch(request)
        return json.loads(response.body)


async def _version(binary: str, env: dict[str, str]) -> str | None:
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 15.0)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    match = _VERSION.search(out.decode(errors="replace"))
    return match.group(1) if match else None


def _same_build(a: str, b: str) -> bool:
    """Two commit ids name the same build (one may be abbreviated more than the other)."""
    a, b = a.lower(), b.lower()
    return a.startswith(b) or b.startswith(a)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, HTTPClientError):
        return f"HTTP {exc.code}" if exc.code != 599 else str(exc.message)
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
