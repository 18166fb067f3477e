"""EngineManager: which engine runs, and who may use it.

All the scheduling rules live here:

* One engine at a time. Requests that the running engine can serve share it through
  *leases*, concurrently (llama-server has parallel slots).
* A request that needs another model or a bigger variant queues. The head of the queue
  waits for the leases on the old engine to drain, then switches. Requests that arrive
  while a switch is queued line up behind it in arrival order, so steady traffic to the
  running model cannot starve a switch.
* Waiting is bounded (``queue_timeout``); the engine start-up has its own timeout.
* A running engine that is bigger than needed is kept, never swapped for a smaller one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from llmgw.config import LLAMACPP, Config, ModelConfig, Variant
from llmgw.engine.engine_client import EngineClient
from llmgw.errors import ContextTooLarge, GatewayError, QueueTimeout, ShuttingDown
from llmgw.runtime.base import RunningEngine, Runtime

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Ticket:
    """A queued wish: this model with at least this context, or (model None) no engine at all."""

    model: ModelConfig | None
    min_ctx: int
    error: GatewayError | None = None  # set when the switch this ticket waited for failed


class EngineManager:
    def __init__(self, config: Config, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.current: RunningEngine | None = None
        self._in_flight = 0
        self._queue: collections.deque[_Ticket] = collections.deque()
        self._switching = False
        self._closed = False
        self._wakeup = asyncio.Event()
        self._learned_ctx: dict[tuple[str, int], int] = {}
        self._idle_handle: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._last_release = time.monotonic()
        # Observers (metrics); plain callables so this layer knows nothing of Prometheus.
        self.on_switch: Callable[[str | None, str | None, float], None] | None = None
        self.on_engine_started: Callable[[str, float], None] | None = None

    # ----------------------------------------------------------------- queries

    @property
    def current_engine_client(self) -> EngineClient | None:
        return self.current.client if self.current is not None else None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._queue)

    def is_running(self, model_name: str) -> bool:
        cur = self.current
        return cur is not None and cur.model.name == model_name and cur.healthy

    def effective_context(self, model: ModelConfig, variant: Variant) -> int:
        """Context a variant really gives: what its engine reported last time, else the config."""
        return self._learned_ctx.get((model.name, variant.index), variant.context)

    def variant_for(self, model: ModelConfig, tokens: int) -> Variant:
        """Smallest variant whose (effective) context holds ``tokens``."""
        for variant in sorted(model.variants, key=lambda v: self.effective_context(model, v)):
            if self.effective_context(model, variant) >= tokens:
                return variant
        largest = max(self.effective_context(model, v) for v in model.variants)
        raise ContextTooLarge(model.name, tokens, largest)

    def largest_context(self, model: ModelConfig) -> int:
        return max(self.effective_context(model, v) for v in model.variants)

    def check_model_configuration(self, model_name: str, required_ctx: int) -> bool:
        """True when the running engine is this model and holds ``required_ctx`` tokens."""
        cur = self.current
        if cur is None or cur.model.name != model_name:
            return False
        if cur.model.engine == LLAMACPP:
            return self._check_llamacpp_config(required_ctx)
        return False

    def _check_llamacpp_config(self, required_ctx: int) -> bool:
        cur = self.current
        return cur is not None and cur.healthy and cur.n_ctx >= required_ctx

    def _fits(self, ticket: _Ticket) -> bool:
        if ticket.model is None:
            return self.current is None
        return self.check_model_configuration(ticket.model.name, ticket.min_ctx)

    # ----------------------------------------------------------------- leases

    @contextlib.asynccontextmanager
    async def lease(self, model: ModelConfig, min_ctx: int = 0) -> AsyncIterator[RunningEngine]:
        """Hold an engine of ``model`` with at least ``min_ctx`` context for the whole block.

        ``min_ctx`` 0 means "any variant": the running one, or the smallest if none runs.
        """
        engine = await self._acquire(_Ticket(model, min_ctx))
        assert engine is not None
        try:
            yield engine
        finally:
            self._release()

    async def ensure_engine(self, model: ModelConfig, min_ctx: int = 0) -> EngineClient:
        """Make sure a fitting engine runs (preload); does not keep a lease."""
        async with self.lease(model, min_ctx) as engine:
            return engine.client

    async def unload(self) -> None:
        """Stop the engine once its in-flight requests are done (queued like a switch)."""
        await self._acquire(_Ticket(None, 0))
        self._release()

    async def _acquire(self, ticket: _Ticket) -> RunningEngine | None:
        if self._closed:
            raise ShuttingDown("the gateway is shutting down")
        if not self._queue and not self._switching and self._fits(ticket):
            return self._grant()
        self._queue.append(ticket)
        budget = self.config.server.queue_timeout
        try:
            while True:
                if self._closed:
                    raise ShuttingDown("the gateway is shutting down")
                if ticket.error is not None:
                    raise ticket.error
                if self._queue[0] is ticket and not self._switching:
                    if self._fits(ticket):
                        self._queue.popleft()
                        return self._grant()
                    if self._in_flight == 0:
                        await self._switch_for(ticket)
                        continue
                wakeup = self._wakeup
                if self._switching:
                    # An engine start has its own timeout; it does not eat the queue budget.
                    await wakeup.wait()
                    continue
                started = time.monotonic()
                try:
                    await asyncio.wait_for(wakeup.wait(), budget)
                except TimeoutError:
                    raise QueueTimeout(
                        f"waited {self.config.server.queue_timeout:.0f} s for the engine to become "
                        f"free ({self._in_flight} request(s) in flight, {len(self._queue)} queued); try again"
                    ) from None
                budget -= time.monotonic() - started
        finally:
            if ticket in self._queue:
                self._queue.remove(ticket)
                self._notify()

    def _grant(self) -> RunningEngine | None:
        self._in_flight += 1
        self._cancel_idle_timer()
        self._notify()
        return self.current

    def _release(self) -> None:
        self._in_flight -= 1
        self._last_release = time.monotonic()
        self._notify()
        self._arm_idle_timer()

    def _notify(self) -> None:
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    async def _switch_for(self, ticket: _Ticket) -> None:
        """Head of the queue, nothing in flight: stop what runs, start what the ticket needs."""
        self._switching = True
        started = time.monotonic()
        old = self.current.model.name if self.current is not None else None
        variant: Variant | None = None
        try:
            await self._stop_current_engine()
            if ticket.model is not None:
                variant = self.variant_for(ticket.model, ticket.min_ctx)
                await self._start_new_engine(ticket.model, variant)
        except BaseException as exc:
            # The ticket that asked for this switch gets the error; the queue moves on.
            if self._queue and self._queue[0] is ticket:
                self._queue.popleft()
            if isinstance(exc, GatewayError) and ticket.model is not None and variant is not None:
                self._fail_waiting(ticket.model, variant, exc)
            raise
        finally:
            self._switching = False
            self._notify()
        new = self.current.model.name if self.current is not None else None
        if self.on_switch is not None:
            self.on_switch(old, new, time.monotonic() - started)

    def _fail_waiting(self, model: ModelConfig, variant: Variant, error: GatewayError) -> None:
        """Requests already queued for the engine that just failed to start get the same error.

        Retrying a broken engine once per queued request would make the last one wait
        (queue length x start-up timeout); requests that arrive later try again.
        """
        for waiting in list(self._queue):
            if waiting.model is not None and waiting.model.name == model.name and waiting.error is None:
                try:
                    same = self.variant_for(waiting.model, waiting.min_ctx) is variant
                except GatewayError:
                    same = False
                if same:
                    waiting.error = error
                    self._queue.remove(waiting)

    # ----------------------------------------------------------------- lifecycle

    async def _stop_current_engine(self) -> None:
        cur = self.current
        if cur is None:
            return
        self.current = None
        await self.runtime.stop(cur)

    async def _start_new_engine(self, model: ModelConfig, variant: Variant) -> None:
        reserve = model.completion_reserve or self.config.server.completion_reserve
        t0 = time.monotonic()
        engine = await self.runtime.start(model, variant, reserve, self._on_engine_crash)
        self._learned_ctx[(model.name, variant.index)] = engine.n_ctx
        self.current = engine
        if self.on_engine_started is not None:
            self.on_engine_started(model.name, time.monotonic() - t0)

    def _on_engine_crash(self) -> None:
        self._notify()  # a queued request may now restart it

    # ----------------------------------------------------------------- idle unload

    def _cancel_idle_timer(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None

    def _arm_idle_timer(self) -> None:
        self._cancel_idle_timer()
        cur = self.current
        if cur is None or self._in_flight or self._queue or self._closed:
            return
        idle = cur.variant.timeouts.engine_idle
        if idle > 0:
            self._idle_handle = asyncio.get_running_loop().call_later(idle, self._on_idle_timer)

    def _on_idle_timer(self) -> None:
        self._idle_handle = None
        task = asyncio.ensure_future(self._unload_if_idle())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _unload_if_idle(self) -> None:
        if self._in_flight or self._queue or self._switching or self.current is None:
            return
        logger.info(
            "model %r idle for %.0f s: unloading", self.current.model.name, time.monotonic() - self._last_release
        )
        try:
            await self.unload()
        except GatewayError as exc:
            logger.warning("idle unload failed: %s", exc)

    # ----------------------------------------------------------------- shutdown

    async def shutdown(self) -> None:
        """Refuse new leases, wake queued ones (they fail), stop the engine."""
        self._closed = True
        self.runtime.close()
        self._cancel_idle_timer()
        self._notify()
        for task in list(self._background):
            task.cancel()
        if self._switching:
            # A start in progress is stopped by its own error path once its wait is cancelled;
            # give it a moment, then stop whatever runs.
            for _ in range(100):
                if not self._switching:
                    break
                await asyncio.sleep(0.05)
        await self._stop_current_engine()

    # ----------------------------------------------------------------- reload

    async def adopt_config(self, config: Config) -> None:
        """Switch to a new config; the running engine survives if its model and variant are unchanged."""
        self.config = config
        self._learned_ctx.clear()
        cur = self.current
        if cur is None:
            return
        model = config.model(cur.model.name)
        same = None
        if model is not None:
            same = next((v for v in model.variants if _same_launch(v, cur.variant)), None)
        if model is not None and same is not None:
            cur.model, cur.variant = model, same
            self._learned_ctx[(model.name, same.index)] = cur.n_ctx
            logger.info("reload: engine of model %r kept (variant unchanged)", model.name)
            return
        logger.info("reload: model %r or its variant changed; unloading its engine", cur.model.name)
        await self.unload()


def _same_launch(a: Variant, b: Variant) -> bool:
    return (a.binary, a.args, a.context, a.connect, a.env) == (b.binary, b.args, b.context, b.connect, b.env)
