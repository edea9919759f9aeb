"""The relay loop's own wake-up times for events it put back (no servers, no clock)."""

from __future__ import annotations

from services.relay.wakeups import DueTimes


def test_the_wait_ends_when_the_first_put_back_event_is_due() -> None:
    due = DueTimes(1.0, resolution_s=0.05)
    assert due.wait_s(100.0) == 1.0, "nothing put back: the poll interval"
    due.add(0.33, now=100.0)
    due.add(0.21, now=100.0)
    assert abs(due.wait_s(100.0) - 0.25) < 1e-9, "rounded up to the grid, never early"
    assert due.wait_s(100.3) == 0.0, "already due: no sleep"


def test_delays_beyond_the_poll_interval_are_left_to_the_poll() -> None:
    due = DueTimes(1.0)
    due.add(5.0, now=0.0)
    due.add(1.0, now=0.0)
    assert len(due) == 0 and due.wait_s(0.0) == 1.0


def test_a_burst_of_jittered_re_offers_costs_a_few_entries() -> None:
    due = DueTimes(1.0, resolution_s=0.05)
    for i in range(1000):
        due.add(0.2 + 0.3 * i / 1000, now=10.0)
    assert len(due) <= 7


def test_due_entries_are_dropped_before_a_drain() -> None:
    due = DueTimes(1.0, resolution_s=0.05)
    due.add(0.1, now=0.0)
    due.add(0.6, now=0.0)
    due.take_due(0.3)
    assert len(due) == 1 and abs(due.wait_s(0.3) - 0.3) < 1e-9
    due.add(0.3, now=0.3)  # same grid point as the one left: kept once
    assert len(due) == 1
