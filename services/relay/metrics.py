"""The relay's Prometheus metrics, on a registry the process owns (no globals)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry

from shared.deadletters import OutboxHealth
from shared.metrics import MetricFactory

LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class RelayMetrics:
    """Outbox gauges (refreshed from Postgres) and delivery counters (updated as deliveries settle)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        metric = MetricFactory(registry)
        self.pending = metric.gauge("kbingest_outbox_pending", "Events not yet delivered nor dead")
        self.oldest_pending_age = metric.gauge(
            "kbingest_outbox_oldest_pending_age_seconds", "Age of the oldest undelivered event"
        )
        self.delivered = metric.counter(
            "kbingest_outbox_delivered", "Deliveries acknowledged with 2xx, per subscriber", "subscriber"
        )
        self.latency = metric.histogram(
            "kbingest_outbox_delivery_latency_seconds",
            "From the event's creation to the subscriber's 2xx",
            buckets=LATENCY_BUCKETS_S,
        )
        self.retries = metric.counter("kbingest_outbox_retries", "Deliveries scheduled for a retry")
        # Apart from retries: a busy subscriber is normal back-pressure, and alerts watch the retries.
        self.busy = metric.counter(
            "kbingest_outbox_busy",
            "Deliveries answered 429 (busy) and re-offered shortly, per subscriber; never an attempt",
            "subscriber",
        )
        # A replica that fails while its group's other members deliver causes no retry and no dead
        # letter: this is where it shows.
        self.member_failures = metric.counter(
            "kbingest_outbox_member_failures",
            "Failed requests (connection error, timeout, 5xx) to a member of an any-of group, per member URL",
            "member",
        )
        self.dead_letters = metric.gauge("kbingest_outbox_dead_letters", "Events in the dead-letter state")
        self.unroutable = metric.gauge("kbingest_outbox_unroutable", "Dead letters parked because no route matched")
        self.db_connections_in_use = metric.gauge(
            "kbingest_db_connections_in_use", "Postgres connections this process holds"
        )
        self.db_max_connections = metric.gauge(
            "kbingest_db_max_connections", "This process's connection ceiling (pool + LISTEN)"
        )

    def track_connections(self, in_use: Callable[[], float], ceiling: int) -> None:
        """Report connections held, read at scrape time."""
        self.db_connections_in_use.set_function(in_use)
        self.db_max_connections.set(ceiling)

    def observe_health(self, health: OutboxHealth) -> None:
        self.pending.set(health.pending)
        self.oldest_pending_age.set(health.oldest_pending_age_s)
        self.dead_letters.set(health.dead)
        self.unroutable.set(health.unroutable)
