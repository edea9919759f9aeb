"""The reconciler's Prometheus metrics (a per-process registry) and the pipeline gauges it exports."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, get_args

from prometheus_client import CollectorRegistry

from shared.lifecycle import RescueReason
from shared.metrics import MetricFactory
from shared.pipeline_health import ALERT_CODES

RESCUE_REASONS = frozenset(get_args(RescueReason))


class ReconcilerMetrics:
    """Repairs, passes and leadership, plus the pipeline report as gauges (same numbers as /v1/pipeline)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        metric = MetricFactory(registry)
        self.repairs = metric.counter("kbingest_reconciler_repairs_total", "Repairs made, by kind", "kind")
        self.rescues = metric.counter(
            "kbingest_documents_rescued_total",
            "Documents taken back from a lost holder, by reason (presence_lost, stale) and outcome",
            "reason",
            "outcome",
        )
        self.presence_checks = metric.counter(
            "kbingest_reconciler_presence_checks_total", "Presence checks made as leader"
        )
        self.errors = metric.counter("kbingest_reconciler_errors_total", "Repair steps that failed, by kind", "kind")
        self.passes = metric.counter("kbingest_reconciler_passes_total", "Passes completed as leader")
        self.pass_duration = metric.histogram(
            "kbingest_reconciler_pass_duration_seconds",
            "Duration of a leader pass",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.is_leader = metric.gauge("kbingest_reconciler_is_leader", "1 while this replica holds the lock")
        self.last_pass = metric.gauge(
            "kbingest_reconciler_last_pass_timestamp_seconds", "Unix time of the last completed pass of any replica"
        )
        self.documents = metric.gauge("kbingest_documents", "Live documents by status", "status")
        self.oldest_queued = metric.gauge(
            "kbingest_queue_oldest_queued_age_seconds", "Age of the oldest due queued document"
        )
        self.queue_depth = metric.gauge("kbingest_queue_depth", "Queued documents, delayed retries included")
        self.queue_due = metric.gauge("kbingest_queue_due", "Queued documents due now")
        self.slots_total = metric.gauge("kbingest_pipeline_slots_total", "Work slots of alive, ready processors")
        self.slots_busy = metric.gauge("kbingest_pipeline_slots_busy", "Slots of alive processors holding a document")
        self.drain_rate = metric.gauge(
            "kbingest_pipeline_drain_rate_per_minute",
            "Documents finished (ready or failed) per minute over the last 5 minutes",
        )
        self.utilization = metric.gauge(
            "kbingest_pipeline_utilization_ratio",
            "Busy slot-seconds / available slot-seconds over the last 5 minutes (NaN without processors)",
        )
        self.alert = metric.gauge("kbingest_pipeline_alert", "1 while a pipeline alert is active", "code")
        self.db_in_use = metric.gauge(
            "kbingest_db_connections_in_use", "Client connections open on the PostgreSQL server"
        )
        self.db_max = metric.gauge("kbingest_db_max_connections", "PostgreSQL max_connections")
        for code in ALERT_CODES:
            self.alert.labels(code).set(0)

    def count_repairs(self, counts: Mapping[str, int]) -> None:
        """Count repairs by kind; rescues (``<reason>_<outcome>``) also by reason and outcome."""
        for kind, count in counts.items():
            self.repairs.labels(kind).inc(count)
            reason, _, outcome = kind.rpartition("_")
            if reason in RESCUE_REASONS:
                self.rescues.labels(reason, outcome).inc(count)

    def observe_report(self, report: dict[str, Any]) -> None:
        """Copy a ``pipeline_report`` into the gauges."""
        for status, count in report["counts_by_status"].items():
            self.documents.labels(status).set(count)
        self.oldest_queued.set(report["oldest_queued_age_s"] or 0.0)
        self.queue_depth.set(report["counts_by_status"]["queued"])
        self.queue_due.set(report["queued_due"])
        self.slots_total.set(report["slots"]["total"])
        self.slots_busy.set(report["slots"]["busy"])
        self.drain_rate.set(report["drain_rate_per_min"])
        utilization = report["utilization"]
        self.utilization.set(math.nan if utilization is None else utilization)
        active = {alert["code"] for alert in report["alerts"]}
        for code in ALERT_CODES:
            self.alert.labels(code).set(1 if code in active else 0)
        self.db_in_use.set(report["database"]["connections_in_use"])
        self.db_max.set(report["database"]["max_connections"])
        finished = report["reconciler"]["last_pass_finished_at"]
        if finished is not None:
            self.last_pass.set(finished.timestamp())
