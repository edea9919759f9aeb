"""Every CLI unit test talks to a server whose error catalogue is shared/errors.py's (GET /v1/errors)."""

from __future__ import annotations

import httpx
import pytest

from services.cli import messages
from shared.errors import error_catalogue


@pytest.fixture(autouse=True)
def catalogue_server() -> list[str]:
    """A server answering GET /v1/errors with shared/errors.py's catalogue; records the paths asked."""
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(200, content=error_catalogue().model_dump_json())

    messages.use_server("http://kbingest.test", transport=httpx.MockTransport(answer))
    return asked
