"""docs/deploy.md §6 shows what ``shared.connection_budget`` computes, not a hand-kept copy of it."""

from __future__ import annotations

from tests.support import budget_docs


def test_deploy_doc_budget_tables_are_generated() -> None:
    text = budget_docs.DEPLOY_DOC.read_text()
    assert budget_docs.rewrite(text) == text, "docs/deploy.md §6 is stale: run `python -m tests.support.budget_docs`"


def test_the_tables_count_the_dedicated_sessions() -> None:
    generated = budget_docs.generated()
    for session in ("SSE LISTEN", "heartbeat", "presence lock", "leader lock"):
        assert session in generated
