"""The dispatch order of queued documents: priority, then round-robin across knowledge bases, then age.

Processors pull the next document in this order when a slot frees (``lifecycle.claim_next``);
``queue_position`` estimates where a queued document stands in it. Both read the order from here.
"""

from __future__ import annotations

from typing import Final

from shared.vocabulary import PRIORITIES


def priority_rank(column: str) -> str:
    """SQL for a priority's rank (0 = high first), from the one list of priorities."""
    whens = " ".join(f"WHEN '{name}' THEN {rank}" for rank, name in enumerate(PRIORITIES))
    return f"(CASE {column} {whens} ELSE {len(PRIORITIES)} END)"


# A due queued document is eligible; among them: highest priority, then the knowledge base served
# least recently (never served first), then oldest. The KB's ``last_dispatched_at`` moves on every
# claim, so a KB with one new upload goes ahead of another KB's 10,000-document backlog.
DUE: Final = "d.status = 'queued' AND d.deleted_at IS NULL AND d.available_at <= now()"
ORDER: Final = f"{priority_rank('d.priority')}, k.last_dispatched_at ASC NULLS FIRST, d.created_at, d.id"

# The next document in dispatch order, locked; SKIP LOCKED lets processors claim different ones at once.
NEXT_DUE: Final = f"""
    SELECT d.id, d.knowledge_base_id FROM documents AS d
    JOIN knowledge_bases AS k ON k.id = d.knowledge_base_id
    WHERE {DUE}
    ORDER BY {ORDER}
    LIMIT 1
    FOR UPDATE OF d SKIP LOCKED
"""
