"""Reconciler-test fixtures."""

from __future__ import annotations

import pytest

from services.reconciler.reconciler import Reconciler
from tests.support.reconcilers import ReconcilerFactory

INTERVAL_S = 5.0  # grace for re-emits = 2 intervals = 10 s


@pytest.fixture
def reconciler(make_reconciler: ReconcilerFactory) -> Reconciler:
    """A reconciler whose re-emit grace (10 s) the tests pass by ageing documents, not by waiting."""
    return make_reconciler(reconcile_interval_s=INTERVAL_S)
