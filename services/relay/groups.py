"""Any-of subscriber groups: replicas of one service at separate URLs; each event goes to one of them.

A group (``"http://a/v1/events|http://b/v1/events"`` in RELAY_ROUTES) is one subscriber to the rest
of the relay: its name keys the delivery state, the metrics and the dead letters. Only here is it
several URLs: each delivery starts one member further along (rotation) and, when a member fails
(connection error, timeout, 5xx) or is busy (429), asks the next one before anything is recorded.
Only when every member failed is it a failed attempt, so a dead or busy replica never holds back
an event, its document's later events, or the other replicas.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import structlog
from prometheus_client import Counter

from services.relay.backoff import busy_delay_s
from services.relay.delivery import Deliverer, MayStart, Outcome
from services.relay.sql import ClaimedEvent
from shared.redact import redact_text, redact_url
from shared.settings import subscriber_members

# A member that failed is passed over for this long (doubling per consecutive failure, capped), so
# a dead replica costs one probe per cool-down instead of a connect timeout per event.
COOLDOWN_BASE_S: Final = 1.0
COOLDOWN_MAX_S: Final = 30.0
# Per member in the error of a delivery every member failed.
MEMBER_ERROR_CHARS: Final = 200
FAILOVER_KINDS: Final = frozenset({"retry", "busy"})

log = structlog.get_logger("kbingest.relay")

Change = Literal["down", "up"]


def is_group(subscriber: str) -> bool:
    return len(subscriber_members(subscriber)) > 1


def endpoints(subscribers: Iterable[str]) -> tuple[str, ...]:
    """Every URL requests go to (groups expanded into their members), once, in configuration order."""
    return tuple(dict.fromkeys(url for subscriber in subscribers for url in subscriber_members(subscriber)))


def batch_endpoints(listed: Iterable[str]) -> frozenset[str]:
    """URLs sent batches: those listed in RELAY_BATCH_SUBSCRIBERS, and every member of a listed group."""
    return frozenset(endpoints(listed))


def is_batch(subscriber: str, batch: frozenset[str]) -> bool:
    """A subscriber (plain or group) is sent batches when every URL behind it takes them."""
    return all(url in batch for url in subscriber_members(subscriber))


@dataclass
class Member:
    """One URL of a group and why it is passed over, if it is."""

    url: str
    failures: int = 0
    down_until: float = 0.0
    last: Outcome | None = None


class Group:
    """Rotation and cool-down over the members of one any-of subscriber (state of this relay only)."""

    def __init__(self, name: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.members = tuple(Member(url) for url in subscriber_members(name))
        self._clock = clock
        self._turn = 0

    def order(self) -> list[Member]:
        """Members to ask, starting one further than last time; those cooling down last, soonest back first."""
        start = self._turn % len(self.members)
        self._turn += 1
        now = self._clock()
        rotated = self.members[start:] + self.members[:start]
        return sorted(rotated, key=lambda member: max(now, member.down_until))

    def cooling(self, member: Member) -> bool:
        return member.down_until > self._clock()

    def record(self, member: Member, outcome: Outcome) -> Change | None:
        """Note a member's answer; says when it went down (first failure) or came back (first answer since)."""
        now = self._clock()
        if outcome.kind == "retry":
            member.failures += 1
            member.down_until = now + min(COOLDOWN_MAX_S, COOLDOWN_BASE_S * 2.0 ** (member.failures - 1))
            member.last = outcome
            return "down" if member.failures == 1 else None
        came_back = member.failures > 0
        member.failures = 0
        # A busy member is healthy: it only goes to the back of the rotation until it may be asked again.
        busy = outcome.kind == "busy"
        member.down_until = now + busy_delay_s(outcome.retry_after_s) if busy else 0.0
        member.last = outcome if busy else None
        return "up" if came_back else None


