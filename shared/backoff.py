"""Jittered exponential backoff for reconnect and retry loops."""

from __future__ import annotations

import random


def backoff_s(attempt: int, *, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1-based): uniform in [step/2, step], step = base·2^(attempt-1) ≤ max.

    Half the step is kept so a retry never fires almost at once, and the random half spreads
    replicas that failed together.
    """
    step = min(max_s, base_s * 2.0 ** max(0, attempt - 1))
    return (rng or random).uniform(step / 2.0, step)  # jitter, not security
