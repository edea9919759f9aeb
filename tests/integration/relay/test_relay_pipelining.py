"""Pipelined POSTs: a subscriber that ends connections mid-pipeline loses nothing and gets nothing settled twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from tests.support.relay_helpers import SECRET, analyse, deliver_all, fill, query, relay_settings
from tests.support.subscriber_server import RawProtocol, Subscriber

ANSWERS_PER_CONNECTION = 5


class ClosingAfter(RawProtocol):
    """The test subscriber (signatures verified), closing each connection after a few answers.

    Requests read after that are left unanswered, as by a server with a request limit per connection
    or one that restarts: the relay must send them again, and settle each event once.
    """

    most_in_one_read = 0

    def __init__(self, subscriber: Subscriber) -> None:
        super().__init__(subscriber)
        self.left = ANSWERS_PER_CONNECTION

    def data_received(self, data: bytes) -> None:
        before = self.subscriber.requests
        super().data_received(data)
        ClosingAfter.most_in_one_read = max(ClosingAfter.most_in_one_read, self.subscriber.requests - before)

    def answer(self, request: tuple[str, str, bytes, dict[str, str], bytes], keep_alive: bool) -> None:
        assert self.transport is not None
        if self.left == 0:
            self.transport.close()
            return
        self.left -= 1
        super().answer(request, keep_alive)


@pytest.fixture
async def closing_subscriber() -> AsyncIterator[tuple[Subscriber, str]]:
    subscriber = Subscriber(SECRET, verify_signatures=True, record=True)
    server = await asyncio.get_running_loop().create_server(lambda: ClosingAfter(subscriber), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield subscriber, f"http://127.0.0.1:{port}/v1/events"
    finally:
        server.close()
        await server.wait_closed()


async def test_connections_ended_mid_pipeline_lose_nothing_and_settle_each_event_once(
    database_url: str, closing_subscriber: tuple[Subscriber, str]
) -> None:
    subscriber, url = closing_subscriber
    # 60 heads per claim over 2 slots: pipelines of 8, each cut after 5 answers.
    settings = relay_settings(database_url, {"document.*": [url]}, relay_concurrency=2, relay_pipeline_depth=8)
    await fill(database_url, count=300, aggregates=60)
    m = await deliver_all(settings)
    assert ClosingAfter.most_in_one_read > 1, "requests arrived pipelined"
    assert subscriber.requests > 300, "requests left unanswered by a close were sent again"
    report = analyse(subscriber.deliveries)
    # Answered (settled) once each, none lost, each aggregate in order; every signature verified.
    assert (report.delivered, report.unique, report.duplicates, report.order_violations) == (300, 300, 0, [])
    assert subscriber.rejected_signatures == 0
    rows = await query(database_url, "SELECT attempts, errors, delivered_at FROM outbox")
    assert len(rows) == 300 and all(r["delivered_at"] is not None for r in rows)
    # A request the server never answered because it ended the connection is no failed attempt.
    assert all((r["attempts"], json.loads(r["errors"])) == (1, []) for r in rows)
    assert m.retries._value.get() == 0
