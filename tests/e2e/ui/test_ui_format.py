"""The UI's formatting (format.js), run in Chromium: a queued document's place (``queueLabel``) and the
statuses and stages it shows, which are shared/vocabulary.py's.

The queue cases are the CLI's too (tests/support/queue_labels.py): ``kbingest status`` reads the same.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.vocabulary import STAGES, STATUSES
from tests.support import browser as b
from tests.support.queue_labels import CASES

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

RUN = """async (docs) => {
    const { queueLabel } = await import('/ui/format.js');
    return docs.map(queueLabel);
}"""


def test_queue_labels(page: Any) -> None:
    got = b.serve_ui_files(page).evaluate(RUN, [doc for doc, _ in CASES])
    assert got == [label for _, label in CASES]


VOCABULARY = """async () => {
    const { stageLabel, countsSummary } = await import('/ui/format.js');
    const { STAGES, STATUSES } = await import('/ui/vocabulary.js');
    const counts = Object.fromEntries(STATUSES.map((s, i) => [s, i + 1]));
    return { stages: STAGES, statuses: STATUSES, labels: STAGES.map(stageLabel), summary: countsSummary(counts) };
}"""


def test_statuses_and_stages_are_the_servers(page: Any) -> None:
    """The UI's words are shared/vocabulary.py's, in its order (vocabulary.js is generated from it)."""
    got = b.serve_ui_files(page).evaluate(VOCABULARY)
    assert got["stages"] == list(STAGES) and got["statuses"] == list(STATUSES)
    assert got["labels"] == [f"{stage} ({n} of {len(STAGES)})" for n, stage in enumerate(STAGES, 1)]
    assert got["summary"] == " · ".join(f"{n} {status}" for n, status in enumerate(STATUSES, 1))
