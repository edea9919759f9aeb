"""The UI's document statuses and stages (services/api/ui/static/vocabulary.js), generated from
``shared.vocabulary``: the UI is plain ES modules without a build step, so the words are a committed
file, never a hand-kept copy.

``python -m tests.support.ui_vocabulary`` rewrites it; tests/unit/api/test_ui_vocabulary.py fails while
the file differs from what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

from shared.vocabulary import STAGES, STATUSES

ROOT: Final = Path(__file__).resolve().parents[2]
MODULE: Final = ROOT / "services" / "api" / "ui" / "static" / "vocabulary.js"
HEADER: Final = (
    "// Generated from shared/vocabulary.py by `python -m tests.support.ui_vocabulary`: do not edit.\n"
    "// tests/unit/api/test_ui_vocabulary.py fails while this file differs from what that writes.\n"
)
# (exported name, what it is, its values in order)
EXPORTS: Final[tuple[tuple[str, str, tuple[str, ...]], ...]] = (
    ("STATUSES", "A document's status.", STATUSES),
    ("STAGES", "A processing document's stage, in the order the processor goes through them.", STAGES),
)


def generated() -> str:
    blocks = [
        f"// {about}\nexport const {name} = [{', '.join(repr(value) for value in values)}];\n"
        for name, about, values in EXPORTS
    ]
    return HEADER + "".join(f"\n{block}" for block in blocks)


if __name__ == "__main__":
    MODULE.write_text(generated())
    sys.stdout.write(f"wrote {MODULE.relative_to(ROOT)}\n")
