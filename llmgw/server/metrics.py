"""Prometheus metrics, on a registry of the gateway's own (tests run several gateways)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class GatewayMetrics:
    def __init__(self) -> None:
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
        self.switches = Counter(
            "llmgw_engine_switches", "Engine switches (start, stop or change of model/variant)", registry=self.registry
        )
        self.switch_seconds = Histogram(
            "llmgw_engine_switch_seconds",
            "Duration of engine switches",
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
        )
        self.engine_start_seconds = Histogram(
            "llmgw_engine_start_seconds",
            "Engine spawn-to-ready time",
            ["model"],
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
        )
        self.in_flight = Gauge("llmgw_in_flight_requests", "Requests holding the engine", registry=self.registry)
        self.queued = Gauge("llmgw_queued_requests", "Requests waiting for a switch", registry=self.registry)
        self.tokens_counted = Counter(
            "llmgw_tokens_counted",
            "Context tokens counted for requests (prompt + completion budget)",
            ["model"],
            registry=self.registry,
        )

    def observe_request(self, route: str, model: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, model=model, status=str(status)).inc()
        self.request_seconds.labels(route=route).observe(seconds)

    def observe_switch(self, old: str | None, new: str | None, seconds: float) -> None:
        self.switches.inc()
        self.switch_seconds.observe(seconds)

    def observe_start(self, model: str, seconds: float) -> None:
        self.engine_start_seconds.labels(model=model).observe(seconds)

    def observe_count(self, model: str, tokens: int) -> None:
        self.tokens_counted.labels(model=model).inc(tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
