"""Deliverer against an in-memory poster (httpx models), and the outcome → row-update rules (no servers)."""

from __future__ import annotations

import json
import random
import time

import httpx

from services.relay import outcomes
from services.relay.backoff import BUSY_JITTER_S, BUSY_RETRY_MAX_S
from services.relay.delivery import BATCH_CONTENT_TYPE, Deliverer, Outcome
from services.relay.outcomes import RetryPolicy
from services.relay.sql import ClaimedEvent, DeliveryState
from shared.signing import verify
from tests.support.relay_helpers import MockPoster

SECRET = "unit-secret"
POLICY = RetryPolicy(max_attempts=3, base_s=1.0, max_s=10.0, rng=random.Random(3))


def event(n: int, attempts: int = 0) -> ClaimedEvent:
    body = json.dumps({"id": f"e{n}", "type": "document.uploaded", "data": {"n": n}}).encode()
    return ClaimedEvent(n, f"e{n}", "document.uploaded", "agg", body, attempts, time.time())


def deliverer(handler, **options) -> Deliverer:  # type: ignore[no-untyped-def]
    return Deliverer(MockPoster(handler), secret=SECRET, concurrency=4, **options)


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
        "e3": httpx.Response(429, headers={"Retry-After": "2"}),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        event_id = request.headers["x-kbingest-event-id"]
        if event_id == "e4":
            raise httpx.ConnectError("refused", request=request)
        if event_id == "e5":
            raise httpx.ReadTimeout("slow", request=request)
        return answers[event_id]

    results = await deliverer(handler).deliver("http://sub", [event(i) for i in range(1, 6)], may_start=lambda: True)
    assert [r.kind for r in results] == ["retry", "rejected", "busy", "retry", "retry"]
    assert results[0].retry_after_s == 5.0 and results[1].error == "HTTP 400: bad event"
    assert (results[2].status, results[2].retry_after_s) == (429, 2.0)
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
        statuses = {"e2": 503, "e4": 429}
        results = [{"id": e["id"], "status": statuses.get(e["id"], 200)} for e in batch if e["id"] != "e3"]
        return httpx.Response(200, json={"results": results})

    subject = deliverer(handler, batch_subscribers=["http://batch"])
    first = await subject.deliver("http://batch", [event(1), event(2), event(4)], may_start=lambda: True)
    second = await subject.deliver("http://batch", [event(3)], may_start=lambda: True)
    assert [len(b) for b in bodies] == [3, 1], "a batch subscriber always gets arrays"
    assert [r.kind for r in first + second] == ["delivered", "retry", "busy", "retry"]
    assert second[0].error == "event missing from the batch response"


async def test_a_whole_batch_answered_429_is_busy() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "1"})

    subject = deliverer(handler, batch_subscribers=["http://batch"])
    results = await subject.deliver("http://batch", [event(1), event(2)], may_start=lambda: True)
    assert [(r.kind, r.retry_after_s) for r in results] == [("busy", 1.0), ("busy", 1.0)]


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


def test_busy_is_never_an_attempt_nor_a_dead_letter() -> None:
    busy = Outcome("busy", 429, "HTTP 429", None)
    # Far past the budget of 3: a 429 still spends nothing and leaves the error history alone.
    for attempts in (0, 2, 50):
        row, result = outcomes.single(event(1, attempts=attempts), "u", busy, POLICY)
        assert (row.action, row.attempts, row.error, row.reason) == ("retry", attempts, None, None)
        assert result.state == "busy" and 0 < row.delay_s <= BUSY_RETRY_MAX_S + BUSY_JITTER_S
    capped, _ = outcomes.single(event(1), "u", Outcome("busy", 429, "HTTP 429", 3600.0), POLICY)
    assert capped.delay_s <= BUSY_RETRY_MAX_S + BUSY_JITTER_S, "Retry-After is honoured only up to the cap"
    # A genuine failure after any number of busy answers is the first attempt, with backoff.
    failed, _ = outcomes.single(event(1), "u", Outcome("retry", 503, "HTTP 503"), POLICY)
    assert (failed.action, failed.attempts) == ("retry", 1) and failed.delay_s >= POLICY.base_s / 2


