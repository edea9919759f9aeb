"""Fixtures for reconciler tests: a test database handle, an object store, reconcilers to drive by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.reconciler.reconciler import Reconciler, Step
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


ReconcilerFactory = Callable[..., Reconciler]


@pytest.fixture
async def make_reconciler(settings: Settings) -> AsyncIterator[ReconcilerFactory]:
    """Reconcilers on the test database; ``overrides`` replace settings, ``step_overrides`` named steps."""
    made: list[Reconciler] = []

    def factory(*, step_overrides: Mapping[str, Step] | None = None, **overrides: Any) -> Reconciler:
        reconciler = Reconciler.from_settings(
            settings.model_copy(update=overrides), registry=CollectorRegistry(), step_overrides=step_overrides
        )
        made.append(reconciler)
        return reconciler

    yield factory
    for reconciler in made:
        await reconciler.close()
