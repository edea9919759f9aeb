"""/docs in a real browser: Swagger UI renders from the API's own files, inside the CSP, offline."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support import user_stack

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.xdist_group(user_stack.GROUP)]


def test_swagger_ui_renders_without_cdn_or_csp_violations(page: Any, stack: user_stack.UserStack) -> None:
    requested: list[str] = []
    console: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("console", lambda message: console.append(message.text))
    page.goto(stack.base_url + "/docs")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("kbingest")
    expect(page.get_by_text("/v1/knowledge-bases", exact=True).first).to_be_visible()
    assert requested and all(url.startswith(stack.base_url) for url in requested), requested
    assert not [line for line in console if "Content Security Policy" in line], console
    assert page.page_errors == []
