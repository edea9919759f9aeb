"""Pipeline health computed from the database alone, so every API replica and the reconciler agree."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal, get_args

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.flow import Flow, read_flow
from shared.pipeline_report import (
    DatabaseHealth,
    OutboxHealth,
    PipelineAlert,
    PipelineReport,
    ProcessorSeen,
    ReconcilerHealth,
)
from shared.settings import Settings
from shared.vocabulary import STATUSES

# A processor whose last heartbeat is older than this is counted as gone (seed 000).
PROCESSOR_ALIVE_S: Final = 60.0
# Processors stopped or silent for longer than this are no longer listed.
PROCESSORS_LISTED_WINDOW_S: Final = 3600.0
PROCESSORS_LISTED_MAX: Final = 50
# The reconciler is "not running" after this many intervals without a completed pass (seed 003).
RECONCILER_MISSED_PASSES: Final = 3
CONNECTIONS_HIGH_RATIO: Final = 0.8
RECONCILER_STATE_NAME: Final = "reconciler"

AlertCode = Literal[
    "no_processor",
    "processor_not_ready",
    "queue_stalled",
    "unroutable_events",
    "dead_letters",
    "db_connections_high",
    "reconciler_not_running",
]
ALERT_CODES: Final[tuple[AlertCode, ...]] = get_args(AlertCode)

# Live rows by status and stage (one scan; tombstones excluded), user documents apart from build rows
# (docs/documents-change.md): a user counts documents, the queue counts both.
DOCUMENT_COUNTS: Final = text(
    """
    SELECT status, stage, parent_id IS NOT NULL AS build, count(*) AS n FROM documents
    WHERE deleted_at IS NULL GROUP BY status, stage, build
    """
)

# Pending = undelivered and not dead; its age counts only due rows (a delayed retry is not late).
OUTBOX: Final = text(
    """
    SELECT
      (SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL) AS pending,
      (SELECT min(created_at) FROM outbox
        WHERE delivered_at IS NULL AND dead_at IS NULL AND available_at <= now()) AS oldest_pending_at,
      (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL) AS dead,
      (SELECT min(dead_at) FROM outbox WHERE dead_at IS NOT NULL) AS dead_since,
      (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL AND dead_reason = 'unroutable') AS unroutable,
      (SELECT min(dead_at) FROM outbox WHERE dead_at IS NOT NULL AND dead_reason = 'unroutable') AS unroutable_since,
      (SELECT created_at FROM outbox ORDER BY seq LIMIT 1) AS first_event_at
    """
)

# Alive = not stopped and heartbeat within the window; not ready = alive, never ready, past its start-up deadline.
PROCESSOR_SUMMARY: Final = text(
    """
    WITH p AS (
      SELECT *, stopped_at IS NULL AND last_seen > now() - make_interval(secs => :alive_s) AS alive FROM processors
    )
    SELECT count(*) FILTER (WHERE alive) AS alive,
           count(*) FILTER (WHERE alive AND ready_at IS NOT NULL) AS ready,
           max(last_seen) AS last_seen,
           count(*) FILTER (WHERE alive AND ready_at IS NULL
                            AND started_at < now() - make_interval(secs => :deadline_s)) AS not_ready,
           min(started_at) FILTER (WHERE alive AND ready_at IS NULL
                                   AND started_at < now() - make_interval(secs => :deadline_s)) AS not_ready_started
    FROM p
    """
)

PROCESSORS_LISTED: Final = text(
    """
    SELECT id, hostname, pid, concurrency, started_at, ready_at, last_seen AS last_heartbeat, stopped_at,
           stopped_at IS NULL AND last_seen > now() - make_interval(secs => :alive_s) AS alive
    FROM processors
    WHERE stopped_at IS NULL OR last_seen > now() - make_interval(secs => :window_s)
    ORDER BY last_seen DESC LIMIT :limit
    """
)

RECONCILER: Final = text(
    """
    SELECT leader_id, leader_since, pass_started_at, pass_finished_at, passes, counts
    FROM reconciler_state WHERE name = :name
    """
)

# Client connections against the server's ceiling (seed 003: "too many clients").
CONNECTIONS: Final = text(
    """
    SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS in_use,
           current_setting('max_connections')::int AS max_connections, now() AS now
    """
)

STORED_ALERTS: Final = text("SELECT code, since FROM pipeline_alerts")


@dataclass(frozen=True)
class Facts:
    """Everything the alerts are computed from, read in one go."""

    now: datetime
    flow: Flow
    processors_alive: int
    processors_ready: int
    processors_last_seen: datetime | None
    processors_not_ready: int
    not_ready_started: datetime | None
    dead: int
    dead_since: datetime | None
    unroutable: int
    unroutable_since: datetime | None
    first_event_at: datetime | None
    connections_in_use: int
    max_connections: int
    reconciler_finished_at: datetime | None
    stored_since: dict[str, datetime] = field(default_factory=dict)

    @property
    def oldest_queued_age_s(self) -> float | None:
        if self.flow.oldest_queued_since is None:
            return None
        return max(0.0, (self.now - self.flow.oldest_queued_since).total_seconds())

    @property
    def queue_idle_since(self) -> datetime | None:
        """Since when due work and a free slot coexist with no attempt starting: None unless both exist now."""
        flow = self.flow
        if flow.oldest_queued_since is None or flow.slots_busy >= flow.slots_total:
            return None
        # A slot is free at the latest since an attempt ended or a processor became ready.
        moments = (flow.oldest_queued_since, flow.last_started_at, flow.last_finished_at, flow.last_ready_at)
        return max(moment for moment in moments if moment is not None)


def _ago(now: datetime, then: datetime) -> str:
    seconds = max(0, int((now - then).total_seconds()))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def _queue_stalled(facts: Facts, after_s: float) -> tuple[str, str, datetime] | None:
    """Due work and a free slot, yet nothing started for ``after_s``; a long wait behind busy slots is back-pressure."""
    idle_since = facts.queue_idle_since
    if not facts.processors_alive or idle_since is None or (facts.now - idle_since).total_seconds() <= after_s:
        return None
    flow = facts.flow
    return (
        "queue_stalled",
        f"{flow.queued_due} due document(s) wait and {flow.slots_total - flow.slots_busy} of {flow.slots_total} "
        f"processor slot(s) are free, but no attempt has started for {_ago(facts.now, idle_since)} "
        f"(threshold {after_s:g} s); check the processor logs and `kbingest doctor`",
        idle_since + timedelta(seconds=after_s),
    )


def reconciler_window_s(settings: Settings) -> float:
    """How long without a completed pass before the reconciler counts as not running."""
    return RECONCILER_MISSED_PASSES * settings.reconcile_interval_s


def compute_alerts(facts: Facts, settings: Settings) -> list[PipelineAlert]:
    """The active alerts, in a fixed order; ``since`` comes from the data where it can."""
    now = facts.now
    found: list[tuple[str, str, datetime | None]] = []
    if facts.flow.queued and not facts.processors_alive:
        last = facts.processors_last_seen
        since = facts.flow.oldest_queued_since
        if since is not None and last is not None:
            since = max(since, last + timedelta(seconds=PROCESSOR_ALIVE_S))
        seen = f"last processor heartbeat {_ago(now, last)} ago" if last else "no processor has ever registered"
        found.append(
            (
                "no_processor",
                f"{facts.flow.queued} document(s) queued and no processor heartbeat within {PROCESSOR_ALIVE_S:g} s "
                f"({seen}); start one: `kbingest processor`",
                since,
            )
        )
    if facts.processors_not_ready:
        started = facts.not_ready_started
        found.append(
            (
                "processor_not_ready",
                f"{facts.processors_not_ready} processor(s) registered but not ready after "
                f"{settings.processor_ready_deadline_s:g} s; see their /readyz for the failing dependency",
                started + timedelta(seconds=settings.processor_ready_deadline_s) if started else None,
            )
        )
    stalled = _queue_stalled(facts, settings.queue_stalled_after_s)
    if stalled is not None:
        found.append(stalled)
    if facts.unroutable:
        found.append(
            (
                "unroutable_events",
                f"{facts.unroutable} event(s) parked because no route matches their type; "
                "add a route (KBINGEST_RELAY_ROUTES) and replay them (`kbingest outbox replay`)",
                facts.unroutable_since,
            )
        )
    if facts.dead:
        found.append(
            (
                "dead_letters",
                f"{facts.dead} event(s) dead-lettered; inspect with `kbingest outbox dead`, fix, then replay",
                facts.dead_since,
            )
        )
    limit = CONNECTIONS_HIGH_RATIO * facts.max_connections
    if facts.connections_in_use > limit:
        found.append(
            (
                "db_connections_high",
                f"{facts.connections_in_use} of {facts.max_connections} PostgreSQL connections in use "
                f"(over {CONNECTIONS_HIGH_RATIO:.0%}); lower DB_MAX_CONNECTIONS / replicas or raise max_connections",
                None,
            )
        )
    window = reconciler_window_s(settings)
    finished = facts.reconciler_finished_at
    if finished is None or (now - finished).total_seconds() > window:
        when = f"last pass {_ago(now, finished)} ago" if finished else "no pass ever recorded"
        found.append(
            (
                "reconciler_not_running",
                f"no reconciler pass within {window:g} s ({when}); start one: `kbingest reconciler`",
                finished + timedelta(seconds=window) if finished else facts.first_event_at,
            )
        )
    return [
        PipelineAlert(code=code, message=message, since=since or facts.stored_since.get(code) or now)
        for code, message, since in found
    ]


@dataclass(frozen=True)
class Detail:
    """What the report lists beside the facts the alerts need."""

    counts_by_status: dict[str, int]
    counts_by_stage: dict[str, int]
    builds: dict[str, int]
    outbox: OutboxHealth
    processors: list[ProcessorSeen]
    reconciler: ReconcilerHealth


async def read_facts(conn: AsyncConnection, settings: Settings) -> tuple[Facts, Detail]:
    """Read the facts plus the detail the report lists (counts, processors, reconciler)."""
    by_status: dict[str, int] = dict.fromkeys(STATUSES, 0)
    by_stage: dict[str, int] = {}
    builds: dict[str, int] = {"queued": 0, "processing": 0}
    for row in (await conn.execute(DOCUMENT_COUNTS)).mappings():
        if row["build"]:
            # Finished builds are history (a retired generation, a replaced version): only work counts.
            if row["status"] in builds:
                builds[row["status"]] += int(row["n"])
            continue
        by_status[row["status"]] = by_status.get(row["status"], 0) + int(row["n"])
        if row["stage"] is not None:
            by_stage[row["stage"]] = by_stage.get(row["stage"], 0) + int(row["n"])
    flow = await read_flow(conn, alive_s=PROCESSOR_ALIVE_S)
    outbox = (await conn.execute(OUTBOX)).mappings().one()
    params = {"alive_s": PROCESSOR_ALIVE_S, "deadline_s": settings.processor_ready_deadline_s}
    procs = (await conn.execute(PROCESSOR_SUMMARY, params)).mappings().one()
    listed = (
        await conn.execute(
            PROCESSORS_LISTED,
            {"alive_s": PROCESSOR_ALIVE_S, "window_s": PROCESSORS_LISTED_WINDOW_S, "limit": PROCESSORS_LISTED_MAX},
        )
    ).mappings()
    reconciler = (await conn.execute(RECONCILER, {"name": RECONCILER_STATE_NAME})).mappings().one_or_none()
    db = (await conn.execute(CONNECTIONS)).mappings().one()
    stored = {row["code"]: row["since"] for row in (await conn.execute(STORED_ALERTS)).mappings()}
    facts = Facts(
        now=db["now"],
        flow=flow,
        processors_alive=int(procs["alive"]),
        processors_ready=int(procs["ready"]),
        processors_last_seen=procs["last_seen"],
        processors_not_ready=int(procs["not_ready"]),
        not_ready_started=procs["not_ready_started"],
        dead=int(outbox["dead"]),
        dead_since=outbox["dead_since"],
        unroutable=int(outbox["unroutable"]),
        unroutable_since=outbox["unroutable_since"],
        first_event_at=outbox["first_event_at"],
        connections_in_use=int(db["in_use"]),
        max_connections=int(db["max_connections"]),
        reconciler_finished_at=reconciler["pass_finished_at"] if reconciler else None,
        stored_since=stored,
    )
    detail = Detail(
        counts_by_status=by_status,
        counts_by_stage=by_stage,
        builds=builds,
        outbox=OutboxHealth(
            pending=int(outbox["pending"]),
            dead=facts.dead,
            unroutable=facts.unroutable,
            oldest_pending_age_s=_age_s(facts.now, outbox["oldest_pending_at"]),
        ),
        processors=[ProcessorSeen.model_validate(dict(p)) for p in listed],
        reconciler=_reconciler_health(reconciler, facts.now),
    )
    return facts, detail


def _age_s(now: datetime, then: datetime | None) -> float | None:
    return max(0.0, (now - then).total_seconds()) if then else None


def _reconciler_health(row: Any, now: datetime) -> ReconcilerHealth:
    if row is None:
        return ReconcilerHealth()
    return ReconcilerHealth(
        leader_id=row["leader_id"],
        leader_since=row["leader_since"],
        last_pass_started_at=row["pass_started_at"],
        last_pass_finished_at=row["pass_finished_at"],
        last_pass_age_s=_age_s(now, row["pass_finished_at"]),
        passes=int(row["passes"]),
        last_pass_counts=dict(row["counts"] or {}),
    )


async def pipeline_report(conn: AsyncConnection, settings: Settings) -> PipelineReport:
    """The whole ``GET /v1/pipeline`` body but ``supervisor``: counts, queue, outbox, processors, reconciler, alerts."""
    facts, detail = await read_facts(conn, settings)
    return PipelineReport(
        generated_at=facts.now,
        counts_by_status=detail.counts_by_status,
        counts_by_stage=detail.counts_by_stage,
        builds=detail.builds,
        queued_due=facts.flow.queued_due,
        oldest_queued_age_s=facts.oldest_queued_age_s,
        slots=facts.flow.slots,
        drain_rate_per_min=facts.flow.drain_rate_per_min,
        utilization=facts.flow.utilization,
        outbox=detail.outbox,
        processors=detail.processors,
        processors_alive=facts.processors_alive,
        processors_ready=facts.processors_ready,
        reconciler=detail.reconciler,
        database=DatabaseHealth(connections_in_use=facts.connections_in_use, max_connections=facts.max_connections),
        alerts=compute_alerts(facts, settings),
    )
