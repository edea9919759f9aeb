"""``kbingest status``: a queued document's place reads as in the UI ("queued · 37 ahead · ~2 min")."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from services.cli.status import documents_table, queue_label
from tests.support.queue_labels import CASES


@pytest.mark.parametrize(("doc", "expected"), CASES, ids=[label or "none" for _, label in CASES])
def test_queue_label(doc: dict[str, Any], expected: str) -> None:
    assert queue_label(doc) == expected


def test_status_table_shows_the_place_of_queued_documents() -> None:
    base = {"stage": None, "chunk_count": None, "error": None, "updated_at": "2026-12-05T10:00:00+00:00"}
    documents = [
        {**base, "id": "d1", "filename": "waiting.pdf", "status": "queued", "queue_position": 37, "eta_s": 118.0},
        {**base, "id": "d2", "filename": "started.pdf", "status": "processing", "queue_position": None, "eta_s": None},
    ]
    console = Console(width=200, record=True)
    console.print(documents_table({"name": "kb", "counts": {"queued": 1, "processing": 1}}, documents))
    lines = console.export_text().splitlines()
    assert "queued · 37 ahead · ~2 min" in next(line for line in lines if "waiting.pdf" in line)
    assert "ahead" not in next(line for line in lines if "started.pdf" in line)
