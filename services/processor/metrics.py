"""The processor's Prometheus metrics (one registry per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from shared.metrics import MetricFactory

STAGE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class ProcessorMetrics:
    def __init__(self, registry: CollectorRegistry, concurrency: int) -> None:
        metric = MetricFactory(registry)
        self.stage_duration = metric.histogram(
            "kbingest_stage_duration_seconds", "Time spent per processing stage", "stage", buckets=STAGE_BUCKETS_S
        )
        self.processed = metric.counter(
            "kbingest_documents_processed_total", "Attempts finished, by outcome", "outcome"
        )
        self.slots_in_use = metric.gauge("kbingest_processor_slots_in_use", "Work slots taken")
        self.slots_total = metric.gauge("kbingest_processor_slots_total", "Work slots")
        self.slots_total.set(concurrency)
        self.heartbeat_failures = metric.counter(
            "kbingest_processor_heartbeat_failures_total",
            "Lease renewals that raised, by kind (unavailable, transient: retried; error: the attempt stops)",
            "kind",
        )
        self.attempt_timeouts = metric.counter(
            "kbingest_processor_attempt_timeouts_total",
            "Attempts cut by the ATTEMPT_TIMEOUT_S watchdog, by the stage they were in",
            "stage",
        )
        self.events = metric.counter("kbingest_processor_events_total", "Events received, by result", "result")
