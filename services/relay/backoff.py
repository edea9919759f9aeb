"""Retry timing: jittered exponential backoff for failures, a short re-offer for busy subscribers."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

from shared.backoff import backoff_s

# A subscriber may ask for a later retry, but not for longer than this.
RETRY_AFTER_CAP_S: Final = 3600.0
# A busy subscriber (429) is back-pressure, not a failure: its event is re-offered within about a
# second whatever Retry-After says, so a slot that frees up is not left idle behind a long wait.
BUSY_RETRY_MAX_S: Final = 1.0
# Without Retry-After: uniform in this window, so subscribers that were busy together are not
# all re-offered in the same instant.
BUSY_RETRY_DEFAULT_S: Final = (0.2, 0.5)
# Retry-After: 0 must not turn the relay and a busy subscriber into a hot loop.
BUSY_RETRY_FLOOR_S: Final = 0.05
BUSY_JITTER_S: Final = 0.1


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks us to wait (delta-seconds or HTTP-date); None if absent/invalid.

    Whatever a subscriber sends must not raise: this runs on every answer, inside the delivery loop.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    # str.isdigit() alone also accepts "²", "٣" or "１２", which float() rejects or misreads.
    if value.isascii() and value.isdigit():
        return min(float(value), RETRY_AFTER_CAP_S)
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delay = (when - (now or datetime.now(UTC))).total_seconds()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, delay), RETRY_AFTER_CAP_S)


def retry_delay_s(
    attempt: int, retry_after_s: float | None, *, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """The backoff, or the subscriber's Retry-After when it asks for longer."""
    delay = backoff_s(attempt, base_s=base_s, max_s=max_s, rng=rng)
    return max(delay, retry_after_s) if retry_after_s is not None else delay


def busy_delay_s(retry_after_s: float | None, *, rng: random.Random | None = None) -> float:
    """Delay before re-offering an event to a busy subscriber: never more than ~BUSY_RETRY_MAX_S.

    Retry-After is honoured up to the cap; the jitter is added on top so the event never comes
    back earlier than asked (below the cap).
    """
    uniform = (rng or random).uniform
    if retry_after_s is None:
        return uniform(*BUSY_RETRY_DEFAULT_S)
    return min(max(retry_after_s, BUSY_RETRY_FLOOR_S), BUSY_RETRY_MAX_S) + uniform(0.0, BUSY_JITTER_S)
