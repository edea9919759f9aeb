"""compute_alerts over hand-made facts: each alert's condition, message and ``since`` (no servers)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from shared.flow import Flow
from shared.pipeline_health import Facts, compute_alerts
from shared.settings import Settings

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
SETTINGS = Settings(
    _env_file=None,
    reconcile_interval_s=10,
    queue_stalled_after_s=300,  # type: ignore[call-arg]
    processor_ready_deadline_s=120,
)

IDLE = Flow(
    queued=0,
    queued_due=0,
    oldest_queued_since=None,
    processing=0,
    slots_total=2,
    slots_busy=0,
    drain_rate_per_min=0.0,
    utilization=0.0,
    last_started_at=NOW - timedelta(hours=1),
    last_finished_at=NOW - timedelta(hours=1),
    last_ready_at=NOW - timedelta(hours=2),
)
HEALTHY = Facts(
    now=NOW,
    flow=IDLE,
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
NO_PROCESSOR: dict[str, int] = {"processors_alive": 0, "processors_ready": 0}


def _alerts(**changes: object) -> dict[str, tuple[str, datetime]]:
    """Alerts of HEALTHY with ``changes``; Flow's fields go to the flow, the others to the facts."""
    flow = {k: v for k, v in changes.items() if k in Flow.__dataclass_fields__}
    rest = {k: v for k, v in changes.items() if k not in flow}
    facts = replace(HEALTHY, flow=replace(IDLE, **flow), **rest)  # type: ignore[arg-type]
    return {a.code: (a.message, a.since) for a in compute_alerts(facts, SETTINGS)}


def _waiting(minutes: float, due: int = 3, **changes: object) -> dict[str, tuple[str, datetime]]:
    """Alerts while ``due`` documents have been due for ``minutes``."""
    since = NOW - timedelta(minutes=minutes)
    return _alerts(queued=due, queued_due=due, oldest_queued_since=since, **changes)


def test_a_healthy_pipeline_has_no_alerts() -> None:
    assert _alerts() == {}


def test_no_processor_since_the_later_of_queueing_and_the_last_heartbeat_window() -> None:
    last_seen = NOW - timedelta(minutes=3)
    message, since = _waiting(10, due=12, processors_last_seen=last_seen, **NO_PROCESSOR)["no_processor"]
    assert "12 document(s) queued" in message and "kbingest processor" in message
    assert since == last_seen + timedelta(seconds=60)
    message, since = _waiting(10, due=1, processors_last_seen=None, **NO_PROCESSOR)["no_processor"]
    assert since == NOW - timedelta(minutes=10) and "ever registered" in message
    assert "no_processor" not in _alerts(queued=0, processors_alive=0)


def test_processor_not_ready_after_its_deadline() -> None:
    started = NOW - timedelta(minutes=5)
    message, since = _alerts(processors_not_ready=1, not_ready_started=started)["processor_not_ready"]
    assert since == started + timedelta(seconds=120) and "/readyz" in message


def test_queue_stalled_when_nothing_started_for_longer_than_the_threshold() -> None:
    oldest = NOW - timedelta(minutes=7)
    message, since = _waiting(7)["queue_stalled"]
    assert since == oldest + timedelta(seconds=300)
    assert "3 due document(s)" in message and "2 of 2 processor slot(s) are free" in message and "7 min" in message
    last_start = NOW - timedelta(minutes=6)
    moved_long_ago = _waiting(40, last_started_at=last_start, last_finished_at=last_start + timedelta(seconds=20))
    assert moved_long_ago["queue_stalled"][1] == last_start + timedelta(seconds=320)
    assert "queue_stalled" not in _waiting(2)


def test_a_long_waiting_but_moving_backlog_is_not_stalled() -> None:
    moving = _waiting(40, slots_busy=1, last_started_at=NOW - timedelta(seconds=3), utilization=0.9)
    assert "queue_stalled" not in moving
    assert moving == {}


def test_busy_slots_are_back_pressure_not_a_stall() -> None:
    # Two long documents hold both slots for 8 minutes: nothing starts, nothing is wrong.
    long_ago = NOW - timedelta(minutes=8)
    assert "queue_stalled" not in _waiting(8, slots_busy=2, last_started_at=long_ago, last_finished_at=long_ago)
    # One of them just ended: the free slot has been idle only since then.
    freed = _waiting(8, slots_busy=1, last_started_at=long_ago, last_finished_at=NOW - timedelta(seconds=2))
    assert "queue_stalled" not in freed
    # A processor that just became ready has not had the time to claim.
    fresh = _waiting(8, last_started_at=long_ago, last_finished_at=long_ago, last_ready_at=NOW - timedelta(seconds=1))
    assert "queue_stalled" not in fresh


def test_queue_stalled_needs_an_alive_processor() -> None:
    dead = _waiting(7, slots_total=0, **NO_PROCESSOR)
    assert "queue_stalled" not in dead and "no_processor" in dead
    assert "queue_stalled" not in _alerts(queued=3, queued_due=0, oldest_queued_since=None)


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
