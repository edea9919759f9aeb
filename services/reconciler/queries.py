"""The reconciler's named SQL: scans (each locks one row, SKIP LOCKED), prunes and its own state."""

from __future__ import annotations

from typing import Final

from sqlalchemy import text

from shared.lifecycle import _COLS as DOCUMENT_COLUMNS

# An event of this aggregate is still on its way, or was written within the grace period.
_EVENT_IN_FLIGHT: Final = """
    EXISTS (SELECT 1 FROM outbox o WHERE o.aggregate_id = d.id
            AND ((o.delivered_at IS NULL AND o.dead_at IS NULL)
                 OR o.created_at > now() - make_interval(secs => :grace_s)))
"""

# The reconciler's latest event of this type found no route (seed 002) or its subscriber refused it
# (``rejected``: a 4xx such as 401 after a secret rotation): another one would only be refused too and add a
# dead letter per pass. The dead_letters alert and a replay take over.
_REEMIT_REFUSED: Final = """
    COALESCE((SELECT o.dead_reason IN ('unroutable', 'rejected') FROM outbox o
              WHERE o.aggregate_id = d.id AND o.type = :event_type AND o.payload ->> 'source' = :source
              ORDER BY o.seq DESC LIMIT 1), false)
"""

# Back-off per document: its latest event must be older than the grace doubled for each of the reconciler's
# events of this type that died (capped), so a subscriber that keeps failing sees fewer events, not a storm.
_REEMIT_BACKING_OFF: Final = """
    EXISTS (SELECT 1 FROM outbox o WHERE o.aggregate_id = d.id
            AND o.created_at > now() - make_interval(secs => LEAST(CAST(:backoff_max_s AS float8),
                :grace_s * power(2.0, LEAST(:max_doublings,
                  (SELECT count(*) FROM outbox r WHERE r.aggregate_id = d.id AND r.type = :event_type
                   AND r.payload ->> 'source' = :source AND r.dead_at IS NOT NULL))))))
"""

# The stalest processing document whose heartbeat is older than STALE_AFTER; a row a holder is updating is skipped.
STALE_PROCESSING: Final = text(
    """
    SELECT id, lease_epoch, lease_owner FROM documents
    WHERE status = 'processing' AND heartbeat_at < now() - make_interval(secs => :stale_s)
    ORDER BY heartbeat_at LIMIT 1
    FOR UPDATE SKIP LOCKED
    """
)

# The processing documents of processors whose presence lock is gone (shared.presence); locked rows are skipped.
ORPHANED_PROCESSING: Final = text(
    """
    SELECT id, lease_epoch, lease_owner FROM documents
    WHERE status = 'processing' AND lease_owner = ANY(:owners)
    ORDER BY heartbeat_at LIMIT 1
    FOR UPDATE SKIP LOCKED
    """
)

# An event of this aggregate reached (or may still reach) its subscribers, or was written within the grace.
_EVENT_NOT_DEAD: Final = """
    EXISTS (SELECT 1 FROM outbox o WHERE o.aggregate_id = d.id
            AND (o.dead_at IS NULL OR o.created_at > now() - make_interval(secs => :grace_s)))
"""

# A due queued document whose every event was dead-lettered (or that has none) for longer than the
# grace, backed off and not refused: no processor was ever told. A delivered event is enough: processors
# pull queued documents in dispatch order, so a document waiting behind a backlog gets no new event.
# Build rows are skipped: their events are their document's (or none), and processors poll for them.
LOST_DISPATCH: Final = text(
    f"""
    SELECT {DOCUMENT_COLUMNS} FROM documents d
    WHERE d.status = 'queued' AND d.deleted_at IS NULL AND d.available_at <= now() AND d.parent_id IS NULL
      AND d.updated_at < now() - make_interval(secs => :grace_s)
      AND NOT {_EVENT_NOT_DEAD} AND NOT {_REEMIT_BACKING_OFF} AND NOT {_REEMIT_REFUSED}
    ORDER BY d.available_at LIMIT 1
    FOR UPDATE OF d SKIP LOCKED
    """
)

# A deletion with no delete event in flight for longer than the (backed-off) grace, not refused: the purge
# never ran or died. A cancelled build has no event: processors purge it as they poll.
STUCK_DELETE: Final = text(
    f"""
    SELECT d.id FROM documents d
    WHERE d.status = 'deleting' AND d.deleted_at IS NULL AND d.parent_id IS NULL
      AND d.updated_at < now() - make_interval(secs => :grace_s)
      AND NOT {_EVENT_IN_FLIGHT} AND NOT {_REEMIT_BACKING_OFF} AND NOT {_REEMIT_REFUSED}
    ORDER BY d.updated_at LIMIT 1
    FOR UPDATE OF d SKIP LOCKED
    """
)

