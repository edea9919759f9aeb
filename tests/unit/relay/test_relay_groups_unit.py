"""Any-of subscriber groups: parsing, rotation, failover within a delivery, cool-down (in-memory poster, fake clock)."""

from __future__ import annotations

import json
import time
from collections import Counter as Tally

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from services.relay.delivery import Deliverer
from services.relay.groups import COOLDOWN_BASE_S, AnyOf, batch_endpoints, endpoints, is_batch
from services.relay.metrics import RelayMetrics
from services.relay.sql import ClaimedEvent
from shared.settings import Settings
from tests.support.relay_helpers import MockPoster

A, B, C = "http://a/v1/events", "http://b/v1/events", "http://c/v1/events"
GROUP = f"{A}|{B}"


def event(n: int) -> ClaimedEvent:
    body = json.dumps({"id": f"e{n}", "type": "document.uploaded"}).encode()
    return ClaimedEvent(n, f"e{n}", "document.uploaded", f"agg{n}", body, 0, time.time())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Replicas:
    """Answers per host: a status, or ``"refused"``; every request is noted."""

    def __init__(self, **answers: int | str) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.asked.append(host)
        answer = self.answers.get(host, 200)
        if answer == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if request.headers["content-type"].endswith("batch+json"):
            ids = [e["id"] for e in json.loads(request.content)]
            return httpx.Response(200, json={"results": [{"id": i, "status": answer} for i in ids]})
        return httpx.Response(int(answer), headers={"Retry-After": "0"} if answer == 429 else {})


Built = tuple[AnyOf, RelayMetrics, Clock]


def any_of(replicas: Replicas, *subscribers: str, batch: frozenset[str] = frozenset()) -> Built:
    deliverer = Deliverer(MockPoster(replicas), secret="s", concurrency=4, batch_subscribers=batch)
    metrics, clock = RelayMetrics(CollectorRegistry()), Clock()
    sender = AnyOf(deliverer, subscribers or (GROUP,), member_failures=metrics.member_failures, clock=clock)
    return sender, metrics, clock


def yes() -> bool:
    return True


def test_routes_accept_groups_and_keep_one_spelling() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        relay_routes={"document.*": [f" {A} | {B} ", C]},
        relay_batch_subscribers=[f"{A} |{B}"],
    )
    assert settings.effective_routes() == {"document.*": [GROUP, C]}
    assert settings.relay_batch_subscribers == [GROUP]
    assert endpoints([GROUP, C, A]) == (A, B, C)
    batch = batch_endpoints(settings.relay_batch_subscribers)
    assert batch == {A, B} and is_batch(GROUP, batch) and not is_batch(C, batch)
    assert is_batch(GROUP, batch_endpoints([A, B])), "listing every member is as good as listing the group"


