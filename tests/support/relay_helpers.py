"""Relay test helpers: a real subscriber process, bulk outbox fill, polling, delivery analysis."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from prometheus_client import CollectorRegistry

from services.relay.build import open_relay
from services.relay.http1 import Answer, ClosedError, ConnectError, HTTPError, Request, Result
from services.relay.metrics import RelayMetrics
from services.relay.worker import Relay
from shared.db import asyncpg_dsn
from shared.settings import Settings
from tests.support.pipeline_helpers import service_env, stop_process, wait_http_ok
from tests.support.poll import eventually
from tests.support.servers import ROOT, free_port

SECRET = "relay-test-secret"
START_TIMEOUT_S = 30.0

# Bulk insert: event i belongs to aggregate i % $3 and is that aggregate's n-th event (n = i / $3),
# inserted in i order so seq follows n within every aggregate.
FILL = """
INSERT INTO outbox (id, type, aggregate_type, aggregate_id, payload)
SELECT e.id, $1::text, 'document', e.agg, jsonb_build_object(
    'specversion', '1.0', 'id', e.id, 'type', $1::text, 'source', 'kbingest/test', 'subject', e.agg,
    'time', now(), 'datacontenttype', 'application/json',
    'data', jsonb_build_object('document_id', e.agg, 'n', e.i / $3::int, 'status', 'queued',
                               'knowledge_base_id', e.agg, 'version', e.i / $3::int))
FROM (
    SELECT g.i, gen_random_uuid() AS id, md5($4::text || (g.i % $3::int)::text)::uuid AS agg
    FROM generate_series($5::bigint, $5::bigint + $2 - 1) AS g(i)
) AS e
ORDER BY e.i
"""


@dataclass
class SubscriberProcess:
    """``tests/support/subscriber_server.py`` running as its own process on a free port."""

    port: int
    proc: subprocess.Popen[bytes]
    secret: str = SECRET
    client: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=30))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1/events"

    @property
    def batch_url(self) -> str:
        return f"{self.base}/v1/batch"

    async def control(self, **values: Any) -> None:
        response = await self.client.post(f"{self.base}/control", json=values)
        response.raise_for_status()

    async def deliveries(self) -> list[dict[str, Any]]:
        response = await self.client.get(f"{self.base}/deliveries")
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def stats(self) -> dict[str, Any]:
        response = await self.client.get(f"{self.base}/deliveries", params={"since": 10**9})
        body: dict[str, Any] = response.json()
        return body

    async def close(self) -> None:
        await self.client.aclose()
        stop_process(self.proc, timeout_s=10)


def start_subscriber(*args: str, secret: str = SECRET) -> SubscriberProcess:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.subscriber_server", "--port", str(port), "--secret", secret, *args],
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc, timeout_s=START_TIMEOUT_S)
    except AssertionError:
        stop_process(proc, timeout_s=10)
        raise
    return SubscriberProcess(port, proc, secret)


class MockPoster:
    """The relay's ``Poster`` answered in memory, like ``httpx.MockTransport``: ``handler(request) -> response``.

    The handler may raise ``httpx.ConnectError`` (refused), ``httpx.TimeoutException`` (the relay's
    request budget ran out) or another ``httpx.TransportError`` (closed before the answer).
    """

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self._handler = handler

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float) -> Answer:
        request = httpx.Request("POST", url, content=body, headers=dict(headers))
        try:
            response = self._handler(request)
        except httpx.ConnectError as exc:
            raise ConnectError(str(exc)) from exc
        except httpx.TimeoutException as exc:
            raise TimeoutError(str(exc)) from exc
        except httpx.TransportError as exc:
            raise ClosedError(str(exc)) from exc
        return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)

    async def post_pipelined(self, url: str, requests: Sequence[Request], **options: Any) -> list[Result]:
        """Each request handled in turn, its error as its result (in memory nothing breaks, so nothing is resent)."""
        results: list[Result] = []
        for body, headers in requests:
            try:
                results.append(await self.post(url, body, headers, timeout_s=options["timeout_s"]))
            except (HTTPError, TimeoutError) as exc:
                results.append(exc)
        return results


def relay_settings(database_url: str, routes: dict[str, list[str]], **overrides: Any) -> Settings:
    """Settings for a relay under test: tiny backoff, short timeouts, our secret."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "relay_routes": routes,
        "relay_secret": SECRET,
        "relay_backoff_base_s": 0.05,
        "relay_backoff_max_s": 0.2,
        "relay_connect_timeout_s": 2.0,
        "relay_timeout_s": 5.0,
        "relay_max_attempts": 4,
        "db_max_connections": 3,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def batch_relay_settings(database_url: str, batch_url: str, **overrides: Any) -> Settings:
    """``relay_settings`` with every ``document.*`` event to one batch subscriber (a URL or an any-of group)."""
    return relay_settings(database_url, {"document.*": [batch_url]}, relay_batch_subscribers=[batch_url], **overrides)


