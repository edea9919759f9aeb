"""Fixtures for reconciler tests: reconcilers to drive by hand (db and store come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.reconciler.reconciler import Reconciler, Step
from shared.settings import Settings

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