def test_multi_route_busy_subscriber_waits_shortly_while_the_other_delivers() -> None:
    busy = Outcome("busy", 429, "HTTP 429", None)
    row, updates, steps = outcomes.multi(event(1), ("a", "b"), {}, {"a": Outcome("delivered", 200), "b": busy}, POLICY)
    # While pending, the row counts the attempts of what is still to deliver: b has spent none.
    assert (row.action, row.attempts, row.error) == ("retry", 0, None)
    assert 0 < row.delay_s <= BUSY_RETRY_MAX_S + BUSY_JITTER_S, "the row is due again as soon as b may be"
    by_url = {u.subscriber: u for u in updates}
    assert (by_url["a"].state, by_url["a"].attempts) == ("delivered", 1)
    assert (by_url["b"].state, by_url["b"].attempts, by_url["b"].error) == ("retry", 0, None)
    assert steps["b"].state == "busy"
    # b had one real failure before; being busy keeps that count and never dead-letters it.
    stored = {"a": DeliveryState("a", attempts=1, delivered=True), "b": DeliveryState("b", attempts=2)}
    row, updates, _ = outcomes.multi(event(1), ("a", "b"), stored, {"b": busy}, POLICY)
    assert row.action == "retry" and (updates[0].state, updates[0].attempts) == ("retry", 2)
    row, updates, _ = outcomes.multi(event(1), ("a", "b"), stored, {"b": Outcome("delivered", 202)}, POLICY)
    assert row.action == "delivered" and updates[0].attempts == 3


def test_only_claims_that_never_settled_exhaust_an_event() -> None:
    assert outcomes.exhausted(event(1, attempts=POLICY.max_attempts - 1), POLICY) is None
    dead = outcomes.exhausted(event(1, attempts=POLICY.max_attempts), POLICY)
    assert dead is not None and (dead.action, dead.reason, dead.attempts) == ("dead", "max_attempts", 3)
    # A subscriber done after the whole budget leaves the row at the count of the one still waiting,
    # so the next claim does not take the row for exhausted.
    stored = {"a": DeliveryState("a", attempts=POLICY.max_attempts, dead=True, dead_reason="max_attempts")}
    row, _, _ = outcomes.multi(event(1), ("a", "b"), stored, {"b": Outcome("retry", 503, "HTTP 503")}, POLICY)
    assert (row.action, row.attempts) == ("retry", 1)
    assert outcomes.exhausted(event(1, attempts=row.attempts), POLICY) is None


class PacedPoster(MockPoster):
    """Answers 200, each request taking ``pace_s`` on a fake clock (a server answering pipelined requests in turn)."""

    def __init__(self) -> None:
        super().__init__(lambda _request: httpx.Response(200))
        self.pace_s = 0.0
        self.now = 0.0

    async def post(self, url, body, headers, *, timeout_s):  # type: ignore[no-untyped-def]
        self.now += self.pace_s
        return await super().post(url, body, headers, timeout_s=timeout_s)


async def test_pipelines_are_only_as_deep_as_the_subscriber_answers_in_a_share_of_the_timeout() -> None:
    url = "http://sub/v1/events"
    poster = PacedPoster()
    sender = Deliverer(
        poster, secret=SECRET, concurrency=2, pipeline_depth=16, request_timeout_s=4.0, monotonic=lambda: poster.now
    )
    assert sender.pipeline_depth(url) == 1, "one request at a time until the subscriber has answered"
    await sender.deliver(url, [event(1)], may_start=lambda: True)
    assert sender.pipeline_depth(url) == 16, "a fast subscriber: the full depth"

    # 0.2 s per answer: a quarter of the 4 s timeout holds 5 of them; a slower pace counts at once.
    poster.pace_s = 0.2
    await sender.deliver(url, [event(2), event(3)], may_start=lambda: True)
    assert sender.pipeline_depth(url) == 5
    poster.pace_s = 1.5
    await sender.deliver(url, [event(4)], may_start=lambda: True)
    assert sender.pipeline_depth(url) == 1, "slower than a quarter of the timeout per answer: no pipelining"

    # Fast again: the depth comes back over a few exchanges, not at once.
    poster.pace_s = 0.01
    await sender.deliver(url, [event(5)], may_start=lambda: True)
    assert sender.pipeline_depth(url) == 1
    for n in range(20):
        await sender.deliver(url, [event(10 + n)], may_start=lambda: True)
    assert sender.pipeline_depth(url) == 16
    assert Deliverer(poster, secret=SECRET, concurrency=2).pipeline_depth(url) == 1, "RELAY_PIPELINE_DEPTH=1"
