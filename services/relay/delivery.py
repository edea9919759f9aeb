"""Signed HTTP delivery: one event per POST, or a CloudEvents JSON batch with per-event results."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from services.relay.backoff import parse_retry_after
from services.relay.http1 import Answer, HTTPError, Request, Result
from services.relay.sql import ClaimedEvent
from shared.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, SIGNATURE_PREFIX, TIMESTAMP_HEADER

EVENT_CONTENT_TYPE: Final = "application/cloudevents+json"
BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+json"
BATCH_COUNT_HEADER: Final = "X-Kbingest-Batch-Count"
ERROR_BODY_CHARS: Final = 300
# 408/425 and every 5xx mean "failed, try again": retry with backoff. Any other non-2xx except
# 429 is a refusal: dead letter.
RETRYABLE_STATUSES: Final = frozenset({408, 425})
# "No capacity right now": back-pressure from a healthy subscriber, never a failed attempt.
BUSY_STATUS: Final = 429

Kind = Literal["delivered", "busy", "retry", "rejected", "release"]
MayStart = Callable[[], bool]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one delivery attempt of one event to one subscriber ended."""

    kind: Kind
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None

    @classmethod
    def release(cls) -> Outcome:
        """Not attempted (the lease would expire before the request could finish, or the relay is stopping)."""
        return cls("release")

    @classmethod
    def relay_error(cls, exc: Exception) -> Outcome:
        """A failed attempt for an exception while sending or reading the answer (a bug, an unreadable answer)."""
        return cls("retry", None, f"relay error: {type(exc).__name__}: {exc}"[:ERROR_BODY_CHARS])


class Sender(Protocol):
    """What a claimed batch sends its requests through: a ``Deliverer``, or a front that picks the URL."""

    async def deliver(self, url: str, events: Sequence[ClaimedEvent], *, may_start: MayStart) -> list[Outcome]: ...

    def capacity(self, url: str) -> int:
        """Requests that may be in flight to ``url`` (a subscriber, maybe a group) at once."""
        ...

    def pipeline_depth(self, url: str) -> int:
        """Events that may go to ``url`` in one ``deliver`` call as pipelined requests (1: one at a time)."""
        ...


# A pipeline is only as deep as the subscriber, at its recent pace, answers in this share of the
# request timeout: a slow subscriber gets one request per connection (pipelined requests to a server
# that answers them one after the other would otherwise run out of time behind each other).
PIPELINE_TIMEOUT_SHARE: Final = 0.25
# A slower pace counts at once, a faster one gradually (this weight per exchange).
PACE_WEIGHT: Final = 0.2

# One shared instance per 2xx status: an outcome is made per event, and it is immutable.
DELIVERED: Final = {status: Outcome("delivered", status) for status in range(200, 300)}


def classify(status: int, *, retry_after: str | None = None, body: str = "") -> Outcome:
    """2xx delivered; 429 busy; 408/425/5xx retry (both read Retry-After); anything else rejected."""
    if 200 <= status < 300:
        return DELIVERED[status]
    message = f"HTTP {status}" + (f": {body[:ERROR_BODY_CHARS]}" if body else "")
    if status == BUSY_STATUS:
        return Outcome("busy", status, message, parse_retry_after(retry_after))
    if status in RETRYABLE_STATUSES or status >= 500:
        return Outcome("retry", status, message, parse_retry_after(retry_after))
    return Outcome("rejected", status, message)


class Poster(Protocol):
    """Sends POSTs (``http1.Http1Client``; tests pass a fake).

    ``post`` raises ``http1.HTTPError`` when no complete answer came, ``TimeoutError`` when none came
    in time; ``post_pipelined`` returns one of those, the ``Answer``, or None (not sent again) per request.
    """

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float) -> Answer: ...

    async def post_pipelined(
        self,
        url: str,
        requests: Sequence[Request],
        *,
        timeout_s: float,
        may_resend: Callable[[], bool],
    ) -> list[Result]: ...


