"""Prometheus metrics of one app instance (own CollectorRegistry, no globals)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class EngineCollector(Collector):
    """Reads live gauges (queue depth, active slots, ...) from loaded engines at scrape."""

    def __init__(self, engines: Callable[[], dict[str, Any]]) -> None:
        self._engines = engines

    def collect(self) -> Iterator[GaugeMetricFamily]:
        loaded = GaugeMetricFamily("appliance_model_loaded", "1 if the model is loaded",
                                   labels=["model"])
        provider = GaugeMetricFamily("appliance_model_provider",
                                     "1 for the backend or execution provider a model runs on",
                                     labels=["model", "provider"])
        families: dict[str, GaugeMetricFamily] = {}
        for name, engine in self._engines().items():
            loaded.add_metric([name], 1.0)
            used = getattr(engine, "provider", None)
            if not isinstance(used, str):
                used = str(getattr(getattr(engine, "info", None), "backend", "unknown"))
            provider.add_metric([name, used], 1.0)
            stats = getattr(engine, "stats", None)
            if not callable(stats):
                continue
            for key, value in stats().items():
                fam = families.get(key)
                if fam is None:
                    fam = families[key] = GaugeMetricFamily(
                        f"appliance_engine_{key}", f"engine gauge {key}", labels=["model"])
                fam.add_metric([name], float(value))
        yield loaded
        yield provider
        yield from families.values()


class Metrics:
    """The box's counters and histograms."""

    def __init__(self, engines: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("appliance_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("appliance_request_latency_seconds", "HTTP request latency",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens_in = Counter("appliance_tokens_in", "prompt tokens", ["model"], registry=r)
        self.tokens_out = Counter("appliance_tokens_out", "generated tokens", ["model"],
                                  registry=r)
        self.ttft = Histogram("appliance_time_to_first_token_seconds", "time to first token",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens_per_second = Histogram(
            "appliance_decode_tokens_per_second", "decode speed per request", ["model"],
            buckets=(1, 5, 10, 20, 40, 80, 160, 320, 640, 1280), registry=r)
        self.engine_events = Counter(
            "appliance_engine_worker_events", "engine worker crashes, restarts and fallbacks",
            ["model", "event"], registry=r)
        self.images = Counter("appliance_images", "images processed", ["model"], registry=r)
        self.overflow = Counter("appliance_overflow_requests",
                                "requests sent to a remote endpoint (cloud overflow)",
                                ["model", "remote"], registry=r)
        self.in_flight = Gauge("appliance_requests_in_flight", "requests being served",
                               registry=r)
        r.register(EngineCollector(engines))