def metrics() -> RelayMetrics:
    return RelayMetrics(CollectorRegistry())


async def connect(database_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(asyncpg_dsn(database_url), server_settings={"application_name": "test"})


async def fill(
    database_url: str,
    *,
    count: int,
    aggregates: int,
    event_type: str = "document.uploaded",
    start: int = 0,
    namespace: str | None = None,
) -> None:
    """Insert ``count`` events over ``aggregates`` aggregates in one statement."""
    conn = await connect(database_url)
    try:
        await conn.execute(FILL, event_type, count, aggregates, namespace or uuid.uuid4().hex, start)
    finally:
        await conn.close()


async def query(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await connect(database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def scalar(database_url: str, sql: str, *args: Any) -> Any:
    rows = await query(database_url, sql, *args)
    return rows[0][0]


async def pending(database_url: str) -> int:
    return int(await scalar(database_url, "SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL"))


async def drain(relay: Relay, database_url: str, *, timeout_s: float = 120.0) -> None:
    """``run_once`` until nothing is pending (retries become due after their backoff)."""

    async def done() -> bool:
        await relay.run_once()
        return await pending(database_url) == 0

    await eventually(done, timeout_s=timeout_s, every_s=0.05, what="the outbox to drain")


async def deliver_all(settings: Settings, *, timeout_s: float = 120.0) -> RelayMetrics:
    """A fresh relay with ``settings`` drains the outbox, retries included; returns its metrics."""
    relay_metrics = metrics()
    async with open_relay(settings, relay_metrics) as relay:
        await drain(relay, settings.database_url, timeout_s=timeout_s)
    return relay_metrics


@dataclass
class Report:
    """What a subscriber saw: per-aggregate order, duplicates, missing events."""

    delivered: int
    unique: int
    duplicates: int
    order_violations: list[str]


def analyse(deliveries: list[dict[str, Any]]) -> Report:
    """Order check on 2xx deliveries: per subject, first arrivals of ``n`` strictly increase."""
    ok = [d for d in deliveries if d["status"] == 200]
    counts = Counter(d["id"] for d in ok)
    seen: dict[str, set[int]] = defaultdict(set)
    last: dict[str, int] = {}
    violations = []
    for d in ok:
        subject, n = d["subject"], d["n"]
        if n in seen[subject]:
            continue
        if subject in last and n < last[subject]:
            violations.append(f"{subject}: {n} after {last[subject]}")
        seen[subject].add(n)
        last[subject] = n
    return Report(len(ok), len(counts), sum(c - 1 for c in counts.values()), violations)


# What a ``kbingest relay`` child takes from the test's settings beyond pipeline_helpers.SERVICE_FIELDS.
RELAY_FIELDS = (
    "relay_routes",
    "relay_secret",
    "relay_port",
    "db_max_connections",
    "relay_timeout_s",
    "relay_backoff_base_s",
    "relay_backoff_max_s",
    "relay_batch_subscribers",
)


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a ``kbingest relay`` child process with these settings."""
    return service_env(settings, *RELAY_FIELDS, **extra)


@contextmanager
def relay_process(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """``kbingest relay`` as a real process with ``settings``; stopped (SIGTERM, then kill) on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "relay"], env=env_for(settings), cwd=ROOT, start_new_session=True
    )
    try:
        yield proc
    finally:
        stop_process(proc, timeout_s=30)


async def relay_ready(port: int) -> bool:
    """``/readyz`` of a relay process answers 200."""
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def delivered_at_least(subscriber: SubscriberProcess, n: int) -> bool:
    return int((await subscriber.stats())["total"]) >= n


async def drained(database_url: str) -> bool:
    """No pending outbox row (False while Postgres is unreachable)."""
    try:
        return await pending(database_url) == 0
    except OSError:
        return False
