"""The UI's formatting of a queued document's place (format.js ``queueLabel``), run in Chromium.

The cases are the CLI's too (tests/support/queue_labels.py): ``kbingest status`` reads the same.
"""

from __future__ import annotations

from typing import Any

import pytest

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
