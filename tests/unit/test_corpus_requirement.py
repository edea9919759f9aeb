"""A missing ../shared/corpus skips the corpus tests on a developer's machine and fails them in CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.corpus import REQUIRE_ENV, corpus_missing


def test_missing_corpus_skips_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="corpus not found"):
        corpus_missing("corpus")


def test_missing_corpus_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_ENV):
        corpus_missing("corpus")


def test_ci_requires_the_corpus() -> None:
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert f"export {REQUIRE_ENV}=1" in ci
    assert ci.rstrip().endswith("make lint\nmake test"), "CI runs the README's commands"
