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
from services.relay.http1 import Answer, HTTPError
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
    """Sends one POST (``http1.Http1Client``; tests pass a fake).

    Raises ``http1.HTTPError`` when no complete answer came, ``TimeoutError`` when none came in time.
    """

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float) -> Answer: ...


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
        batch_subscribers: Iterable[str] = (),
        request_timeout_s: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._sign = Signer(secret)
        self._concurrency = concurrency
        self._batch_subscribers = frozenset(batch_subscribers)
        # Bounds a whole request, connect included (the lease is sized from it).
        self._request_timeout_s = request_timeout_s
        self._clock = clock
        self._slots: dict[str, asyncio.Semaphore] = {}

    def takes_batches(self, url: str) -> bool:
        return url in self._batch_subscribers

    def capacity(self, url: str) -> int:
        """Requests that may be in flight to ``url`` at once."""
        return self._concurrency

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
            # The usual unit (one event per request): no gather, no extra task per event.
            return [await self._post_one(url, events[0], may_start)]
        return list(await asyncio.gather(*(self._post_one(url, event, may_start) for event in events)))

    def _headers(self, body: bytes, content_type: str) -> dict[str, str]:
        timestamp = str(int(self._clock()))
        return {
            "Content-Type": content_type,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: self._sign(timestamp, body),
        }

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer | Outcome:
        try:
            return await self._client.post(url, body, headers, timeout_s=self._request_timeout_s)
        except TimeoutError:
            return Outcome("retry", None, f"timeout: no answer within {self._request_timeout_s:.1f}s from {url}")
        except HTTPError as exc:
            return Outcome("retry", None, f"connection error posting to {url}: {type(exc).__name__}: {exc}")

    async def _post_one(self, url: str, event: ClaimedEvent, may_start: MayStart) -> Outcome:
        async with self._slot(url):
            if not may_start():
                return Outcome.release()
            headers = self._headers(event.body, EVENT_CONTENT_TYPE)
            headers[EVENT_ID_HEADER] = event.id
            response = await self._post(url, event.body, headers)
        if isinstance(response, Outcome):
            return response
        return _classify_response(response)

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