DB_NOW: Final = text("SELECT now()")

# Of these keys, the ones a live row (or one tombstoned within the grace) still owns, or a kept content
# version names (a retained previous version, a failed replacement: docs/documents-change.md).
OWNED_KEYS: Final = text(
    """
    SELECT object_key FROM documents
    WHERE object_key = ANY(:keys) AND (deleted_at IS NULL OR deleted_at > now() - make_interval(secs => :grace_s))
    UNION
    SELECT object_key FROM document_versions
    WHERE object_key = ANY(:keys) AND status NOT IN ('purged', 'superseded')
    """
)

# Documents that will still read their object, created before the listing started, whose key falls in the
# listed page (after, upto]; NULL bounds are open. COLLATE "C" compares bytes, as S3 orders its keys.
ACTIVE_OBJECTS: Final = text(
    """
    SELECT id, object_key, lease_epoch FROM documents
    WHERE status IN ('queued', 'processing') AND deleted_at IS NULL AND created_at < :listed_at
      AND (CAST(:after AS text) IS NULL OR object_key COLLATE "C" > CAST(:after AS text))
      AND (CAST(:upto AS text) IS NULL OR object_key COLLATE "C" <= CAST(:upto AS text))
    ORDER BY created_at LIMIT :limit
    """
)

# Where the paged orphan sweep resumes; no row yet (a first pass) reads as the bucket's beginning.
SWEEP_CURSOR: Final = text("SELECT sweep_after FROM reconciler_state WHERE name = :name")

# Remembers the sweep's position for the next pass (and the next leader); creates the row on a first pass.
SAVE_SWEEP_CURSOR: Final = text(
    """
    INSERT INTO reconciler_state (name, leader_id, sweep_after) VALUES (:name, :leader_id, :after)
    ON CONFLICT (name) DO UPDATE SET sweep_after = EXCLUDED.sweep_after
    """
)

# One batch of delivered events past the retention (ix_outbox_delivered); deliveries cascade.
PRUNE_OUTBOX: Final = text(
    """
    DELETE FROM outbox WHERE seq IN (
      SELECT seq FROM outbox WHERE delivered_at < now() - make_interval(secs => :retention_s)
      ORDER BY delivered_at LIMIT :batch FOR UPDATE SKIP LOCKED)
    """
)

# One batch of dead letters past their own retention (ix_outbox_dead); the dead_letters alert shows them until then.
PRUNE_DEAD: Final = text(
    """
    DELETE FROM outbox WHERE seq IN (
      SELECT seq FROM outbox WHERE dead_at < now() - make_interval(secs => :retention_s)
      ORDER BY dead_at LIMIT :batch FOR UPDATE SKIP LOCKED)
    """
)

# One batch of processor inbox rows past the retention (their events can no longer be redelivered).
PRUNE_INBOX: Final = text(
    """
    DELETE FROM processor_inbox WHERE event_id IN (
      SELECT event_id FROM processor_inbox WHERE received_at < now() - make_interval(secs => :retention_s)
      ORDER BY received_at LIMIT :batch FOR UPDATE SKIP LOCKED)
    """
)

# Records a completed pass; leader_since restarts when another replica took over.
RECORD_PASS: Final = text(
    """
    INSERT INTO reconciler_state (name, leader_id, leader_since, pass_started_at, pass_finished_at, passes, counts)
    VALUES (:name, :leader_id, now(), now() - make_interval(secs => :duration_s), now(), 1, CAST(:counts AS jsonb))
    ON CONFLICT (name) DO UPDATE SET
      leader_id = EXCLUDED.leader_id,
      leader_since = CASE WHEN reconciler_state.leader_id = EXCLUDED.leader_id
                          THEN reconciler_state.leader_since ELSE now() END,
      pass_started_at = EXCLUDED.pass_started_at,
      pass_finished_at = EXCLUDED.pass_finished_at,
      passes = reconciler_state.passes + 1,
      counts = EXCLUDED.counts
    """
)

# Keeps the first-seen time of each active alert; cleared alerts are forgotten.
UPSERT_ALERT: Final = text(
    """
    INSERT INTO pipeline_alerts (code, since, last_seen_at) VALUES (:code, :since, now())
    ON CONFLICT (code) DO UPDATE SET last_seen_at = now()
    """
)
CLEAR_ALERTS: Final = text("DELETE FROM pipeline_alerts WHERE NOT (code = ANY(:codes))")
