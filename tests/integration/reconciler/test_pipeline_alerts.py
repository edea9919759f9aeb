"""compute_alerts over hand-made facts: each alert's condition, message and ``since`` (no servers)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from shared.pipeline import Facts, compute_alerts
from shared.settings import Settings

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
SETTINGS = Settings(
    _env_file=None,
    reconcile_interval_s=10,
    queue_stalled_after_s=300,  # type: ignore[call-arg]
    processor_ready_deadline_s=120,
)

HEALTHY = Facts(
    now=NOW,
    queued=0,
    queued_due=0,
    oldest_queued_since=None,
    processors_alive=1,
    processors_ready=1,
    processors_last_seen=NOW,
    processors_not_ready=0,
    not_ready_started=None,
    dead=0,
    dead_since=None,
    unroutable=0,
    unroutable_since=None,
    first_event_at=NOW - timedelta(hours=1),
    connections_in_use=10,
    max_connections=100,
    reconciler_finished_at=NOW - timedelta(seconds=5),
)


def _alerts(**changes: object) -> dict[str, tuple[str, datetime]]:
    facts = replace(HEALTHY, **changes)  # type: ignore[arg-type]
    return {a.code: (a.message, a.since) for a in compute_alerts(facts, SETTINGS)}


def test_a_healthy_pipeline_has_no_alerts() -> None:
    assert _alerts() == {}


def test_no_processor_since_the_later_of_queueing_and_the_last_heartbeat_window() -> None:
    queued_at = NOW - timedelta(minutes=10)
    last_seen = NOW - timedelta(minutes=3)
    alerts = _alerts(
        queued=12,
        queued_due=12,
        oldest_queued_since=queued_at,
        processors_alive=0,
        processors_ready=0,
        processors_last_seen=last_seen,
    )
    message, since = alerts["no_processor"]
    assert "12 document(s) queued" in message and "kbingest processor" in message
    assert since == last_seen + timedelta(seconds=60)
    never = _alerts(
        queued=1,
        queued_due=1,
        oldest_queued_since=queued_at,
        processors_alive=0,
        processors_ready=0,
        processors_last_seen=None,
    )
    assert never["no_processor"][1] == queued_at and "ever registered" in never["no_processor"][0]
    assert "no_processor" not in _alerts(queued=0, processors_alive=0)


def test_processor_not_ready_after_its_deadline() -> None:
    started = NOW - timedelta(minutes=5)
    message, since = _alerts(processors_not_ready=1, not_ready_started=started)["processor_not_ready"]
    assert since == started + timedelta(seconds=120) and "/readyz" in message


def test_queue_stalled_only_while_processors_are_alive() -> None:
    oldest = NOW - timedelta(minutes=7)
    message, since = _alerts(queued=3, queued_due=3, oldest_queued_since=oldest)["queue_stalled"]
    assert since == oldest + timedelta(seconds=300) and "7 min" in message
    assert "queue_stalled" not in _alerts(queued=3, queued_due=3, oldest_queued_since=NOW - timedelta(minutes=2))
    dead = _alerts(queued=3, queued_due=3, oldest_queued_since=oldest, processors_alive=0, processors_ready=0)
    assert "queue_stalled" not in dead and "no_processor" in dead


def test_unroutable_and_dead_letters_since_the_first_dead_event() -> None:
    first = NOW - timedelta(minutes=4)
    alerts = _alerts(dead=3, dead_since=first - timedelta(minutes=1), unroutable=2, unroutable_since=first)
    assert alerts["unroutable_events"][1] == first and "KBINGEST_RELAY_ROUTES" in alerts["unroutable_events"][0]
    assert alerts["dead_letters"][1] == first - timedelta(minutes=1)


def test_db_connections_high_over_80_percent_uses_the_stored_first_sighting() -> None:
    assert "db_connections_high" not in _alerts(connections_in_use=80)
    seen = NOW - timedelta(minutes=2)
    alerts = _alerts(connections_in_use=81, stored_since={"db_connections_high": seen})
    assert alerts["db_connections_high"][1] == seen and "81 of 100" in alerts["db_connections_high"][0]
    assert _alerts(connections_in_use=95)["db_connections_high"][1] == NOW


def test_reconciler_not_running_after_three_intervals() -> None:
    assert "reconciler_not_running" not in _alerts(reconciler_finished_at=NOW - timedelta(seconds=29))
    last = NOW - timedelta(seconds=45)
    assert _alerts(reconciler_finished_at=last)["reconciler_not_running"][1] == last + timedelta(seconds=30)
    never = _alerts(reconciler_finished_at=None)["reconciler_not_running"]
    assert never[1] == HEALTHY.first_event_at and "kbingest reconciler" in never[0]
