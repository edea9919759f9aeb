"""The UI's statuses and stages are shared/vocabulary.py's, through one generated module (vocabulary.js)."""

from __future__ import annotations

from tests.support import ui_vocabulary


def test_the_ui_vocabulary_module_is_generated() -> None:
    assert ui_vocabulary.MODULE.read_text() == ui_vocabulary.generated(), (
        "services/api/ui/static/vocabulary.js is stale: run `python -m tests.support.ui_vocabulary`"
    )


def test_no_other_ui_file_spells_the_lists_out() -> None:
    static = ui_vocabulary.MODULE.parent
    for name, _, values in ui_vocabulary.EXPORTS:
        for path in static.rglob("*.js"):
            if path != ui_vocabulary.MODULE:
                text = path.read_text()
                assert f"'{values[0]}', '{values[1]}'" not in text, f"{path.relative_to(static)} copies {name}"
