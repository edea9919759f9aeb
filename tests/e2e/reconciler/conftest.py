"""Fixtures for reconciler / events end-to-end tests: a database handle and the test bucket."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.db import Database
from shared.settings import Settings
from shared.storage import ObjectStore
from tests.support.pipeline_helpers import open_db


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = open_db(settings)
    yield database
    await database.dispose()


@pytest.fixture
async def store(settings: Settings) -> ObjectStore:
    object_store = ObjectStore.from_settings(settings)
    await object_store.ensure_bucket()
    return object_store
