"""How work flows through the pipeline: queue depth, processor slots, drain rate and slot utilization.

Read in one statement so ``GET /v1/pipeline``, the reconciler's gauges and its history samples agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.pipeline_report import PipelineSample, Slots

# Drain rate and utilization look back this far: long enough to smooth one slow document, short
# enough that a stopped queue shows within minutes.
FLOW_WINDOW_S: Final = 300.0
# The health page's charts cover at most a day; older samples are pruned.
HISTORY_MAX_MINUTES: Final = 1440

# Processors count from ready until stopped, silent (last heartbeat) or now. ``alive`` is the same
# rule as shared.pipeline_health's (passed in as :alive_s). Busy slot-seconds: attempts overlapping the
# window on a registered processor, an open attempt counting until now (or the processor's end)
# only while its lease is current, so an attempt left open by a deleted document counts nothing.
# Drained: attempts that ended in the window with a final outcome (a retry or rescue requeues).
FLOW: Final = text(
    """
    WITH win AS (SELECT now() - make_interval(secs => :window_s) AS t0, now() AS t1),
    procs AS (
      SELECT id, concurrency, ready_at,
             stopped_at IS NULL AND last_seen > now() - make_interval(secs => :alive_s) AS alive,
             CASE WHEN stopped_at IS NOT NULL THEN stopped_at
                  WHEN last_seen > now() - make_interval(secs => :alive_s) THEN now()
                  ELSE last_seen END AS up_until
      FROM processors WHERE ready_at IS NOT NULL
    ),
    queue AS (
      SELECT count(*) FILTER (WHERE status = 'queued') AS queued,
             count(*) FILTER (WHERE status = 'queued' AND available_at <= now()) AS queued_due,
             min(greatest(available_at, updated_at))
               FILTER (WHERE status = 'queued' AND available_at <= now()) AS oldest_queued_since,
             count(*) FILTER (WHERE status = 'processing') AS processing
      FROM documents WHERE status IN ('queued', 'processing') AND deleted_at IS NULL
    ),
    capacity AS (
      SELECT coalesce(sum(p.concurrency) FILTER (WHERE p.alive), 0) AS slots_total,
             max(p.ready_at) FILTER (WHERE p.alive) AS last_ready_at,
             coalesce(sum(p.concurrency * greatest(0, extract(epoch FROM
               least(p.up_until, w.t1) - greatest(p.ready_at, w.t0)))), 0)::float8 AS slot_s
      FROM procs AS p, win AS w
    ),
    busy AS (
      SELECT count(*) AS n FROM documents AS d JOIN procs AS p ON p.id = d.lease_owner
      WHERE p.alive AND d.status = 'processing' AND d.deleted_at IS NULL
    ),
    worked AS (
      SELECT coalesce(sum(greatest(0, extract(epoch FROM
               least(coalesce(a.finished_at, w.t1), p.up_until) - greatest(a.started_at, w.t0)))), 0)::float8 AS busy_s
      FROM document_attempts AS a JOIN procs AS p ON p.id = a.lease_owner, win AS w
      WHERE a.finished_at > w.t0
         OR (a.finished_at IS NULL AND EXISTS (
               SELECT 1 FROM documents AS d
               WHERE d.id = a.document_id AND d.status = 'processing' AND d.lease_epoch = a.lease_epoch))
    )
    SELECT q.queued, q.queued_due, q.oldest_queued_since, q.processing,
           c.slots_total, least(b.n, c.slots_total) AS slots_busy, c.last_ready_at, c.slot_s, k.busy_s,
           (SELECT count(*) FROM document_attempts, win
             WHERE finished_at > win.t0 AND outcome IN ('ready', 'failed')) AS drained,
           (SELECT max(started_at) FROM document_attempts) AS last_started_at,
           (SELECT max(finished_at) FROM document_attempts) AS last_finished_at
    FROM queue AS q, capacity AS c, busy AS b, worked AS k
    """
)

# The samples of the last :minutes, oldest first (the primary key on ``at`` serves the range).
HISTORY: Final = text(
    """
    SELECT at, queued, queued_due, processing, slots_total, slots_busy, drain_rate_per_min, utilization
    FROM pipeline_samples WHERE at > now() - make_interval(mins => :minutes) ORDER BY at
    """
)


def utilization(busy_s: float, slot_s: float) -> float | None:
    """Busy slot-seconds over available slot-seconds, in [0, 1]; None without any capacity."""
    if slot_s <= 0:
        return None
    return min(1.0, max(0.0, busy_s / slot_s))


@dataclass(frozen=True)
class Flow:
    """The queue and the slots now, plus the last moments the queue moved (for ``queue_stalled``)."""

    queued: int
    queued_due: int
    oldest_queued_since: datetime | None
    processing: int
    slots_total: int
    slots_busy: int
    drain_rate_per_min: float
    utilization: float | None
    last_started_at: datetime | None = None
    last_finished_at: datetime | None = None
    last_ready_at: datetime | None = None

    @property
    def slots(self) -> Slots:
        return Slots(total=self.slots_total, busy=self.slots_busy)

    def sample(self) -> dict[str, Any]:
        """The columns of a ``pipeline_samples`` row."""
        keep = ("queued", "queued_due", "processing", "slots_total", "slots_busy", "drain_rate_per_min", "utilization")
        return {name: value for name, value in asdict(self).items() if name in keep}


async def read_flow(conn: AsyncConnection, *, alive_s: float, window_s: float = FLOW_WINDOW_S) -> Flow:
    """The flow now; ``alive_s`` is the heartbeat age after which a processor no longer counts."""
    row = (await conn.execute(FLOW, {"alive_s": alive_s, "window_s": window_s})).mappings().one()
    return Flow(
        queued=int(row["queued"]),
        queued_due=int(row["queued_due"]),
        oldest_queued_since=row["oldest_queued_since"],
        processing=int(row["processing"]),
        slots_total=int(row["slots_total"]),
        slots_busy=int(row["slots_busy"]),
        drain_rate_per_min=int(row["drained"]) * 60.0 / window_s,
        utilization=utilization(float(row["busy_s"]), float(row["slot_s"])),
        last_started_at=row["last_started_at"],
        last_finished_at=row["last_finished_at"],
        last_ready_at=row["last_ready_at"],
    )


async def flow_history(conn: AsyncConnection, *, minutes: int) -> list[PipelineSample]:
    """Recorded samples of the last ``minutes``, oldest first."""
    return [
        PipelineSample.model_validate(dict(row))
        for row in (await conn.execute(HISTORY, {"minutes": minutes})).mappings()
    ]
