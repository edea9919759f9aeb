"""Pipeline health: the same answer from every API replica, computed from the database."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from services.api.deps import CurrentKey, StateDep, require_unscoped
from services.api.routes.responses import error_responses
from shared.flow import HISTORY_MAX_MINUTES, flow_history
from shared.pipeline import pipeline_report
from shared.supervision import SupervisorStatus, read_status, status_path_from_env

router = APIRouter(tags=["pipeline"])


class PipelineAlert(BaseModel):
    code: str
    message: str
    since: datetime


class OutboxHealth(BaseModel):
    pending: int
    dead: int
    unroutable: int
    oldest_pending_age_s: float | None


class ProcessorSeen(BaseModel):
    id: str
    hostname: str
    pid: int
    concurrency: int
    started_at: datetime
    ready_at: datetime | None
    last_heartbeat: datetime
    stopped_at: datetime | None
    alive: bool


class ReconcilerHealth(BaseModel):
    leader_id: str | None
    leader_since: datetime | None
    last_pass_started_at: datetime | None
    last_pass_finished_at: datetime | None
    last_pass_age_s: float | None
    passes: int
    last_pass_counts: dict[str, int]


class DatabaseHealth(BaseModel):
    connections_in_use: int
    max_connections: int


class Slots(BaseModel):
    total: int = Field(description="work slots of alive, ready processors (their concurrency)")
    busy: int = Field(description="of those, slots holding a processing document")


class Pipeline(BaseModel):
    generated_at: datetime
    counts_by_status: dict[str, int]
    counts_by_stage: dict[str, int]
    queued_due: int
    oldest_queued_age_s: float | None
    slots: Slots
    drain_rate_per_min: float = Field(description="documents finished (ready or failed) per minute, last 5 minutes")
    utilization: float | None = Field(
        description="busy slot-seconds / available slot-seconds over the last 5 minutes; null without processors"
    )
    outbox: OutboxHealth
    processors: list[ProcessorSeen]
    processors_alive: int
    processors_ready: int
    reconciler: ReconcilerHealth
    database: DatabaseHealth
    alerts: list[PipelineAlert]
    supervisor: SupervisorStatus | None = Field(
        None, description="`kbingest up`'s restarts of its processes; null when the API does not run under `up`"
    )


@router.get("/v1/pipeline", response_model=Pipeline, responses=error_responses(503))
async def pipeline(key: CurrentKey, state: StateDep) -> dict[str, Any]:
    """Counts, queue age, outbox, processors, the reconciler's last pass and active alerts (docs/operations.md)."""
    require_unscoped(key)
    async with state.db.transaction() as conn:
        report = await pipeline_report(conn, state.settings)
    # `up` hands its status file to the processes it starts; any other API has no such variable.
    return {**report, "supervisor": read_status(status_path_from_env(os.environ))}


class PipelineSample(BaseModel):
    at: datetime
    queued: int
    queued_due: int
    processing: int
    slots_total: int
    slots_busy: int
    drain_rate_per_min: float
    utilization: float | None


class PipelineHistory(BaseModel):
    items: list[PipelineSample]


@router.get("/v1/pipeline/history", response_model=PipelineHistory, responses=error_responses(422, 503))
async def pipeline_history(
    key: CurrentKey, state: StateDep, minutes: Annotated[int, Query(ge=1, le=HISTORY_MAX_MINUTES)] = 60
) -> dict[str, Any]:
    """The reconciler's samples (one per pass) of the last ``minutes``, oldest first: the health page's charts."""
    require_unscoped(key)
    async with state.db.transaction() as conn:
        return {"items": await flow_history(conn, minutes=minutes)}