class AnyOf:
    """Sends through ``deliverer``; a group's events go to one member each, failing over within the delivery."""

    def __init__(
        self,
        deliverer: Deliverer,
        subscribers: Iterable[str],
        *,
        member_failures: Counter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._deliverer = deliverer
        self._groups = {name: Group(name, clock=clock) for name in subscribers if is_group(name)}
        self._member_failures = member_failures

    def capacity(self, url: str) -> int:
        group = self._groups.get(url)
        if group is None:
            return self._deliverer.capacity(url)
        return sum(self._deliverer.capacity(member.url) for member in group.members)

    def pipeline_depth(self, url: str) -> int:
        # A group's events fail over one by one, each to the member its rotation picks: none pipelined.
        return 1 if url in self._groups else self._deliverer.pipeline_depth(url)

    async def deliver(self, url: str, events: Sequence[ClaimedEvent], *, may_start: MayStart) -> list[Outcome]:
        group = self._groups.get(url)
        if group is None:
            return await self._deliverer.deliver(url, events, may_start=may_start)
        if all(self._deliverer.takes_batches(member.url) for member in group.members):
            return await self._any_of(group, events, may_start)
        # One request per event, each with its own rotation and failover.
        answers = await asyncio.gather(*(self._any_of(group, [event], may_start) for event in events))
        return [outcome for answer in answers for outcome in answer]

    async def _any_of(self, group: Group, events: Sequence[ClaimedEvent], may_start: MayStart) -> list[Outcome]:
        """One request (one event, or one batch) to one member after another until each event has an answer."""
        answers: list[Outcome | None] = [None] * len(events)
        tried: list[list[tuple[str, Outcome]]] = [[] for _ in events]
        todo = list(range(len(events)))
        order = group.order()
        asked = False
        for k, member in enumerate(order):
            if not todo:
                break
            outcomes = await self._ask(group, member, order[k + 1 :], asked, [events[i] for i in todo], may_start)
            if outcomes is None:
                # A concurrent delivery may have marked it healthy (clearing ``last``) since it was passed over.
                last = member.last or Outcome("retry", None, "skipped: cooling down after a failure")
                for i in todo:
                    tried[i].append((member.url, last))
                continue
            if outcomes[0].kind == "release":
                break
            asked = True
            left = []
            for i, outcome in zip(todo, outcomes, strict=True):
                if outcome.kind in FAILOVER_KINDS:
                    tried[i].append((member.url, outcome))
                    left.append(i)
                else:
                    answers[i] = outcome
            todo = left
        for i in todo:
            # Handed back untouched when the relay stops or the lease runs out before every member was asked.
            answers[i] = every_member_failed(tried[i]) if len(tried[i]) == len(order) else Outcome.release()
        # Every event has its answer by now; the fallback is only for the type checker.
        return [answer if answer is not None else Outcome.release() for answer in answers]

    async def _ask(
        self,
        group: Group,
        member: Member,
        later: Sequence[Member],
        asked: bool,
        events: Sequence[ClaimedEvent],
        may_start: MayStart,
    ) -> list[Outcome] | None:
        """``member``'s answers, or None when it was passed over for its cool-down."""
        passed_over = False

        def start() -> bool:
            nonlocal passed_over
            # Decided when the request could go (a member may have gone down while this one waited for
            # a slot). While another member may still be asked, a cooling one is passed over; when all
            # cool down, the first request of the delivery probes one of them.
            if group.cooling(member) and (asked or not all(group.cooling(other) for other in later)):
                passed_over = True
                return False
            return may_start()

        outcomes = await self._deliverer.deliver(member.url, events, may_start=start)
        if passed_over:
            return None
        if outcomes[0].kind != "release":
            self._note(group, member, outcomes)
        return outcomes

    def _note(self, group: Group, member: Member, outcomes: Sequence[Outcome]) -> None:
        # A batch with some events taken shows the member alive, whatever the others' results.
        answer = next((o for o in outcomes if o.kind not in FAILOVER_KINDS), outcomes[0])
        if answer.kind == "retry":
            self._member_failures.labels(member.url).inc()
        change = group.record(member, answer)
        if change == "down":
            log.warning(
                "outbox.member_down",
                subscriber=redact_text(group.name),
                member=redact_url(member.url),
                error=redact_text(answer.error or ""),
                cool_down_s=COOLDOWN_BASE_S,
            )
        elif change == "up":
            log.info("outbox.member_up", subscriber=redact_text(group.name), member=redact_url(member.url))


def every_member_failed(tried: Sequence[tuple[str, Outcome]]) -> Outcome:
    """One outcome for a delivery no member took: busy if any member only was busy, else a failed attempt."""
    detail = "; ".join(f"{url}: {outcome.error or outcome.kind}"[:MEMBER_ERROR_CHARS] for url, outcome in tried)
    busy = [outcome for _, outcome in tried if outcome.kind == "busy"]
    if busy:
        # A healthy member without capacity: back-pressure, never an attempt (DESIGN invariant 8).
        return Outcome("busy", busy[0].status, f"no member free: {detail}", _soonest(busy))
    failed = [outcome for _, outcome in tried]
    return Outcome("retry", failed[-1].status, f"every member failed: {detail}", _soonest(failed))


def _soonest(outcomes: Sequence[Outcome]) -> float | None:
    """The shortest Retry-After any member asked for: the soonest one of them may take the event."""
    delays = [o.retry_after_s for o in outcomes if o.retry_after_s is not None]
    return min(delays) if delays else None
