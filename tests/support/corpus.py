"""Where the shared test corpus is (``../shared/corpus`` beside the checkout), and what its absence means.

A developer's checkout without it skips the corpus tests; CI must not pass without them, so
``.ci/run`` sets ``KBINGEST_REQUIRE_CORPUS=1`` and a missing corpus fails those tests instead.
"""

from __future__ import annotations

import os
from typing import Final, NoReturn

import pytest

from tests.support.servers import CORPUS

MANIFEST: Final = CORPUS / "manifest.json"
REQUIRE_ENV: Final = "KBINGEST_REQUIRE_CORPUS"


def corpus_missing(what: str) -> NoReturn:
    """Skip the test, or fail it when the run requires the corpus (CI)."""
    reason = f"{what} not found at {CORPUS}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: the corpus tests must run here)", pytrace=False)
    pytest.skip(reason)
