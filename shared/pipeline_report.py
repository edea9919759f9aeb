"""The pipeline report's shape (``GET /v1/pipeline``): one model for the API, ``kbingest doctor`` and the reconciler.

Built by ``shared.pipeline_health.pipeline_report`` from the database; the field names are the contract's.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from shared.supervision import SupervisorStatus


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
    leader_id: str | None = None
    leader_since: datetime | None = None
    last_pass_started_at: datetime | None = None
    last_pass_finished_at: datetime | None = None
    last_pass_age_s: float | None = None
    passes: int = 0
    last_pass_counts: dict[str, int] = Field(default_factory=dict)


class DatabaseHealth(BaseModel):
    connections_in_use: int
    max_connections: int


class Slots(BaseModel):
    total: int = Field(description="work slots of alive, ready processors (their concurrency)")
    busy: int = Field(description="of those, slots holding a processing document")


class PipelineReport(BaseModel):
    generated_at: datetime
    counts_by_status: dict[str, int] = Field(description="user documents by status (build rows excluded)")
    counts_by_stage: dict[str, int] = Field(description="processing user documents by stage")
    builds: dict[str, int] = Field(
        description="hidden build rows (a replacement's new version, a re-index) queued or processing: "
        "they share the queue and the slots with documents"
    )
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

    def alert_codes(self) -> set[str]:
        return {alert.code for alert in self.alerts}


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