class Signer:
    """``X-Kbingest-Signature`` values (``shared.signing.sign``), the HMAC key schedule computed once."""

    def __init__(self, secret: str) -> None:
        self._keyed = hmac.new(secret.encode(), digestmod=hashlib.sha256)

    def __call__(self, timestamp: str, body: bytes) -> str:
        mac = self._keyed.copy()
        mac.update(timestamp.encode() + b"." + body)
        return SIGNATURE_PREFIX + mac.hexdigest()


class Deliverer:
    """Posts events to subscribers, at most ``concurrency`` requests in flight per subscriber."""

    def __init__(
        self,
        client: Poster,
        *,
        secret: str,
        concurrency: int,
        pipeline_depth: int = 1,
        batch_subscribers: Iterable[str] = (),
        request_timeout_s: float = 15.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._sign = Signer(secret)
        self._concurrency = concurrency
        self._max_depth = pipeline_depth
        # Seconds per answer of each subscriber's recent exchanges (a pipeline's time over its answers).
        self._pace: dict[str, float] = {}
        self._batch_subscribers = frozenset(batch_subscribers)
        # Bounds a whole request, connect included (the lease is sized from it).
        self._request_timeout_s = request_timeout_s
        self._clock = clock
        self._monotonic = monotonic
        self._slots: dict[str, asyncio.Semaphore] = {}

    def takes_batches(self, url: str) -> bool:
        return url in self._batch_subscribers

    def capacity(self, url: str) -> int:
        """Requests that may be in flight to ``url`` at once."""
        return self._concurrency

    def pipeline_depth(self, url: str) -> int:
        """As many requests as ``url`` answers in a share of the timeout at its recent pace; 1 until it answered."""
        pace = self._pace.get(url)
        if pace is None or self._max_depth == 1:
            return 1
        fits = int(PIPELINE_TIMEOUT_SHARE * self._request_timeout_s / max(pace, 1e-6))
        return max(1, min(self._max_depth, fits))

    def _note_pace(self, url: str, elapsed_s: float, answers: int, timed_out: bool) -> None:
        if not answers and not timed_out:
            return  # refused or closed at once: says nothing about how fast it answers
        sample = elapsed_s / max(1, answers)
        pace = self._pace.get(url)
        self._pace[url] = sample if pace is None or sample > pace else pace + PACE_WEIGHT * (sample - pace)

    def _slot(self, url: str) -> asyncio.Semaphore:
        slot = self._slots.get(url)
        if slot is None:
            slot = self._slots[url] = asyncio.Semaphore(self._concurrency)
        return slot

    async def deliver(self, url: str, events: Sequence[ClaimedEvent], *, may_start: MayStart) -> list[Outcome]:
        """One outcome per event, in order: one batch request to a batch subscriber, else one request each.

        A request is only sent if ``may_start()`` still says so when its slot frees up (the lease would
        not expire first, the relay is not stopping); otherwise its events are released.
        """
        if self.takes_batches(url):
            return await self._post_batch(url, events, may_start)
        if len(events) == 1:
            # The usual unit at low rates (one event per request): nothing to pipeline.
            return [await self._post_one(url, events[0], may_start)]
        return await self._post_pipelined(url, events, may_start)

    def _headers(self, body: bytes, content_type: str) -> dict[str, str]:
        timestamp = str(int(self._clock()))
        return {
            "Content-Type": content_type,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: self._sign(timestamp, body),
        }

    def _event_headers(self, event: ClaimedEvent) -> dict[str, str]:
        headers = self._headers(event.body, EVENT_CONTENT_TYPE)
        headers[EVENT_ID_HEADER] = event.id
        return headers

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer | Outcome:
        try:
            return await self._client.post(url, body, headers, timeout_s=self._request_timeout_s)
        except (TimeoutError, HTTPError) as exc:
            return self._failed(url, exc)

    def _failed(self, url: str, exc: TimeoutError | HTTPError) -> Outcome:
        """A failed attempt: no (complete) answer in time."""
        if isinstance(exc, TimeoutError):
            return Outcome("retry", None, f"timeout: no answer within {self._request_timeout_s:.1f}s from {url}")
        return Outcome("retry", None, f"connection error posting to {url}: {type(exc).__name__}: {exc}")

    async def _post_one(self, url: str, event: ClaimedEvent, may_start: MayStart) -> Outcome:
        async with self._slot(url):
            if not may_start():
                return Outcome.release()
            started = self._monotonic()
            try:
                answer = await self._client.post(
                    url, event.body, self._event_headers(event), timeout_s=self._request_timeout_s
                )
            except (TimeoutError, HTTPError) as exc:
                self._note_pace(url, self._monotonic() - started, 0, isinstance(exc, TimeoutError))
                return self._failed(url, exc)
            self._note_pace(url, self._monotonic() - started, 1, False)
        return _classify_response(answer)

    async def _post_pipelined(self, url: str, events: Sequence[ClaimedEvent], may_start: MayStart) -> list[Outcome]:
        """One POST per event, pipelined on one connection (one slot); events left unsent are released.

        The events are of different aggregates (a claim holds each aggregate's head only), so their
        order on the wire promises nothing a subscriber could rely on.
        """
        async with self._slot(url):
            if not may_start():
                return [Outcome.release()] * len(events)
            requests = [(event.body, self._event_headers(event)) for event in events]
            started = self._monotonic()
            results = await self._client.post_pipelined(
                url, requests, timeout_s=self._request_timeout_s, may_resend=may_start
            )
            answers = sum(1 for result in results if isinstance(result, Answer))
            timed_out = any(isinstance(result, TimeoutError) for result in results)
            self._note_pace(url, self._monotonic() - started, answers, timed_out)
        return [self._outcome(url, result) for result in results]

    def _outcome(self, url: str, result: Result) -> Outcome:
        if isinstance(result, Answer):
            return _classify_response(result)
        if result is None:
            # Left without an answer when the connection ended and not sent again (stopping, or the lease
            # has no room for another request): handed back like a request that never started.
            return Outcome.release()
        return self._failed(url, result)

    async def _post_batch(self, url: str, events: Sequence[ClaimedEvent], may_start: MayStart) -> list[Outcome]:
        body = b"[" + b",".join(event.body for event in events) + b"]"
        async with self._slot(url):
            if not may_start():
                return [Outcome.release()] * len(events)
            headers = self._headers(body, BATCH_CONTENT_TYPE)
            headers[BATCH_COUNT_HEADER] = str(len(events))
            response = await self._post(url, body, headers)
        if isinstance(response, Outcome):
            return [response] * len(events)
        whole = _classify_response(response)
        if whole.kind != "delivered":
            return [whole] * len(events)
        return _batch_results(response, events)


def _classify_response(response: Answer) -> Outcome:
    if 200 <= response.status < 300:
        return DELIVERED[response.status]
    return classify(response.status, retry_after=response.headers.get("retry-after"), body=response.text)


def _batch_results(response: Answer, events: Sequence[ClaimedEvent]) -> list[Outcome]:
    """Per-event outcomes from ``{"results": [{"id": …, "status": …}]}``; an event left out is retried."""
    try:
        results: dict[str, dict[str, Any]] = {
            str(item["id"]): item for item in json.loads(response.body)["results"] if isinstance(item, dict)
        }
    except (ValueError, KeyError, TypeError) as exc:
        error = f"batch response without per-event results ({type(exc).__name__}): {response.text[:ERROR_BODY_CHARS]}"
        return [Outcome("retry", response.status, error)] * len(events)
    outcomes = []
    for event in events:
        item = results.get(event.id)
        if item is None or not isinstance(item.get("status"), int):
            outcomes.append(Outcome("retry", response.status, "event missing from the batch response"))
            continue
        retry_after = item.get("retry_after")
        outcomes.append(
            classify(
                item["status"],
                retry_after=str(retry_after) if retry_after is not None else None,
                body=json.dumps(item["error"]) if item.get("error") else "",
            )
        )
    return outcomes
