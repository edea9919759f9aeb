"""Relay fixtures: a real subscriber process per test, relay settings on the test's own database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.settings import Settings
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
async def other_subscriber() -> AsyncIterator[SubscriberProcess]:
    """A second subscriber process, for fan-out and any-of groups."""
    process = start_subscriber()
    yield process
    await process.close()
