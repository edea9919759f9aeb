"""Retry timing: jittered exponential backoff and the subscriber's ``Retry-After``."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

# A subscriber may ask for a later retry, but not for longer than this.
RETRY_AFTER_CAP_S: Final = 3600.0


def backoff_s(attempt: int, *, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1-based): uniform in [step/2, step], step = base·2^(attempt-1) ≤ max.

    Half the step is kept so a retry never fires almost at once (tenacity's full jitter can),
    and the random half spreads replicas that failed together.
    """
    step = min(max_s, base_s * 2.0 ** max(0, attempt - 1))
    return (rng or random).uniform(step / 2.0, step)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks us to wait (delta-seconds or HTTP-date); None if absent/invalid."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delay = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, delay), RETRY_AFTER_CAP_S)


def retry_delay_s(
    attempt: int, retry_after_s: float | None, *, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """The backoff, or the subscriber's Retry-After when it asks for longer."""
    delay = backoff_s(attempt, base_s=base_s, max_s=max_s, rng=rng)
    return max(delay, retry_after_s) if retry_after_s is not None else delay
