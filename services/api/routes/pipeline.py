"""Pipeline health: the same answer from every API replica, computed from the database."""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Query

from services.api.deps import CurrentKey, StateDep, require_unscoped
from services.api.routes.responses import error_responses
from shared.flow import HISTORY_MAX_MINUTES, flow_history
from shared.pipeline_health import pipeline_report
from shared.pipeline_report import PipelineHistory, PipelineReport
from shared.supervision import read_status, status_path_from_env

router = APIRouter(tags=["pipeline"])


@router.get("/v1/pipeline", response_model=PipelineReport, responses=error_responses(503))
async def pipeline(key: CurrentKey, state: StateDep) -> PipelineReport:
    """Counts, queue age, outbox, processors, the reconciler's last pass and active alerts (docs/operations.md)."""
    require_unscoped(key)
    async with state.db.transaction() as conn:
        report = await pipeline_report(conn, state.settings)
    # `up` hands its status file to the processes it starts; any other API has no such variable.
    return report.model_copy(update={"supervisor": read_status(status_path_from_env(os.environ))})


@router.get("/v1/pipeline/history", response_model=PipelineHistory, responses=error_responses(422, 503))
async def pipeline_history(
    key: CurrentKey, state: StateDep, minutes: Annotated[int, Query(ge=1, le=HISTORY_MAX_MINUTES)] = 60
) -> PipelineHistory:
    """The reconciler's samples (one per pass) of the last ``minutes``, oldest first: the health page's charts."""
    require_unscoped(key)
    async with state.db.transaction() as conn:
        return PipelineHistory(items=await flow_history(conn, minutes=minutes))
