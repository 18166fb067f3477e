"""The composition root: every long-lived object of a gateway, wired once, through constructors.

:func:`build` is the only place that knows how the pieces fit; handlers receive the services
they use (llmgw.server.app) and never look anything up elsewhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from llmgw.config import Config, LiveConfig
from llmgw.events import EventBus
from llmgw.keys import KeyGate
from llmgw.modelfile import ModelFiles
from llmgw.peers import PeerPool
from llmgw.proxy import LocalNode, Proxy, Router, TokenCounter
from llmgw.proxy.sizing import CountBounds
from llmgw.runtime import ProcessGuard, ProcessRuntime
from llmgw.runtime.rpc import RpcWorkers
from llmgw.scheduling import EngineManager, ManagerHooks, new_scheduler
from llmgw.server.activity import EngineLogs, RequestLog
from llmgw.server.metrics import GatewayMetrics
from llmgw.server.ollama import Ollama
from llmgw.server.status import StatusTracker
from llmgw.server.views import Views
from llmgw.slotcache import SlotCache
from llmgw.state import StateStore, default_state_dir
from llmgw.upstream import EngineHTTPClient


@dataclass(frozen=True)
class Services:
    live: LiveConfig  # the configuration in force (a reload replaces it there)
    keys: KeyGate  # who a request comes from, its limits and usage
    metrics: GatewayMetrics
    bus: EventBus  # /events
    activity: RequestLog  # requests in flight and answered
    engine_logs: EngineLogs  # what each engine printed
    guard: ProcessGuard  # kills the engines if the gateway dies without cleaning up
    http: EngineHTTPClient  # pooled connections to the engines
    slot_cache: SlotCache
    manager: EngineManager  # which engines run, and who uses them
    status: StatusTracker  # engine and queue events, load progress
    proxy: Proxy  # the request path
    node: LocalNode  # this node as its peers see it (/api/state)
    pool: PeerPool  # the peers, their breakers and states
    router: Router  # where a request goes, on a node with peers
    views: Views  # what the read-only routes show
    files: ModelFiles  # each model's GGUF header (memory estimate, Ollama's details), read once per change
    ollama: Ollama  # Ollama's native API (/api/...)


def build(config: Config) -> Services:
    """Wire a gateway for ``config``. Call it in the running event loop: Tornado's HTTP client
    must not be made at import time."""
    live = LiveConfig(config)
    state = StateStore(config.server.state_dir or default_state_dir())
    keys = KeyGate(live, state)
    slot_cache = SlotCache(config)
    metrics = GatewayMetrics(slot_cache, keys)
    bus = EventBus()
    activity = RequestLog(bus, metrics.observe_answer)
    engine_logs = EngineLogs(bus)
    guard = ProcessGuard()
    http = EngineHTTPClient.create()
    scheduler = new_scheduler(config, state)
    status = StatusTracker(scheduler, bus, state)
    runtime = ProcessRuntime(
        http,
        guard,
        slot_cache=slot_cache,
        on_spawned=status.spawned,
        on_output=engine_logs.add,
        rpc=RpcWorkers(live),
    )
    hooks = ManagerHooks(
        engine_started=metrics.observe_start, engine_stopped=metrics.observe_stop, changed=status.changed
    )
    files = ModelFiles()
    manager = EngineManager(config, runtime, state, scheduler, hooks, files)
    proxy = Proxy(live, manager, TokenCounter(), slot_cache, status.progress, metrics, CountBounds(state))
    node = LocalNode(live, manager)
    pool = PeerPool(config.server.peering, http, config.server.node_name, status.peer_changed)
    router = Router(live, proxy, pool, node)
    started = int(time.time())
    views = Views(live, manager, status, started, node, pool)
    ollama = Ollama(live, manager, files, started)
    return Services(
        live,
        keys,
        metrics,
        bus,
        activity,
        engine_logs,
        guard,
        http,
        slot_cache,
        manager,
        status,
        proxy,
        node,
        pool,
        router,
        views,
        files,
        ollama,
    )
