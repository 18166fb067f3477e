"""ProcessRuntime: engines as local ``llama-server`` processes.

Start means: refuse an address that something else already answers on, spawn the process
(its own process group, registered with the guard), probe ``/health`` until it answers, and
read the context the engine really gives from ``/props``. A start that fails at any point
stops what it spawned before raising, so a failed start never leaves a process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
import urllib.parse
from collections.abc import Callable

from llmgw.config import LLAMACPP, ModelConfig, Variant
from llmgw.errors import EngineStartError, EngineStartTimeout, ShuttingDown
from llmgw.runtime.base import RunningEngine, Usage
from llmgw.runtime.engine_process import EngineProcess, EngineStatus
from llmgw.runtime.guard import ProcessGuard
from llmgw.runtime.probe import SystemProbe
from llmgw.runtime.rpc import RpcWorkers
from llmgw.slotcache import SlotCache
from llmgw.upstream.client import EngineClient
from llmgw.upstream.http import EngineHTTPClient, UpstreamError
from llmgw.upstream.llamacpp import LlamaCppClient

logger = logging.getLogger(__name__)

# Readiness probe period while an engine loads; output from the engine triggers an extra probe,
# but not sooner than _EARLY_PROBE after the last one: an engine that logs each request would
# otherwise log the probe itself, and that line would trigger the next probe at once.
_READY_POLL = 0.02
_EARLY_PROBE = 0.01
# llama-server logs "listening on http://..." once its model is loaded, as it opens its socket: from
# then on it answers within a few ms, so the probes come every 2 ms (not the 20 ms of the load), for
# at most a second (an engine that says so and never answers is probed at the usual pace again).
_READY_MARK = "listening on"
# llama-server logs each slot's context as it loads ("initializing, n_slots = 4, n_ctx_slot = 2048"):
# read there, it spares a /props round trip between ready and the first request.
_SLOT_CONTEXT = re.compile(r"\bn_ctx_slot = (\d+)")
_IMMINENT_PROBE = 0.002
_IMMINENT_FOR = 1.0


class ProcessRuntime:
    def __init__(
        self,
        http: EngineHTTPClient,
        guard: ProcessGuard | None = None,
        probe: SystemProbe | None = None,
        slot_cache: SlotCache | None = None,
        on_spawned: Callable[[ModelConfig, Variant, int], None] | None = None,
        on_output: Callable[[ModelConfig, Variant, str], None] | None = None,
        rpc: RpcWorkers | None = None,
    ) -> None:
        """``on_spawned`` hears of each engine process spawned (its pid), ``on_output`` of each line
        an engine prints (the status tracker, the engine log book): plain callables, as the manager's."""
        self.http = http
        self.guard = guard
        self.probe = probe or SystemProbe()
        self.slot_cache = slot_cache  # slots are saved there before a stop
        self.on_spawned = on_spawned
        self.on_output = on_output
        self.rpc = rpc or RpcWorkers()  # the RPC workers of variants that use them
        self._closed = False

    def close(self) -> None:
        self._closed = True
        self.rpc.close()

    async def start(self, model: ModelConfig, variant: Variant, on_crash: Callable[[], None]) -> RunningEngine:
        if model.engine != LLAMACPP:
            raise EngineStartError(f"model {model.name!r}: engine type {model.engine!r} is not supported")
        if self._closed:
            raise ShuttingDown("the gateway is shutting down")
        client = LlamaCppClient(variant.connect, self.http, variant.timeouts.stream_idle)
        await self._check_port_free(model, variant)
        workers = await self.rpc.prepare(model, variant) if variant.rpc else {}

        def exited(process: EngineProcess) -> None:
            if process.status is EngineStatus.CRASHED:
                on_crash()

        process = EngineProcess(
            variant.binary,
            variant.launch_args,
            name=f"{model.name}#{variant.index}",
            env=_engine_env(variant),
            on_exit=exited,
            guard=self.guard,
            on_line=None if self.on_output is None else functools.partial(self.on_output, model, variant),
        )
        logger.info("starting model %r variant %d (context %d)", model.name, variant.index, variant.context)
        t0 = time.monotonic()
        try:
            await process.start()
        except OSError as exc:
            raise EngineStartError(
                f"model {model.name!r}: cannot start engine {variant.binary!r}: {exc.strerror or exc}"
            ) from exc
        if self.on_spawned is not None and process.pid is not None:
            self.on_spawned(model, variant, process.pid)
        try:
            await self._wait_for_engine_ready(
                model, process, client, variant.timeouts.engine_startup, variant.timeouts.health_check
            )
            n_ctx = _logged_slot_context(process) or await client.context_size()
        except BaseException:
            await process.stop(timeout=variant.timeouts.engine_stop)
            self.http.forget(variant.connect)
            raise
        if n_ctx is None:
            n_ctx = variant.slot_context
            logger.warning("model %r: engine did not report its context; assuming %d", model.name, n_ctx)
        elif n_ctx != variant.slot_context:
            logger.warning(
                "model %r variant %d: configured context %d (%d per slot), engine reports %d per request; using %d",
                model.name,
                variant.index,
                variant.context,
                variant.slot_context,
                n_ctx,
                n_ctx,
            )
        logger.info(
            "model %r variant %d ready in %.3f s (context %d, pid %s)",
            model.name,
            variant.index,
            time.monotonic() - t0,
            n_ctx,
            process.pid,
        )
        return RunningEngine(model, variant, process, client, n_ctx, workers=workers)

    async def stop(self, engine: RunningEngine, kill: bool = False, hung: bool = False) -> None:
        assert isinstance(engine.process, EngineProcess)
        kill = kill or hung
        if self.slot_cache is not None and not hung and engine.process.is_running:
            try:
                await self.slot_cache.save(
                    engine.model, engine.variant, engine.client, engine.variant.timeouts.engine_stop
                )
            except Exception:  # the cache never stands in the way of a stop
                logger.exception("model %r: saving its slots failed", engine.model.name)
        try:
            await engine.process.stop(timeout=engine.variant.timeouts.engine_stop, kill=kill)
        finally:
            self.http.forget(engine.client.base_url)  # its pooled connections go with it

    async def responsive(self, engine: RunningEngine, timeout: float) -> bool:
        if not engine.process.is_running:
            return False
        try:
            await self.http.json_call(engine.client.base_url + "/health", timeout=timeout)
        except UpstreamError:
            return False
        # Over RPC, /health stays 200 while the engine waits on a worker that vanished for ever.
        return not engine.variant.rpc or await self.rpc.still_there(engine.variant, engine.workers, timeout)

    async def measure(self, engine: RunningEngine) -> Usage | None:
        pid = engine.process.pid
        usage = None if pid is None else await self.probe.measure(pid)
        if usage is None or not engine.variant.rpc:
            return usage
        return Usage(usage.rss_mib, usage.gpu_mib, await self.rpc.usage(engine.variant))

    async def _check_port_free(self, model: ModelConfig, variant: Variant) -> None:
        """Something already answering on the engine's address would pass for our engine: refuse."""
        url = urllib.parse.urlsplit(variant.connect)
        host, port = url.hostname or "127.0.0.1", url.port or 80
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
        except (OSError, TimeoutError):
            return
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        raise EngineStartError(
            f"model {model.name!r}: cannot start the engine, {host}:{port} ({variant.connect}) is already "
            "in use by another process (another llama-server?)"
        )

    async def _wait_for_engine_ready(
        self,
        model: ModelConfig,
        process: EngineProcess,
        client: EngineClient,
        timeout: float,
        probe_timeout: float,
    ) -> bool:
        """Probe /health until 200, reacting within tens of ms; fail at once if the engine exits."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_log = loop.time() + 5.0
        imminent_until: float | None = None
        while True:
            if self._closed:
                raise ShuttingDown("the gateway is shutting down")
            if not process.is_running:
                await process.exited.wait()
                raise EngineStartError(
                    f"model {model.name!r}: engine exited during start-up with code {process.returncode}; "
                    f"last output: {process.stderr_tail(5) or '(none)'}"
                )
            if await client.check_health(min(probe_timeout, max(deadline - loop.time(), 0.05))):
                if process.is_running:
                    return True
                continue
            seen = process.lines_seen  # lines from here on are news (one during the probe may be its own log line)
            now = loop.time()
            if now >= deadline:
                raise EngineStartTimeout(
                    f"model {model.name!r}: engine not ready after {timeout:.0f} s (engine_startup_timeout); "
                    f"last output: {process.stderr_tail(3) or '(none)'}"
                )
            if now >= next_log:
                logger.info("waiting for model %r to become ready... %.1f s", model.name, timeout - (deadline - now))
                next_log = now + 5.0
            if imminent_until is None and _READY_MARK in process.stderr_tail(3):
                imminent_until = now + _IMMINENT_FOR
            if imminent_until is not None and now < imminent_until:
                await asyncio.sleep(_IMMINENT_PROBE)
                continue
            await asyncio.sleep(_EARLY_PROBE)
            if process.lines_seen != seen:  # it printed something during the pause: probe now
                continue
            now = loop.time()
            process.output_event.clear()
            waits = [asyncio.ensure_future(process.output_event.wait()), asyncio.ensure_future(process.exited.wait())]
            try:
                await asyncio.wait(
                    waits,
                    timeout=min(_READY_POLL - _EARLY_PROBE, max(deadline - now, 0.0)),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for w in waits:
                    w.cancel()


def _engine_env(variant: Variant) -> dict[str, str]:
    """The variant's environment; over RPC, without ggml's crash backtrace unless the variant asks
    for it: losing a worker aborts the engine, and gdb's backtrace (a second or more) would only
    delay the restart that follows."""
    if not variant.rpc:
        return dict(variant.env)
    return {"GGML_NO_BACKTRACE": "1", **dict(variant.env)}


def _logged_slot_context(process: EngineProcess) -> int | None:
    """The per-slot context the engine logged while loading (the last such line); None if it did not."""
    found = _SLOT_CONTEXT.findall(process.stderr_tail(40))
    n_ctx = int(found[-1]) if found else 0
    return n_ctx if n_ctx > 0 else None
