"""Routing a claimed batch into requests, and each finished request into row updates."""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog
from prometheus_client import Counter

from services.relay import outcomes
from services.relay.delivery import Outcome, Sender
from services.relay.groups import batch_endpoints, is_batch
from services.relay.metrics import RelayMetrics
from services.relay.outcomes import RetryPolicy, Step
from services.relay.routes import Router
from services.relay.sql import ClaimedEvent, DeliveryState, DeliveryUpdate, Settlement
from shared.redact import redact_url

log = structlog.get_logger("kbingest.relay")

LoadDeliveries = Callable[[Sequence[int]], Awaitable[dict[int, dict[str, DeliveryState]]]]


@dataclass
class Result:
    """Row updates ready to settle in one transaction."""

    settlements: list[Settlement] = field(default_factory=list)
    updates: list[DeliveryUpdate] = field(default_factory=list)

    def extend(self, other: Result) -> None:
        self.settlements.extend(other.settlements)
        self.updates.extend(other.updates)

    def __len__(self) -> int:
        return len(self.settlements)


@dataclass
class Fanout:
    """A multi-route event waiting for the outcomes of the subscribers it was sent to."""

    event: ClaimedEvent
    targets: tuple[str, ...]
    stored: dict[str, DeliveryState]
    expected: set[str]
    received: dict[str, Outcome] = field(default_factory=dict)


@dataclass
class Plan:
    """What to send: request units (a subscriber URL and the events of one request), plus rows already decided."""

    units: list[tuple[str, list[ClaimedEvent]]]
    decided: Result
    fanout: dict[int, Fanout]


