"""Prometheus metrics, on a registry of the gateway's own (tests run several gateways)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from llmgw.api.usage import AnswerStats
from llmgw.keys import KeyGate
from llmgw.scheduling.scheduler import EngineRecord, Ticket
from llmgw.slotcache import SlotCache

CONTENT_TYPE = CONTENT_TYPE_LATEST


class GatewayMetrics:
    def __init__(self, slot_cache: SlotCache | None = None, keys: KeyGate | None = None) -> None:
        """``slot_cache``, ``keys``: their own counters are read at each scrape."""
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llmgw_requests", "HTTP requests served", ["route", "model", "status"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "llmgw_request_seconds",
            "Time to serve a request, streaming included",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.02, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.engine_starts = Counter(
            "llmgw_engine_starts", "Engines started and ready", ["model"], registry=self.registry
        )
        self.engine_stops = Counter("llmgw_engine_stops", "Engines stopped", ["model"], registry=self.registry)
        self.engine_start_seconds = Histogram(
            "llmgw_engine_start_seconds",
            "Engine spawn-to-ready time",
            ["model"],
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
        )
        self.engines = Gauge("llmgw_engines", "Engines by state", ["model", "state"], registry=self.registry)
        self.engine_memory = Gauge(
            "llmgw_engine_memory_mib",
            "Memory an engine counts for in placement (declared, else measured), per pool",
            ["model", "pool"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "llmgw_in_flight_requests", "Requests holding an engine", ["model"], registry=self.registry
        )
        self.queued = Gauge(
            "llmgw_queued_requests", "Requests waiting for an engine", ["model"], registry=self.registry
        )
        self.counts_skipped = Counter(
            "llmgw_counts_skipped",
            "Requests sent without an exact count: a bound learned from earlier counts proved they fit",
            ["model"],
            registry=self.registry,
        )
        self.tokens_counted = Counter(
            "llmgw_tokens_counted",
            "Context tokens counted for requests (prompt + completion budget)",
            ["model"],
            registry=self.registry,
        )

        # From the engine's own answer (its ``timings`` / ``usage``), per model.
        self.prompt_tokens = Counter(
            "llmgw_prompt_tokens",
            "Prompt tokens of answered requests, cached ones included",
            ["model"],
            registry=self.registry,
        )
        self.cached_tokens = Counter(
            "llmgw_cached_prompt_tokens",
            "Prompt tokens the engine took from its cache",
            ["model"],
            registry=self.registry,
        )
        self.generated_tokens = Counter("llmgw_generated_tokens", "Tokens generated", ["model"], registry=self.registry)
        self.prefill_tps = Histogram(
            "llmgw_prefill_tokens_per_second",
            "Prompt processing speed of each answer (the engine's timings)",
            ["model"],
            registry=self.registry,
            buckets=(10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000),
        )
        self.decode_tps = Histogram(
            "llmgw_decode_tokens_per_second",
            "Generation speed of each answer (the engine's timings)",
            ["model"],
            registry=self.registry,
            buckets=(1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640),
        )
        if slot_cache is not None:
            self.registry.register(_SlotCacheCollector(slot_cache))
        self.peers = _PeerCollector()
        self.registry.register(self.peers)
        if keys is not None:
            self.registry.register(_KeyCollector(keys))

    def observe_answer(self, model: str, stats: AnswerStats) -> None:
        if stats.prompt_tokens:
            self.prompt_tokens.labels(model=model).inc(stats.prompt_tokens)
        if stats.cached_tokens:
            self.cached_tokens.labels(model=model).inc(stats.cached_tokens)
        if stats.generated_tokens:
            self.generated_tokens.labels(model=model).inc(stats.generated_tokens)
        if stats.prefill_tps is not None:
            self.prefill_tps.labels(model=model).observe(stats.prefill_tps)
        if stats.decode_tps is not None:
            self.decode_tps.labels(model=model).observe(stats.decode_tps)

    def observe_request(self, route: str, model: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, model=model, status=str(status)).inc()
        self.request_seconds.labels(route=route).observe(seconds)

    def observe_start(self, model: str, seconds: float) -> None:
        self.engine_starts.labels(model=model).inc()
        self.engine_start_seconds.labels(model=model).observe(seconds)

    def observe_stop(self, model: str, reason: str) -> None:
        self.engine_stops.labels(model=model).inc()

    def observe_count(self, model: str, tokens: int) -> None:
        self.tokens_counted.labels(model=model).inc(tokens)

    def observe_skipped_count(self, model: str) -> None:
        self.counts_skipped.labels(model=model).inc()

    def refresh(self, models: Iterable[str], engines: Iterable[EngineRecord[Any]], queue: Iterable[Ticket]) -> None:
        """Set the gauges from the scheduler's state, every configured model included (0 when idle)."""
        names = list(models)
        for gauge in (self.engines, self.engine_memory, self.in_flight, self.queued):
            gauge.clear()
        for name in names:
            self.in_flight.labels(model=name).set(0)
            self.queued.labels(model=name).set(0)
        for record in engines:
            self.engines.labels(model=record.model.name, state=record.state.value).inc()
            self.in_flight.labels(model=record.model.name).inc(record.in_flight)
            for pool, mib in record.need.items():
                self.engine_memory.labels(model=record.model.name, pool=pool).set(mib)
        for ticket in queue:
            self.queued.labels(model=ticket.model.name).inc()

    def refresh_peers(self, views: list[dict[str, Any]]) -> None:
        """The peers as the pool shows them (names only: never a key or a URL)."""
        self.peers.views = views

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _SlotCacheCollector(Collector):
    """The slot cache's own counters, read when /metrics is scraped."""

    def __init__(self, cache: SlotCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        restores = CounterMetricFamily(
            "llmgw_slot_cache_restores",
            "Requests to a new engine offered a saved slot: hit (restored), miss (none fitted), error",
            labels=["model", "result"],
        )
        saves = CounterMetricFamily(
            "llmgw_slot_cache_saves", "Slots saved before an engine stopped", labels=["model", "result"]
        )
        evictions = CounterMetricFamily(
            "llmgw_slot_cache_evictions", "Slot files deleted to keep the directory's budget", labels=["model"]
        )
        restored = CounterMetricFamily(
            "llmgw_slot_cache_tokens_restored", "Tokens restored into engines", labels=["model"]
        )
        reused = CounterMetricFamily(
            "llmgw_slot_cache_tokens_reused", "Of those, prompt tokens the engine reported cached", labels=["model"]
        )
        saved = CounterMetricFamily(
            "llmgw_slot_cache_saved_seconds",
            "Prompt processing time saved: tokens reused x the engine's prompt time per token on that request",
            labels=["model"],
        )
        files = GaugeMetricFamily("llmgw_slot_cache_files", "Saved slot files", labels=["model"])
        size = GaugeMetricFamily("llmgw_slot_cache_bytes", "Bytes of saved slot files", labels=["model"])
        for model, stats in sorted(self.cache.stats.items()):
            restores.add_metric([model, "hit"], stats.hits)
            restores.add_metric([model, "miss"], stats.misses)
            restores.add_metric([model, "error"], stats.errors)
            saves.add_metric([model, "saved"], stats.saves)
            saves.add_metric([model, "error"], stats.save_errors)
            evictions.add_metric([model], stats.evictions)
            restored.add_metric([model], stats.tokens_restored)
            reused.add_metric([model], stats.tokens_reused)
            saved.add_metric([model], stats.seconds_saved)
        for model, (count, total) in sorted(self.cache.files().items()):
            files.add_metric([model], count)
            size.add_metric([model], total)
        yield from (restores, saves, evictions, restored, reused, saved, files, size)


_BREAKER_STATES = ("closed", "open", "recovering")


class _PeerCollector(Collector):
    """Each peer's breaker and what was sent to it, from the pool's views at the last scrape."""

    def __init__(self) -> None:
        self.views: list[dict[str, Any]] = []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("llmgw_peer_up", "1 while a peer's breaker lets requests through", labels=["peer"])
        breaker = GaugeMetricFamily(
            "llmgw_peer_breaker", "A peer's breaker state (1 for the state it is in)", labels=["peer", "state"]
        )
        trips = CounterMetricFamily("llmgw_peer_trips", "Times a peer's breaker tripped", labels=["peer"])
        forwarded = CounterMetricFamily("llmgw_peer_forwarded", "Requests sent to a peer", labels=["peer"])
        failures = CounterMetricFamily(
            "llmgw_peer_failures", "Checks and requests that failed on a peer's side", labels=["peer"]
        )
        sent = GaugeMetricFamily("llmgw_peer_in_flight", "Requests sent to a peer, still running", labels=["peer"])
        for view in self.views:
            name = str(view["name"])
            state = view["breaker"]["state"]
            up.add_metric([name], 1 if state == "closed" else 0)
            for each in _BREAKER_STATES:
                breaker.add_metric([name, each], 1 if state == each else 0)
            trips.add_metric([name], view["breaker"]["trips"])
            forwarded.add_metric([name], view["forwarded"])
            failures.add_metric([name], view["failures"])
            sent.add_metric([name], view["sent"])
        yield from (up, breaker, trips, forwarded, failures, sent)


class _KeyCollector(Collector):
    """Each configured key's usage, labelled by its name (never the key), read when /metrics is scraped."""

    def __init__(self, keys: KeyGate) -> None:
        self.keys = keys

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("llmgw_key_requests", "Model requests admitted, per API key", labels=["key"])
        prompt = CounterMetricFamily(
            "llmgw_key_prompt_tokens", "Prompt tokens the engines reported, per API key", labels=["key"]
        )
        generated = CounterMetricFamily(
            "llmgw_key_generated_tokens", "Generated tokens the engines reported, per API key", labels=["key"]
        )
        refused = CounterMetricFamily(
            "llmgw_key_rate_limited",
            "Requests refused with 429, per API key and limit (requests_per_minute, tokens_per_day, max_concurrent)",
            labels=["key", "limit"],
        )
        today = GaugeMetricFamily(
            "llmgw_key_tokens_today", "Prompt + generated tokens since 00:00 UTC, per API key", labels=["key"]
        )
        budget = GaugeMetricFamily("llmgw_key_tokens_per_day", "The key's tokens_per_day budget", labels=["key"])
        in_flight = GaugeMetricFamily("llmgw_key_in_flight", "Model requests in flight, per API key", labels=["key"])
        for row in self.keys.view():
            name = row["key"]
            usage = self.keys.usage.of(name)
            requests.add_metric([name], usage.requests)
            prompt.add_metric([name], usage.prompt_tokens)
            generated.add_metric([name], usage.generated_tokens)
            for limit in ("requests_per_minute", "tokens_per_day", "max_concurrent"):
                refused.add_metric([name, limit], usage.refused.get(limit, 0))
            today.add_metric([name], row["tokens_today"])
            if row["tokens_per_day"] is not None:
                budget.add_metric([name], row["tokens_per_day"])
            in_flight.add_metric([name], row["in_flight"])
        yield from (requests, prompt, generated, refused, today, budget, in_flight)
