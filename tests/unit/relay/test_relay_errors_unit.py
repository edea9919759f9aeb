"""An exception while delivering or resolving one request is settled as a failed attempt of its
events; the rest of the batch, and the relay, go on (no servers)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from services.relay import outcomes
from services.relay.batch import run_batch
from services.relay.delivery import MayStart, Outcome
from services.relay.dispatch import Dispatcher, Result
from services.relay.metrics import RelayMetrics
from services.relay.outcomes import RetryPolicy
from services.relay.routes import Router
from services.relay.sql import ClaimedEvent, DeliveryState

URL = "http://sub/v1/events"
POLICY = RetryPolicy(max_attempts=3, base_s=1.0, max_s=10.0, rng=random.Random(3))


def event(n: int, attempts: int = 0) -> ClaimedEvent:
    body = json.dumps({"id": f"e{n}"}).encode()
    return ClaimedEvent(n, f"e{n}", "document.uploaded", f"agg{n}", body, attempts, time.time())


async def _no_deliveries(_seqs: Sequence[int]) -> dict[int, dict[str, DeliveryState]]:
    return {}


def dispatcher() -> Dispatcher:
    return Dispatcher(
        router=Router({"document.*": [URL]}),
        batch_subscribers=[],
        batch_max=100,
        sender=Sender(),
        policy=POLICY,
        metrics=RelayMetrics(CollectorRegistry()),
        load_deliveries=_no_deliveries,
    )


class Sender:
    """Answers 503 to every event but ``e2``, whose request raises (a bug, an unreadable answer)."""

    def capacity(self, url: str) -> int:
        return 2

    def pipeline_depth(self, url: str) -> int:
        return 1  # one event per request: each event's own outcome is what these tests look at

    async def deliver(self, url: str, events: Sequence[ClaimedEvent], *, may_start: MayStart) -> list[Outcome]:
        if any(e.id == "e2" for e in events):
            raise RuntimeError("could not read the answer")
        return [Outcome("retry", 503, "HTTP 503")] * len(events)


async def _settle_all(events: list[ClaimedEvent]) -> dict[int, outcomes.Settlement]:
    settled: dict[int, outcomes.Settlement] = {}

    async def settle(result: Result) -> None:
        settled.update((s.seq, s) for s in result.settlements)

    await run_batch(events, dispatcher=dispatcher(), deliverer=Sender(), may_start=lambda: True, settle=settle)
    return settled


async def test_a_request_that_raises_is_a_failed_attempt_of_its_events() -> None:
    settled = await _settle_all([event(1), event(2, attempts=1), event(3, attempts=2)])
    rows = {seq: (s.action, s.attempts) for seq, s in settled.items()}
    # The exception spends an attempt like a 503 (and can end in a dead letter); it does not escape.
    assert rows == {1: ("retry", 1), 2: ("retry", 2), 3: ("dead", 3)}
    error = settled[2].error
    assert error is not None and error["status"] is None
    assert error["error"] == "relay error: RuntimeError: could not read the answer"


async def test_an_outcome_that_cannot_be_resolved_is_a_failed_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    real = outcomes.single
    broken = {1}

    def single(event: ClaimedEvent, subscriber: str, outcome: Outcome, policy: RetryPolicy):  # type: ignore[no-untyped-def]
        if event.seq in broken:
            broken.discard(event.seq)
            raise KeyError("a bug in the outcome rules")
        return real(event, subscriber, outcome, policy)

    monkeypatch.setattr(outcomes, "single", single)
    settled = await _settle_all([event(1), event(3)])
    assert (settled[1].action, settled[1].attempts) == ("retry", 1)
    assert settled[1].error is not None and "KeyError" in settled[1].error["error"]
    assert (settled[3].action, settled[3].attempts) == ("retry", 1), "the other events are resolved as usual"
