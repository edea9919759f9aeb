"""Signed HTTP delivery: one event per POST, or a CloudEvents JSON batch with per-event results."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import httpx

from services.relay.backoff import parse_retry_after
from services.relay.claim import ClaimedEvent
from shared.subscriber import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

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


def classify(status: int, *, retry_after: str | None = None, body: str = "") -> Outcome:
    """2xx delivered; 429 busy; 408/425/5xx retry (both read Retry-After); anything else rejected."""
    if 200 <= status < 300:
        return Outcome("delivered", status)
    message = f"HTTP {status}" + (f": {body[:ERROR_BODY_CHARS]}" if body else "")
    if status == BUSY_STATUS:
        return Outcome("busy", status, message, parse_retry_after(retry_after))
    if status in RETRYABLE_STATUSES or status >= 500:
        return Outcome("retry", status, message, parse_retry_after(retry_after))
    return Outcome("rejected", status, message)


def build_client(*, connect_timeout_s: float, timeout_s: float, max_connections: int) -> httpx.AsyncClient:
    """Keep-alive client with explicit timeouts; redirects are not followed (a moved subscriber is a config error)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections, keepalive_expiry=30.0
        ),
        follow_redirects=False,
        trust_env=False,
    )


class Deliverer:
    """Posts events to subscribers, at most ``concurrency`` requests in flight per subscriber."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        secret: str,
        concurrency: int,
        batch_subscribers: Iterable[str] = (),
        request_timeout_s: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._secret = secret.encode()
        self._concurrency = concurrency
        self._batch_subscribers = frozenset(batch_subscribers)
        # httpx's read timeout restarts with every chunk; this bounds a whole request (the lease depends on it).
        self._request_timeout_s = request_timeout_s
        self._clock = clock
        self._slots: dict[str, asyncio.Semaphore] = {}

    def takes_batches(self, url: str) -> bool:
        return url in self._batch_subscribers

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
        return list(await asyncio.gather(*(self._post_one(url, event, may_start) for event in events)))

    def _headers(self, body: bytes, content_type: str) -> dict[str, str]:
        timestamp = str(int(self._clock()))
        return {
            "Content-Type": content_type,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response | Outcome:
        try:
            async with asyncio.timeout(self._request_timeout_s):
                return await self._client.post(url, content=body, headers=headers)
        except TimeoutError:
            return Outcome("retry", None, f"timeout: no answer within {self._request_timeout_s:.1f}s from {url}")
        except httpx.TimeoutException as exc:
            return Outcome("retry", None, f"timeout ({type(exc).__name__}) posting to {url}")
        except httpx.TransportError as exc:
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


def _classify_response(response: httpx.Response) -> Outcome:
    if 200 <= response.status_code < 300:
        return Outcome("delivered", response.status_code)
    return classify(response.status_code, retry_after=response.headers.get("retry-after"), body=response.text)


def _batch_results(response: httpx.Response, events: Sequence[ClaimedEvent]) -> list[Outcome]:
    """Per-event outcomes from ``{"results": [{"id": …, "status": …}]}``; an event left out is retried."""
    try:
        results = {str(item["id"]): item for item in response.json()["results"]}
    except (ValueError, KeyError, TypeError) as exc:
        error = f"batch response without per-event results ({type(exc).__name__}): {response.text[:ERROR_BODY_CHARS]}"
        return [Outcome("retry", response.status_code, error)] * len(events)
    outcomes = []
    for event in events:
        item = results.get(event.id)
        if item is None or not isinstance(item.get("status"), int):
            outcomes.append(Outcome("retry", response.status_code, "event missing from the batch response"))
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