class Dispatcher:
    """Plans a claimed batch and turns each finished request into row updates at once.

    Single-route events keep their state on the outbox row (the fast path); multi-route events
    keep one row per subscriber in outbox_deliveries, read here before sending.
    """

    def __init__(
        self,
        *,
        router: Router,
        batch_subscribers: Sequence[str],
        batch_max: int,
        sender: Sender,
        policy: RetryPolicy,
        metrics: RelayMetrics,
        load_deliveries: LoadDeliveries,
    ) -> None:
        self._router = router
        self._batch_endpoints = batch_endpoints(batch_subscribers)
        self._batch_max = batch_max
        self._sender = sender
        self._policy = policy
        self._metrics = metrics
        self._load_deliveries = load_deliveries
        self._delivered_by_url: dict[str, Counter] = {}
        # Read once: the per-event debug line's arguments cost about 1 µs to build even when debug is off
        # (a twentieth of the relay's CPU per delivered event).
        self._log_each_delivery = log.is_enabled_for(logging.DEBUG)
        self._busy_by_url: dict[str, Counter] = {}

    async def plan(self, events: Sequence[ClaimedEvent]) -> Plan:
        """Route every event; unroutable and subscriber-less ones are decided without a request."""
        decided = Result()
        per_url: dict[str, list[ClaimedEvent]] = defaultdict(list)
        fanout: dict[int, Fanout] = {}
        for event in events:
            targets = self._router.targets(event.type)
            if targets is None:
                decided.settlements.append(outcomes.unroutable(event))
                log.warning(
                    "outbox.unroutable", event_id=event.id, event_type=event.type, document_id=event.aggregate_id
                )
            elif not targets:
                decided.settlements.append(Settlement(event.seq, "delivered", event.attempts))
            elif (dead := outcomes.exhausted(event, self._policy)) is not None:
                decided.settlements.append(dead)
                self._observe(event, dead, {}, time.time())
            elif len(targets) == 1:
                per_url[targets[0]].append(event)
            else:
                fanout[event.seq] = Fanout(event, targets, {}, set())
        if fanout:
            stored = await self._load_deliveries(list(fanout))
            for seq, waiting in list(fanout.items()):
                waiting.stored = stored.get(seq, {})
                for url in waiting.targets:
                    state = waiting.stored.get(url)
                    if state is None or (not state.delivered and not state.dead and state.wait_s <= 0):
                        waiting.expected.add(url)
                        per_url[url].append(waiting.event)
                if not waiting.expected:
                    decided.extend(self._settle_fanout(fanout.pop(seq)))
        units: list[tuple[str, list[ClaimedEvent]]] = []
        for url, url_events in per_url.items():
            size = self._unit_size(url, len(url_events))
            units.extend((url, url_events[i : i + size]) for i in range(0, len(url_events), size))
        return Plan(units, decided, fanout)

    def _unit_size(self, url: str, events: int) -> int:
        """Events per request unit: a batch; else spread over the URL's slots first, then pipelined.

        Requests pipelined on one connection wait for each other's answers, so a subscriber's slots
        are filled before any request queues behind another.
        """
        if is_batch(url, self._batch_endpoints):
            return self._batch_max
        return max(1, min(self._sender.pipeline_depth(url), math.ceil(events / self._sender.capacity(url))))

    def resolve(self, plan: Plan, url: str, events: Sequence[ClaimedEvent], answers: Sequence[Outcome]) -> Result:
        """Row updates for the events of one finished request (multi-route ones once all their requests end)."""
        result = Result()
        acked_at = time.time()
        delivered = 0
        for event, outcome in zip(events, answers, strict=True):
            try:
                delivered += self._resolve_one(plan, url, event, outcome, result, acked_at)
            except Exception as exc:
                # As in batch._request: one event's trouble is its failed attempt, not the relay's end.
                log.exception("outbox.outcome_error", event_id=event.id, document_id=event.aggregate_id)
                self._resolve_one(plan, url, event, Outcome.relay_error(exc), result, acked_at)
        if delivered:
            self._delivered(url).inc(delivered)
        return result

    def _resolve_one(
        self, plan: Plan, url: str, event: ClaimedEvent, outcome: Outcome, into: Result, acked_at: float
    ) -> int:
        """Adds the event's row updates (if it has all its answers) to ``into``; 1 for a plain delivery."""
        waiting = plan.fanout.get(event.seq) if plan.fanout else None
        if waiting is not None:
            waiting.received[url] = outcome
            if set(waiting.received) >= waiting.expected:
                into.extend(self._settle_fanout(plan.fanout.pop(event.seq)))
            return 0
        if outcome.kind == "delivered":
            # The hot path, kept lean: one settlement, one histogram sample.
            into.settlements.append(Settlement(event.seq, "delivered", event.attempts + 1, ack=True))
            self._observe_delivered(event, event.attempts + 1, acked_at)
            return 1
        settlement, step = outcomes.single(event, url, outcome, self._policy)
        into.settlements.append(settlement)
        self._observe(event, settlement, {url: step}, acked_at)
        return 0

    def _observe_delivered(self, event: ClaimedEvent, attempt: int, acked_at: float) -> None:
        latency_s = max(0.0, acked_at - event.created_at)
        self._metrics.latency.observe(latency_s)
        if self._log_each_delivery:
            log.debug("outbox.delivered", **_about(event), attempt=attempt, latency_ms=round(latency_s * 1000, 1))

    def _delivered(self, url: str) -> Counter:
        return _child(self._delivered_by_url, self._metrics.delivered, url)

    def _busy(self, url: str) -> Counter:
        return _child(self._busy_by_url, self._metrics.busy, url)

    def _settle_fanout(self, waiting: Fanout) -> Result:
        settlement, updates, steps = outcomes.multi(
            waiting.event, waiting.targets, waiting.stored, waiting.received, self._policy
        )
        self._observe(waiting.event, settlement, steps, time.time())
        return Result([settlement], updates)

    def _observe(self, event: ClaimedEvent, settlement: Settlement, steps: dict[str, Step], acked_at: float) -> None:
        """Metrics and the stable log events for one event's attempt(s)."""
        for url, step in steps.items():
            if step.state == "delivered":
                self._delivered(url).inc()
            if step.state not in ("busy", "retry"):
                continue
            about = {**_about(event), "subscriber": redact_url(url), "retry_in_s": round(step.delay_s, 3)}
            if step.state == "busy":
                # Routine under load (one per 429), hence debug: a warning here would be noise.
                self._busy(url).inc()
                log.debug("outbox.busy", attempts=step.attempts, **about)
            elif step.state == "retry":
                self._metrics.retries.inc()
                error = step.error["error"] if step.error else None
                log.info("outbox.retry_scheduled", attempt=step.attempts, error=error, **about)
        if settlement.action == "delivered":
            self._observe_delivered(event, settlement.attempts, acked_at)
        elif settlement.action == "dead" and settlement.reason != outcomes.UNROUTABLE:
            log.warning(
                "outbox.dead_lettered",
                **_about(event),
                reason=settlement.reason,
                attempts=settlement.attempts,
                error=settlement.error["error"] if settlement.error else None,
            )


def _about(event: ClaimedEvent) -> dict[str, str]:
    """The fields every log line about one event is bound with."""
    return {"event_id": event.id, "document_id": event.aggregate_id, "event_type": event.type}


def _child(cache: dict[str, Counter], counter: Counter, url: str) -> Counter:
    """The per-subscriber child counter, cached (``labels()`` costs more than the increment)."""
    child = cache.get(url)
    if child is None:
        child = cache[url] = counter.labels(url)
    return child
