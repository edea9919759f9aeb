"""From delivery outcomes to row updates: retry with backoff, busy re-offers, dead letters, multi-subscriber state."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from services.relay.backoff import busy_delay_s, retry_delay_s
from services.relay.delivery import Outcome
from services.relay.sql import Action, ClaimedEvent, DeliveryState, DeliveryUpdate, Settlement
from shared.redact import redact_text, redact_url

UNROUTABLE: Final = "unroutable"
REJECTED: Final = "rejected"
MAX_ATTEMPTS: Final = "max_attempts"

StepState = Literal["delivered", "busy", "retry", "dead", "release"]


@dataclass(frozen=True)
class RetryPolicy:
    """Attempt budget and backoff shape (RELAY_MAX_ATTEMPTS, RELAY_BACKOFF_BASE_S, RELAY_BACKOFF_MAX_S)."""

    max_attempts: int
    base_s: float
    max_s: float
    rng: random.Random | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One subscriber's state after one attempt outcome (``busy`` and ``release`` leave ``attempts`` as it was)."""

    state: StepState
    attempts: int
    delay_s: float = 0.0
    reason: str | None = None
    error: dict[str, Any] | None = None


def _error(subscriber: str, attempt: int, outcome: Outcome, delay_s: float | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "attempt": attempt,
        "subscriber": redact_url(subscriber),
        "status": outcome.status,
        "error": redact_text(outcome.error or outcome.kind),
    }
    if delay_s is not None:
        record["retry_in_s"] = round(delay_s, 3)
    return record


def step(subscriber: str, attempts: int, outcome: Outcome, policy: RetryPolicy) -> Step:
    """Apply one outcome to a subscriber that had ``attempts`` attempts before this one."""
    attempt = attempts + 1
    if outcome.kind == "release":
        return Step("release", attempts)
    if outcome.kind == "busy":
        # Back-pressure is not a failure (DESIGN invariant 8): no attempt spent, no error history,
        # so no number of 429s can lead to a dead letter.
        return Step("busy", attempts, busy_delay_s(outcome.retry_after_s, rng=policy.rng))
    if outcome.kind == "delivered":
        return Step("delivered", attempt)
    if outcome.kind == "rejected":
        return Step("dead", attempt, reason=REJECTED, error=_error(subscriber, attempt, outcome, None))
    if attempt >= policy.max_attempts:
        return Step("dead", attempt, reason=MAX_ATTEMPTS, error=_error(subscriber, attempt, outcome, None))
    delay = retry_delay_s(attempt, outcome.retry_after_s, base_s=policy.base_s, max_s=policy.max_s, rng=policy.rng)
    return Step("retry", attempt, delay, error=_error(subscriber, attempt, outcome, delay))


def _parked(event: ClaimedEvent, reason: str, message: str) -> Settlement:
    """A dead letter decided without a request (the claim's count is given back: nothing was sent)."""
    error = {
        "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "attempt": event.attempts,
        "subscriber": None,
        "status": None,
        "error": message,
    }
    return Settlement(event.seq, "dead", event.attempts, reason=reason, error=error)


def unroutable(event: ClaimedEvent) -> Settlement:
    """Parked, not dropped: visible as a dead letter until a route exists and it is replayed."""
    return _parked(
        event, UNROUTABLE, f"no route for event type {event.type!r} (set KBINGEST_RELAY_ROUTES, then replay)"
    )


def exhausted(event: ClaimedEvent, policy: RetryPolicy) -> Settlement | None:
    """A dead letter for an event whose attempts were all spent by claims that never settled.

    Only relays that died (or lost their lease) mid-delivery leave the count at the budget: every
    recorded failure at the budget is dead already. Without this, an event that kills every relay
    that sends it would be sent forever.
    """
    if event.attempts < policy.max_attempts:
        return None
    message = f"no outcome recorded for {event.attempts} attempts: the relay stopped or lost its lease mid-delivery"
    return _parked(event, MAX_ATTEMPTS, message)


def single(event: ClaimedEvent, subscriber: str, outcome: Outcome, policy: RetryPolicy) -> tuple[Settlement, Step]:
    """Single-route fast path: the outbox row carries the delivery state."""
    result = step(subscriber, event.attempts, outcome, policy)
    action = _row_action(result.state)
    return Settlement(event.seq, action, result.attempts, result.delay_s, result.reason, result.error), result


def multi(
    event: ClaimedEvent,
    subscribers: Sequence[str],
    stored: Mapping[str, DeliveryState],
    outcomes: Mapping[str, Outcome],
    policy: RetryPolicy,
) -> tuple[Settlement, list[DeliveryUpdate], dict[str, Step]]:
    """Several routes: each subscriber keeps its own state; the row is done when every one is done."""
    updates: list[DeliveryUpdate] = []
    steps: dict[str, Step] = {}
    finals: list[DeliveryState] = []
    first_error: dict[str, Any] | None = None
    for url in subscribers:
        state = stored.get(url, DeliveryState(url))
        outcome = outcomes.get(url)
        if outcome is None or outcome.kind == "release":
            finals.append(state)
            continue
        result = steps[url] = step(url, state.attempts, outcome, policy)
        action = _row_action(result.state)
        assert action != "release"
        updates.append(
            DeliveryUpdate(event.seq, url, action, result.attempts, result.delay_s, result.reason, result.error)
        )
        first_error = first_error or result.error
        finals.append(
            DeliveryState(
                url,
                result.attempts,
                delivered=result.state == "delivered",
                dead=result.state == "dead",
                dead_reason=result.reason,
                wait_s=result.delay_s,
            )
        )
    attempts = max((s.attempts for s in finals), default=event.attempts)
    if all(s.delivered for s in finals):
        return Settlement(event.seq, "delivered", attempts), updates, steps
    waiting = [s for s in finals if not s.delivered and not s.dead]
    if waiting:
        delay = min(s.wait_s for s in waiting)
        # While pending, the row counts the attempts of what is still to deliver (as for one route),
        # so claims that never settle reach the budget (``exhausted``) and a subscriber that is done
        # after many attempts does not.
        pending = max(s.attempts for s in waiting)
        return Settlement(event.seq, "retry", pending, delay, error=first_error), updates, steps
    reason = next(s.dead_reason for s in finals if s.dead) or MAX_ATTEMPTS
    return Settlement(event.seq, "dead", attempts, reason=reason, error=first_error), updates, steps


def _row_action(state: StepState) -> Action:
    """A busy subscriber's row is written like a retry: due again after the delay, attempts unchanged."""
    return "retry" if state == "busy" else state