@pytest.mark.parametrize(
    ("entry", "error"), [(f"{A}|", "empty URL"), (f"{A}||{B}", "empty URL"), (f"{A}|{A}", "twice")]
)
def test_malformed_groups_are_refused_at_start_up(entry: str, error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        Settings(_env_file=None, relay_routes={"document.*": [entry]})  # type: ignore[call-arg]


async def test_deliveries_rotate_between_healthy_members() -> None:
    replicas = Replicas()
    sender, _, _ = any_of(replicas)
    for n in range(6):
        assert [o.kind for o in await sender.deliver(GROUP, [event(n)], may_start=yes)] == ["delivered"]
    assert Tally(replicas.asked) == {"a": 3, "b": 3}


async def test_a_refused_member_fails_over_within_the_delivery_then_cools_down() -> None:
    replicas = Replicas(a="refused")
    sender, metrics, clock = any_of(replicas)
    outcomes = await sender.deliver(GROUP, [event(n) for n in range(10)], may_start=yes)
    assert [o.kind for o in outcomes] == ["delivered"] * 10
    assert replicas.asked.count("b") == 10
    refused = replicas.asked.count("a")
    assert 1 <= refused <= 5, "after its first failure the member is passed over"
    assert metrics.member_failures.labels(A)._value.get() == refused

    replicas.asked.clear()
    for n in range(4):
        await sender.deliver(GROUP, [event(n)], may_start=yes)
    assert replicas.asked == ["b"] * 4, "cooling down: not asked while the other member takes events"

    clock.now += COOLDOWN_BASE_S * 2**refused + 1
    replicas.answers["a"] = 200
    replicas.asked.clear()
    for n in range(4):
        await sender.deliver(GROUP, [event(n)], may_start=yes)
    assert Tally(replicas.asked) == {"a": 2, "b": 2}, "back in the rotation once it answers again"


async def test_every_member_failing_is_one_failed_attempt_with_each_error() -> None:
    replicas = Replicas(a="refused", b=503)
    sender, metrics, _ = any_of(replicas)
    (outcome,) = await sender.deliver(GROUP, [event(1)], may_start=yes)
    assert outcome.kind == "retry" and sorted(replicas.asked) == ["a", "b"]
    assert outcome.error is not None and A in outcome.error and "HTTP 503" in outcome.error
    assert outcome.error.startswith("every member failed")

    # Both cooling down: the next delivery probes one of them, not both.
    replicas.asked.clear()
    (outcome,) = await sender.deliver(GROUP, [event(2)], may_start=yes)
    assert outcome.kind == "retry" and len(replicas.asked) == 1
    assert metrics.member_failures.labels(A)._value.get() + metrics.member_failures.labels(B)._value.get() == 3


async def test_a_busy_member_hands_the_event_to_the_next_and_all_busy_is_busy() -> None:
    replicas = Replicas(a=429)
    sender, _, _ = any_of(replicas)
    for n in range(4):
        assert [o.kind for o in await sender.deliver(GROUP, [event(n)], may_start=yes)] == ["delivered"]
    replicas.answers["b"] = 503
    sender, metrics, _ = any_of(replicas)
    (outcome,) = await sender.deliver(GROUP, [event(9)], may_start=yes)
    assert outcome.kind == "busy", "a healthy member without capacity: back-pressure, not an attempt"
    assert metrics.member_failures.labels(A)._value.get() == 0


async def test_a_refusal_is_final_and_plain_urls_pass_through() -> None:
    replicas = Replicas(a=400, b=400)
    sender, _, _ = any_of(replicas, GROUP, C)
    (outcome,) = await sender.deliver(GROUP, [event(1)], may_start=yes)
    assert outcome.kind == "rejected" and len(replicas.asked) == 1, "a 4xx is about the event, not the replica"
    replicas.asked.clear()
    assert [o.kind for o in await sender.deliver(C, [event(2)], may_start=yes)] == ["delivered"]
    assert replicas.asked == ["c"]


async def test_nothing_is_sent_once_the_relay_may_not_start() -> None:
    replicas = Replicas(a="refused", b="refused")
    sender, _, _ = any_of(replicas)
    calls = iter([True, False])
    (outcome,) = await sender.deliver(GROUP, [event(1)], may_start=lambda: next(calls))
    assert outcome.kind == "release", "not every member was asked: handed back, no attempt"
    assert len(replicas.asked) == 1


async def test_a_batch_group_sends_batches_and_fails_over_per_event() -> None:
    replicas = Replicas(a="refused")
    batch = batch_endpoints([GROUP])
    sender, _, _ = any_of(replicas, batch=batch)
    outcomes = await sender.deliver(GROUP, [event(n) for n in range(5)], may_start=yes)
    assert [o.kind for o in outcomes] == ["delivered"] * 5
    assert len(replicas.asked) <= 2 and replicas.asked[-1] == "b", "one batch request per member asked"
    replicas.answers.update(a=200, b=503)
    sender, _, _ = any_of(replicas, batch=batch)
    replicas.asked.clear()
    outcomes = await sender.deliver(GROUP, [event(n) for n in range(5)], may_start=yes)
    assert [o.kind for o in outcomes] == ["delivered"] * 5 and replicas.asked in (["a"], ["b", "a"])


def test_a_group_is_written_inside_the_usual_json_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBINGEST_RELAY_ROUTES", json.dumps({"document.*": [f"{A}|{B}|{C}"], "x.*": []}))
    monkeypatch.setenv("KBINGEST_RELAY_BATCH_SUBSCRIBERS", json.dumps([f"{A}|{B}|{C}"]))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.effective_routes() == {"document.*": [f"{A}|{B}|{C}"], "x.*": []}
    assert is_batch(settings.effective_routes()["document.*"][0], batch_endpoints(settings.relay_batch_subscribers))
