"""The queue position formula and the ETA rule, without a database (the claim order itself: tests/integration/db)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.queue_position import RATE_WINDOW_S, Lane, Queued, eta_s, positions

T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
A, B, C = (uuid.UUID(int=n) for n in (1, 2, 3))


def _lane(kb: uuid.UUID, rank: int, count: int, *, served: datetime | None = None, head_s: int = 0) -> Lane:
    return Lane(kb, rank, count, (T0 + timedelta(seconds=head_s), uuid.UUID(int=100 + head_s)), served)


def _doc(kb: uuid.UUID, rank: int, ahead: int, *, served: datetime | None = None, created_s: int = 50) -> Queued:
    return Queued(uuid.uuid4(), kb, rank, ahead, T0 + timedelta(seconds=created_s), served)


def test_round_robin_gives_each_kb_one_turn_per_round() -> None:
    # A was served an hour ago, B never: B goes first in each round, and C (never served, newer head) after it.
    lanes = [_lane(A, 1, 10, served=T0), _lane(B, 1, 2, head_s=1), _lane(C, 1, 5, head_s=2)]
    third_of_a = _doc(A, 1, 2, served=T0)
    first_of_c = _doc(C, 1, 0, created_s=2)
    got = positions(lanes, [third_of_a, first_of_c])
    # Before A's third: B's two (capped by its count), C's first three (rounds 0-2 come before A), A's two.
    assert got[third_of_a.id] == 2 + 3 + 2
    assert got[first_of_c.id] == 1


def test_never_served_kbs_take_turns_by_their_oldest_document_then_its_id() -> None:
    same_time = T0 + timedelta(seconds=7)
    lanes = [Lane(A, 1, 3, (same_time, uuid.UUID(int=9)), None), Lane(B, 1, 3, (same_time, uuid.UUID(int=8)), None)]
    first_of_a = Queued(uuid.UUID(int=9), A, 1, 0, same_time, None)
    assert positions(lanes, [first_of_a])[first_of_a.id] == 1


def test_higher_priorities_go_first_and_leave_their_kbs_at_the_back() -> None:
    # A never served, but serving its high document moves it behind C (served long ago).
    lanes = [_lane(A, 0, 1), _lane(A, 1, 3), _lane(C, 1, 3, served=T0)]
    a_first_normal = _doc(A, 1, 0)
    assert positions(lanes, [a_first_normal])[a_first_normal.id] == 1 + 1


def test_a_document_in_backoff_stands_where_it_would_once_due() -> None:
    lanes = [_lane(B, 1, 4, head_s=5)]
    older_than_b = _doc(A, 1, 0, created_s=1)
    newer_than_b = _doc(A, 1, 0, created_s=9)
    got = positions(lanes, [older_than_b, newer_than_b])
    assert (got[older_than_b.id], got[newer_than_b.id]) == (0, 1)


@pytest.mark.parametrize(
    ("position", "started", "free_slots", "due_in_s", "expected"),
    [
        (30, 60, 0, -5.0, 30 * RATE_WINDOW_S / 60),  # the recent start rate
        (0, 60, 0, -5.0, 0.0),
        (3, 60, 0, 120.0, 120.0),  # not before its backoff ends
        (1, 0, 2, -1.0, 0.0),  # nothing started lately, but a free slot takes it at once
        (2, 0, 2, -1.0, None),  # nothing started lately and no free slot: unknown
        (1, 0, 2, 30.0, 30.0),
        (0, 0, 0, -1.0, None),
    ],
)
def test_eta(position: int, started: int, free_slots: int, due_in_s: float, expected: float | None) -> None:
    assert eta_s(position, started=started, free_slots=free_slots, due_in_s=due_in_s) == expected
