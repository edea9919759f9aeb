"""A backlog of 2,000 small documents on the local stack drains with no dead letter and no alarm.

Busy processors are back-pressure, never a failure: no delivery is dead-lettered, and neither
``queue_stalled`` nor ``dead_letters`` ever shows in ``/v1/pipeline`` while the backlog drains.
"""

from __future__ import annotations

import pytest

from tests.support import backlog
from tests.support.up_process import running_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.xdist_group("flow-big-backlog")]

BACKLOG = 2000
# ~0.4 s of work per document on 2 slots is ~7 min; slack for 2 cores shared with other suites.
DRAIN_TIMEOUT_S = 2700.0
FALSE_ALARMS = {"queue_stalled", "dead_letters"}


@pytest.mark.timeout(3600)
def test_a_2000_document_backlog_drains_without_dead_letters_or_alerts() -> None:
    with running_up() as up, up.client(timeout=300) as client:
        kb = backlog.create_kb(client, "big-backlog")
        ids, _batches = backlog.upload_batches(client, kb, backlog.small_documents(BACKLOG))
        drained, alerts = backlog.wait_drained(client, [kb], len(ids), DRAIN_TIMEOUT_S)
        counts = backlog.kb_counts(client, kb)
        dead = backlog.dead_letters(up.pg_dsn, [kb])
    assert drained, f"not drained after {DRAIN_TIMEOUT_S:g}s: {counts}"
    assert alerts & FALSE_ALARMS == set(), alerts
    assert dead == 0
    assert counts.get("ready") == BACKLOG, counts
