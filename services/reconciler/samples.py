"""One pipeline sample per leader pass (the health page's charts), and the pruning of old ones."""

from __future__ import annotations

from collections import Counter
from typing import Final

from sqlalchemy import text

from shared.db import Database
from shared.flow import HISTORY_MAX_MINUTES, read_flow
from shared.pipeline_health import PROCESSOR_ALIVE_S

# Two leaders can't pass at the same instant, but a duplicate ``at`` must not fail the step.
RECORD_SAMPLE: Final = text(
    """
    INSERT INTO pipeline_samples (queued, queued_due, processing, slots_total, slots_busy, drain_rate_per_min,
                                  utilization)
    VALUES (:queued, :queued_due, :processing, :slots_total, :slots_busy, :drain_rate_per_min, :utilization)
    ON CONFLICT (at) DO NOTHING
    """
)

# Samples older than the longest history the API serves.
PRUNE_SAMPLES: Final = text("DELETE FROM pipeline_samples WHERE at < now() - make_interval(mins => :minutes)")


async def record_sample(db: Database) -> Counter[str]:
    """Write this pass's sample and drop those past the history window.

    Counts nothing: once a day of samples exists every pass prunes one, which is not news for the pass log.
    """
    async with db.transaction() as conn:
        flow = await read_flow(conn, alive_s=PROCESSOR_ALIVE_S)
        await conn.execute(RECORD_SAMPLE, flow.sample())
        await conn.execute(PRUNE_SAMPLES, {"minutes": HISTORY_MAX_MINUTES})
    return Counter()
