"""Deliverer against httpx.MockTransport, and the outcome → row-update rules (no servers)."""

from __future__ import annotations

import json
import random
import time

import httpx

from services.relay import outcomes
from services.relay.claim import ClaimedEvent, DeliveryState
from services.relay.delivery import BATCH_CONTENT_TYPE, Deliverer, Outcome
from services.relay.outcomes import RetryPolicy
from shared.subscriber import verify

SECRET = "unit-secret"
POLICY = RetryPolicy(max_attempts=3, base_s=1.0, max_s=10.0, rng=random.Random(3))


def event(n: int, attempts: int = 0) -> ClaimedEvent:
    body = json.dumps({"id": f"e{n}", "type": "document.uploaded", "data": {"n": n}}).encode()
    return ClaimedEvent(n, f"e{n}", "document.uploaded", "agg", body, attempts, time.time())


def deliverer(handler, **options) -> Deliverer:  # type: ignore[no-untyped-def]
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return Deliverer(client, secret=SECRET, concurrency=4, **options)


async def test_single_delivery_is_signed_with_event_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        verify(SECRET, dict(request.headers), request.content)
        return httpx.Response(202)

    results = await deliverer(handler).deliver("http://sub/v1/events", [event(1), event(2)], may_start=lambda: True)
    assert [r.kind for r in results] == ["delivered", "delivered"]
    assert {r.headers["x-kbingest-event-id"] for r in seen} == {"e1", "e2"}
    assert all(r.headers["content-type"] == "application/cloudevents+json" for r in seen)


async def test_failures_are_classified() -> None:
    answers = {
        "e1": httpx.Response(503, headers={"Retry-After": "5"}),
        "e2": httpx.Response(400, text="bad event"),
        "e3": httpx.Response(429),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        event_id = request.headers["x-kbingest-event-id"]
        if event_id == "e4":
            raise httpx.ConnectError("refused", request=request)
        if event_id == "e5":
            raise httpx.ReadTimeout("slow", request=request)
        return answers[event_id]

    results = await deliverer(handler).deliver("http://sub", [event(i) for i in range(1, 6)], may_start=lambda: True)
    assert [r.kind for r in results] == ["retry", "rejected", "retry", "retry", "retry"]
    assert results[0].retry_after_s == 5.0 and results[1].error == "HTTP 400: bad event"
    assert "connection error" in (results[3].error or "") and "timeout" in (results[4].error or "")


async def test_requests_that_may_not_start_are_released_not_sent() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200)

    results = await deliverer(handler).deliver("http://sub", [event(1)], may_start=lambda: False)
    assert results == [Outcome.release()] and calls == 0


async def test_batch_mode_posts_arrays_and_reads_per_event_results() -> None:
    bodies: list[list[dict[str, object]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"] == BATCH_CONTENT_TYPE
        verify(SECRET, dict(request.headers), request.content)
        batch = json.loads(request.content)
        bodies.append(batch)
        results = [{"id": e["id"], "status": 503 if e["id"] == "e2" else 200} for e in batch if e["id"] != "e3"]
        return httpx.Response(200, json={"results": results})

    subject = deliverer(handler, batch_subscribers=["http://batch"])
    first = await subject.deliver("http://batch", [event(1), event(2)], may_start=lambda: True)
    second = await subject.deliver("http://batch", [event(3)], may_start=lambda: True)
    assert [len(b) for b in bodies] == [2, 1], "a batch subscriber always gets arrays"
    assert [r.kind for r in first + second] == ["delivered", "retry", "retry"]
    assert second[0].error == "event missing from the batch response"


def test_single_route_outcomes_become_row_updates() -> None:
    delivered, _ = outcomes.single(event(1), "u", Outcome("delivered", 200), POLICY)
    assert (delivered.action, delivered.attempts, delivered.error) == ("delivered", 1, None)
    retry, _ = outcomes.single(event(1, attempts=1), "u", Outcome("retry", 503, "HTTP 503", 30.0), POLICY)
    assert (retry.action, retry.attempts, retry.delay_s) == ("retry", 2, 30.0)
    assert retry.error is not None and retry.error["subscriber"] == "u" and retry.error["retry_in_s"] == 30.0
    dead, _ = outcomes.single(event(1, attempts=2), "u", Outcome("retry", 503, "HTTP 503"), POLICY)
    assert (dead.action, dead.reason, dead.attempts) == ("dead", "max_attempts", 3)
    rejected, _ = outcomes.single(event(1), "u", Outcome("rejected", 400, "HTTP 400"), POLICY)
    assert (rejected.action, rejected.reason) == ("dead", "rejected")
    released, _ = outcomes.single(event(1, attempts=1), "u", Outcome.release(), POLICY)
    assert (released.action, released.attempts) == ("release", 1)
    parked = outcomes.unroutable(event(1))
    assert (parked.action, parked.reason) == ("dead", "unroutable")


def test_multi_route_row_is_done_only_when_every_subscriber_is() -> None:
    stored = {"a": DeliveryState("a", attempts=1, delivered=True)}
    row, updates, _ = outcomes.multi(event(1), ("a", "b"), stored, {"b": Outcome("retry", 503, "x")}, POLICY)
    assert row.action == "retry" and [u.subscriber for u in updates] == ["b"] and updates[0].state == "retry"
    row, updates, _ = outcomes.multi(event(1), ("a", "b"), stored, {"b": Outcome("delivered", 200)}, POLICY)
    assert row.action == "delivered" and updates[0].state == "delivered"
    row, _, _ = outcomes.multi(event(1), ("a", "b"), stored, {"b": Outcome("rejected", 410, "gone")}, POLICY)
    assert (row.action, row.reason) == ("dead", "rejected")
    waiting = {"b": DeliveryState("b", attempts=1, wait_s=4.0)}
    row, updates, _ = outcomes.multi(event(1), ("a", "b"), waiting, {"a": Outcome("delivered", 200)}, POLICY)
    assert (row.action, row.delay_s, len(updates)) == ("retry", 4.0, 1)
