"""Prometheus config and alert rules, the metric list, and the Grafana dashboard."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import infrastructure as v

# The names the services export (issue 7); infrastructure/metrics.txt must list (at least) these.
EXPORTED = {
    "kbingest_http_requests_total": "counter",
    "kbingest_http_request_duration_seconds": "histogram",
    "kbingest_uploads_total": "counter",
    "kbingest_documents": "gauge",
    "kbingest_queue_oldest_queued_age_seconds": "gauge",
    "kbingest_queue_depth": "gauge",
    "kbingest_queue_due": "gauge",
    "kbingest_pipeline_slots_total": "gauge",
    "kbingest_pipeline_slots_busy": "gauge",
    "kbingest_pipeline_drain_rate_per_minute": "gauge",
    "kbingest_pipeline_utilization_ratio": "gauge",
    "kbingest_outbox_pending": "gauge",
    "kbingest_outbox_oldest_pending_age_seconds": "gauge",
    "kbingest_outbox_delivered_total": "counter",
    "kbingest_outbox_delivery_latency_seconds": "histogram",
    "kbingest_outbox_retries_total": "counter",
    "kbingest_outbox_dead_letters": "gauge",
    "kbingest_outbox_unroutable": "gauge",
    "kbingest_stage_duration_seconds": "histogram",
    "kbingest_documents_processed_total": "counter",
    "kbingest_processor_slots_in_use": "gauge",
    "kbingest_processor_slots_total": "gauge",
    "kbingest_reconciler_repairs_total": "counter",
    "kbingest_reconciler_last_pass_timestamp_seconds": "gauge",
    "kbingest_reconciler_is_leader": "gauge",
    "kbingest_pipeline_alert": "gauge",
    "kbingest_db_connections_in_use": "gauge",
    "kbingest_db_max_connections": "gauge",
}
PIPELINE_ALERT_CODES = (
    "no_processor",
    "unroutable_events",
    "db_connections_high",
    "reconciler_not_running",
    "processor_not_ready",
    "queue_stalled",
    "dead_letters",
)
SERVICE_PORTS = {"api": 8000, "relay": 8001, "processor": 8002, "reconciler": 8003}


@pytest.fixture(scope="module")
def metrics(infra: Path) -> dict[str, str]:
    return v.load_metric_names(infra / "metrics.txt")


@pytest.fixture(scope="module")
def rules(infra: Path) -> list[dict[str, Any]]:
    doc = v.load_yaml(infra / "prometheus" / "alerts.yml")
    assert set(doc) == {"groups"}
    return [rule for group in doc["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard(infra: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((infra / "grafana" / "dashboards" / "kbingest.json").read_text())
    return doc


def test_metrics_txt_lists_the_exported_metrics(metrics: dict[str, str]) -> None:
    assert {name: metrics.get(name) for name in EXPORTED} == EXPORTED
    assert all(re.fullmatch(r"kbingest_[a-z0-9_]+", name) for name in metrics)
    assert all(name.endswith("_total") for name, kind in metrics.items() if kind == "counter")


def test_rule_file_structure(infra: Path) -> None:
    doc = v.load_yaml(infra / "prometheus" / "alerts.yml")
    group_names = [g["name"] for g in doc["groups"]]
    assert len(group_names) == len(set(group_names))
    alerts = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule.get("alert")
            assert re.fullmatch(r"Kbingest[A-Z][A-Za-z]+", rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning"}
            assert {"summary", "description", "runbook"} <= set(rule["annotations"])
            alerts.append(rule["alert"])
    assert len(alerts) == len(set(alerts)), "duplicate alert names"


def test_rules_use_only_listed_metrics(rules: list[dict[str, Any]], metrics: dict[str, str]) -> None:
    used = set().union(*(v.promql_metric_names(r["expr"]) for r in rules))
    assert used, "no metric found: the expression parser is broken"
    assert v.unknown_metrics(used, metrics) == set()


@pytest.mark.parametrize("code", PIPELINE_ALERT_CODES)
def test_every_pipeline_alert_code_has_a_rule(rules: list[dict[str, Any]], code: str) -> None:
    matching = [r for r in rules if f'kbingest_pipeline_alert{{code="{code}"}}' in r["expr"]]
    assert len(matching) == 1, code


def test_outbox_lag_and_connection_headroom_rules(rules: list[dict[str, Any]]) -> None:
    exprs = [r["expr"] for r in rules]
    assert any("kbingest_outbox_oldest_pending_age_seconds" in e for e in exprs)
    assert any("kbingest_db_connections_in_use / kbingest_db_max_connections" in e for e in exprs)
    assert any("kbingest_reconciler_is_leader" in e for e in exprs)


def test_promql_metric_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, stage) (rate(a_seconds_bucket{stage!="x"}[5m] offset 1h)))'
        ' / on(job) group_left(instance) b > 1e3 and time() - c unless d{code="e"} or vector(0)'
    )
    assert v.promql_metric_names(expr) == {"a_seconds_bucket", "b", "c", "d"}
    assert v.promql_metric_names("sum(rate(x_total[$__rate_interval])) by (le)") == {"x_total"}
    known = {"h": "histogram", "g": "gauge"}
    assert v.unknown_metrics({"h_bucket", "h_count", "g", "up", "g_bucket", "z"}, known) == {"g_bucket", "z"}


def test_prometheus_scrapes_every_service(infra: Path) -> None:
    config = v.load_yaml(infra / "prometheus" / "prometheus.yml")
    for rule_file in config["rule_files"]:
        assert (infra / "prometheus" / rule_file).exists()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for service, port in SERVICE_PORTS.items():
        job = jobs[f"kbingest-{service}"]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        (sd,) = job["dns_sd_configs"]
        assert sd["names"] == [service] and sd["port"] == port and sd["type"] == "A"


def test_dashboard_uses_only_listed_metrics(dashboard: dict[str, Any], metrics: dict[str, str]) -> None:
    used = set().union(*(v.promql_metric_names(e) for e in v.grafana_exprs(dashboard)))
    assert v.unknown_metrics(used, metrics) == set()


def test_dashboard_covers_the_pipeline(dashboard: dict[str, Any]) -> None:
    exprs = "\n".join(v.grafana_exprs(dashboard))
    for needle in (
        "sum by (stage) (rate(kbingest_stage_duration_seconds_count",  # throughput per stage
        "histogram_quantile(0.95, sum by (le, stage) (rate(kbingest_stage_duration_seconds_bucket",  # stage latency
        "kbingest_documents)",  # queue depth by status
        "kbingest_queue_oldest_queued_age_seconds",
        "kbingest_outbox_oldest_pending_age_seconds",  # outbox lag
        "kbingest_outbox_dead_letters",
        "kbingest_db_connections_in_use",
        "kbingest_pipeline_alert",
        "max(kbingest_queue_due)",  # the flow, as GET /v1/pipeline and the UI's charts show it
        "max(kbingest_pipeline_drain_rate_per_minute)",
        "max(kbingest_pipeline_utilization_ratio)",
        "max(kbingest_pipeline_slots_busy)",
    ):
        assert needle in exprs, needle
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]


def test_grafana_datasource_matches_the_dashboard(dashboard: dict[str, Any], infra: Path) -> None:
    ds = v.load_yaml(infra / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert uids == {source["uid"]}


@pytest.mark.parametrize(
    "args",
    [["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"], ["test", "rules", "alerts.test.yml"]],
    ids=["check-rules", "check-config", "rule-unit-tests"],
)
def test_promtool(args: list[str], infra: Path, tool: Callable[[str], str | None]) -> None:
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    result = subprocess.run([promtool, *args], cwd=infra / "prometheus", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
