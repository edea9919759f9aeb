"""Fixtures for the browser tests: the shared real stack, Debian's Chromium, a page with artifacts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import browser as b
from tests.support import user_stack


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def stack() -> Iterator[user_stack.UserStack]:
    running = user_stack.acquire()
    yield running
    user_stack.release(running)


# Per test, not per session: sync Playwright keeps an event loop running in this thread while it is
# open, which would break every asyncio test that xdist schedules on this worker afterwards.
@pytest.fixture
def chromium() -> Iterator[Any]:
    reason = b.browser_missing_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=b.WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(b.CHROMIUM), args=b.CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context at laptop width; console, page errors and a failure screenshot are kept."""
    context = chromium.new_context(viewport=b.LAPTOP, locale="en-GB", timezone_id="UTC")
    context.set_default_timeout(b.WAIT_MS)
    page = context.new_page()
    console: list[str] = []
    page_errors: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.page_errors = page_errors
    yield page
    if request.node.stash.get(FAILED, False):
        b.save_failure_artifacts(page, b.artifact_dir(request.node.name), console + page_errors)
    context.close()
