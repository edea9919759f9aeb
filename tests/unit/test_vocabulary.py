"""The SQL speaks the vocabulary: every quoted word compared with a status/stage/state/priority/purpose
column in shared/ and services/ is one of shared/vocabulary.py's (a typo there matches no row, silently)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest

from services.relay import sql as relay_sql
from shared import vocabulary

ROOT = Path(__file__).resolve().parents[2]
WORDS: dict[str, frozenset[str]] = {
    "status": frozenset(vocabulary.STATUSES + vocabulary.VERSION_STATUSES),
    "stage": frozenset(vocabulary.STAGES),
    # index_generations.state, and what the relay's claim SQL calls a delivery's state (its Action).
    "state": frozenset(vocabulary.GENERATION_STATES + get_args(relay_sql.Action)),
    "priority": frozenset(vocabulary.PRIORITIES),
    "purpose": frozenset(vocabulary.BUILD_PURPOSES),
}
# ``b.status = 'ready'``, ``status <> 'deleting'``, ``d.status IN ('queued', 'processing')``, ``SET status = 'failed'``
COMPARED = re.compile(
    r"\b(?:\w+\.)?(status|stage|state|priority|purpose)\s*(?:=|<>|!=|(?:NOT\s+)?IN)\s*\(?\s*('[a-z_]+'(?:\s*,\s*'[a-z_]+')*)"
)
SOURCES = sorted(p for folder in ("shared", "services") for p in (ROOT / folder).rglob("*.py"))


def test_the_scan_sees_sql() -> None:
    found = [m for path in SOURCES for m in COMPARED.finditer(path.read_text())]
    assert len(found) > 50, "the pattern no longer matches the project's SQL"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_quoted_status_word_is_in_the_vocabulary(path: Path) -> None:
    text = path.read_text()
    unknown = [
        (column, word, text.count("\n", 0, match.start()) + 1)
        for match in COMPARED.finditer(text)
        for column in [match.group(1)]
        for word in re.findall(r"'([a-z_]+)'", match.group(2))
        if word not in WORDS[column]
    ]
    assert unknown == []
