"""The domain's words, once: every status, stage, priority and state a row or a message can hold.

Each is a ``Literal`` (the type mypy checks end to end) plus the tuple of its values (for CHECK
constraints in shared/models.py, the JSON Schemas in shared/events.py, counters and the CLI).
Event types are shared/events.py's ``EventType``; error codes are shared/errors.py's ``ErrorCode``.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

# documents.status; a build row (parent_id set) goes through the same ones.
Status = Literal["queued", "processing", "ready", "failed", "deleting"]
# What an event's ``data.status`` may say besides: the document is gone.
EventStatus = Literal[Status, "deleted"]
# documents.stage while processing, in the order the processor goes through them.
Stage = Literal["downloading", "extracting", "chunking", "embedding", "indexing"]
# documents.priority, highest first (the dispatch order of shared/queue.py).
Priority = Literal["high", "normal", "low"]
# documents.purpose of a build row (docs/documents-change.md).
BuildPurpose = Literal["replace", "reindex"]
# document_versions.status.
VersionStatus = Literal["pending", "active", "failed", "superseded", "retained", "purged"]
# A replacement's build as the API shows it beside the active version (never ready: then it is active).
PendingStatus = Literal["queued", "processing", "failed"]
# index_generations.state.
GenerationState = Literal["active", "building", "retired", "cancelled"]

STATUSES: Final[tuple[Status, ...]] = get_args(Status)
EVENT_STATUSES: Final[tuple[EventStatus, ...]] = get_args(EventStatus)
STAGES: Final[tuple[Stage, ...]] = get_args(Stage)
PRIORITIES: Final[tuple[Priority, ...]] = get_args(Priority)
BUILD_PURPOSES: Final[tuple[BuildPurpose, ...]] = get_args(BuildPurpose)
VERSION_STATUSES: Final[tuple[VersionStatus, ...]] = get_args(VersionStatus)
GENERATION_STATES: Final[tuple[GenerationState, ...]] = get_args(GenerationState)


def sql_in(column: str, values: tuple[str, ...]) -> str:
    """``column IN ('a', 'b')`` for a SQL constant or a CHECK constraint (the values are ours, never input)."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"
