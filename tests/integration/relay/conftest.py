"""Relay fixtures: a real subscriber process per test, relay settings on the test's own database."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator

import pytest

from shared.settings import Settings
from tests.support import servers
from tests.support.relay_helpers import SubscriberProcess, relay_settings, start_subscriber


@pytest.fixture
async def subscriber() -> AsyncIterator[SubscriberProcess]:
    process = start_subscriber()
    yield process
    await process.close()


@pytest.fixture
def relay_config(database_url: str, subscriber: SubscriberProcess) -> Settings:
    """Every ``document.*`` event to the subscriber; ``test.unrouted`` has no route."""
    return relay_settings(database_url, {"document.*": [subscriber.url]})


@pytest.fixture
def own_pg() -> Iterator[servers.EmbeddedPostgres]:
    """A Postgres of the test's own: the test stops, crashes and starts it."""
    pg = servers.start_postgres(max_connections=50)
    servers.migrate(pg.dsn)
    yield pg
    pg.destroy()
    shutil.rmtree(pg.data_dir.parent, ignore_errors=True)
