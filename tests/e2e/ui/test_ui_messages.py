"""The UI's messages.js shows the server's error catalogue (GET /v1/errors), run in Chromium."""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import error_catalogue
from tests.support import browser as b

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

RUN = """async () => {
    const { describeError, describeFailure } = await import('/ui/messages.js');
    return [
        describeError({ code: 'invalid_api_key', message: 'server text', extra: {} }),
        describeError({ code: 'unauthorized', message: 'server text', extra: {} }),
        describeError({ code: 'file_too_large', message: 'server text', extra: { max_bytes: 100 * 1024 * 1024 } }),
        describeError({ code: 'duplicate_document', message: 'server text', extra: { status: 'ready' } }),
        describeError({ code: 'some_future_code', message: 'server text', extra: {} }),
        describeFailure({ code: 'pdf_encrypted' }),
        describeFailure({ code: 'unknown' }),
    ];
}"""


def test_ui_describes_errors_with_the_served_catalogue(page: Any) -> None:
    asked: list[str] = []

    def catalogue(route: Any) -> None:
        asked.append(route.request.url)
        route.fulfill(status=200, body=error_catalogue().model_dump_json(), content_type="application/json")

    b.serve_ui_files(page)
    page.route(f"{b.STATIC_ORIGIN}/v1/errors", catalogue)
    assert page.evaluate(RUN) == [
        "The API key was refused (unknown or revoked).",
        "No API key was sent. Sign in with an API key.",
        "Too large: the server accepts files up to 100 MB.",
        "Already uploaded: a document with this name is already in this knowledge base (ready).",
        "server text",
        "The PDF is password-protected.",
        "",
    ]
    assert asked == [f"{b.STATIC_ORIGIN}/v1/errors"], "fetched once, by the module"
