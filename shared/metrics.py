"""Declaring Prometheus metrics on the registry a process owns (no globals: each test builds its own)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class MetricFactory:
    """Counters, gauges and histograms on one registry: a service's metrics class names it once."""

    registry: CollectorRegistry

    def counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def gauge(self, name: str, documentation: str, *labels: str) -> Gauge:
        return Gauge(name, documentation, labels, registry=self.registry)

    def histogram(self, name: str, documentation: str, *labels: str, buckets: Sequence[float]) -> Histogram:
        return Histogram(name, documentation, labels, registry=self.registry, buckets=buckets)
