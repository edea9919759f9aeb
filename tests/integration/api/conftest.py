"""Fixtures of the API integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.api.app import create_app
from shared.settings import Settings
from tests.conftest import _client_for
from tests.support.lost_commit import AmbiguousCommit


@pytest.fixture(params=[True, False], ids=["server-committed", "server-rolled-back"])
async def ambiguous_commit(
    request: pytest.FixtureRequest, settings: Settings, api_key: str
) -> AsyncIterator[AmbiguousCommit]:
    """The real API app whose upload-path commit loses its answer: once committed, once rolled back."""
    app = create_app(settings)
    async for client in _client_for(app, api_key):
        yield AmbiguousCommit(app, client, server_commits=request.param)
