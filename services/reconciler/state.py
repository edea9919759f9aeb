"""The reconciler's own rows: the last completed pass, and when each active alert was first seen."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from services.reconciler import queries
from shared.pipeline_health import RECONCILER_STATE_NAME


async def record_pass(conn: AsyncConnection, *, leader_id: str, duration_s: float, counts: Mapping[str, int]) -> None:
    """Mark a completed pass so every API replica can tell the reconciler runs (seed 003)."""
    await conn.execute(
        queries.RECORD_PASS,
        {
            "name": RECONCILER_STATE_NAME,
            "leader_id": leader_id,
            "duration_s": duration_s,
            "counts": json.dumps(dict(counts)),
        },
    )


async def sync_alerts(conn: AsyncConnection, alerts: Sequence[Mapping[str, Any]]) -> None:
    """Remember first-seen times of active alerts; forget cleared ones."""
    for alert in alerts:
        await conn.execute(queries.UPSERT_ALERT, {"code": alert["code"], "since": alert["since"]})
    await conn.execute(queries.CLEAR_ALERTS, {"codes": [alert["code"] for alert in alerts]})
