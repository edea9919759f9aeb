"""Reconcilers on the test database, driven by hand (the ``make_reconciler`` fixture of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry

from services.reconciler.reconciler import Reconciler, Step
from shared.settings import Settings

ReconcilerFactory = Callable[..., Reconciler]


@asynccontextmanager
async def reconciler_factory(settings: Settings) -> AsyncIterator[ReconcilerFactory]:
    """Make reconcilers whose ``overrides`` replace settings and ``step_overrides`` named steps; all closed at exit."""
    made: list[Reconciler] = []

    def factory(*, step_overrides: Mapping[str, Step] | None = None, **overrides: Any) -> Reconciler:
        reconciler = Reconciler.from_settings(
            settings.model_copy(update=overrides), registry=CollectorRegistry(), step_overrides=step_overrides
        )
        made.append(reconciler)
        return reconciler

    try:
        yield factory
    finally:
        for reconciler in made:
            await reconciler.close()
