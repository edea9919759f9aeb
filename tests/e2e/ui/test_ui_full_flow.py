"""The whole user journey in the browser: upload → live stages → ready → search → failure → delete.

Needs every service (relay, processor, the document event stream, search). If documents never get
processed, this test FAILS after PROCESSING_DEADLINE_S with what the page showed: it is never skipped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support import browser as b
from tests.support import user_stack

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.xdist_group(user_stack.GROUP)]

PROCESSING_DEADLINE_S = 240.0
MEMO, REPORT = "fake-memo.pdf", "reliance-annual-report-3p.pdf"
ENCRYPTED = "password-user-password.pdf"
TERMINAL = ("ready", "failed")
TERMINAL_STATUS = re.compile(f"^({'|'.join(TERMINAL)})$")


def wait_until_done(page: Any, filename: str, stack: user_stack.UserStack) -> str:
    """The row's terminal status, as shown by live updates; fails with the evidence after the deadline."""
    row = b.row(page, filename)
    try:
        expect(row).to_have_attribute("data-status", TERMINAL_STATUS, timeout=PROCESSING_DEADLINE_S * 1000)
    except AssertionError as exc:
        seen = [(r["status"], r["stage"]) for r in b.recorded_rows(page)]
        raise AssertionError(
            f"{filename} was still '{row.get_attribute('data-status')}' after {PROCESSING_DEADLINE_S:.0f} s: "
            "documents are not being processed (is the processor part of `kbingest up`?). "
            f"Live status: {page.locator('#live-status').inner_text()!r}. "
            f"Rows seen: {seen[-20:]}\nstack log:\n{stack.log_tail(40)}"
        ) from exc
    return str(row.get_attribute("data-status"))


def stages_seen(page: Any, filename: str) -> list[tuple[str, str]]:
    doc_id = b.row(page, filename).get_attribute("data-document-id")
    return [(r["status"], r["stage"]) for r in b.recorded_rows(page) if r["id"] == doc_id]


def test_documents_go_live_to_ready_then_search_fail_and_delete(
    page: Any, stack: user_stack.UserStack, corpus: Path
) -> None:
    b.sign_in(page, stack.base_url, stack.api_key)
    b.create_kb(page, stack.name("reports"))
    page.evaluate(b.RECORD_ROWS_JS)
    expect(page.locator("#live-status"), "the document event stream must be open").to_have_attribute(
        "data-state", "open"
    )

    b.drop_files(page, "#dropzone", [corpus / "pdf" / MEMO, corpus / "pdf" / REPORT])
    for name in (MEMO, REPORT):
        expect(b.upload_item(page, name)).to_have_attribute("data-state", "uploaded")
    for name in (MEMO, REPORT):
        assert wait_until_done(page, name, stack) == "ready", b.row(page, name).inner_text()
        seen = stages_seen(page, name)
        assert any(status == "processing" and stage for status, stage in seen), f"{name}: no stage shown: {seen}"
        expect(b.row(page, name).locator("td[data-label=Chunks]")).not_to_have_text("—")
    assert page.evaluate("() => window.__notReloaded === true"), "the page reloaded"
    expect(page.locator("#kb-counts")).to_have_text("2 ready")
    b.screenshot(page, "documents-ready-laptop.png")

    # The same memo again: refused as a duplicate of a ready document.
    page.locator("#file-input").set_input_files(str(corpus / "pdf" / MEMO))
    expect(page.locator('li.upload[data-state="refused"]').first).to_contain_text("(ready)")

    page.get_by_label("Search this knowledge base").fill("20,000 bottles of water")
    page.get_by_role("button", name="Search", exact=True).click()
    first_hit = page.locator("li.hit").first
    # The first search of a fresh API process loads the embedding model: allow for it.
    expect(first_hit.locator(".filename")).to_have_text(MEMO, timeout=90_000)
    expect(first_hit).to_contain_text("score")
    expect(first_hit.locator(".hit-text")).to_contain_text("bottles of water")
    b.screenshot(page, "search-laptop.png")

    # A password-protected PDF fails with its error code on the row and in the details; retry fails it again.
    page.locator("#file-input").set_input_files(str(corpus / "encrypted" / ENCRYPTED))
    assert wait_until_done(page, ENCRYPTED, stack) == "failed"
    failed = b.row(page, ENCRYPTED)
    expect(failed.locator("code.error-code")).to_have_text("pdf_encrypted")
    doc_id, shown = failed.get_attribute("data-document-id"), len(b.recorded_rows(page))
    failed.get_by_role("button", name=f"Retry {ENCRYPTED}").click()
    page.wait_for_function(
        "([id, n]) => window.__kbRows.slice(n).some((r) => r.id === id && r.status !== 'failed')", arg=[doc_id, shown]
    )
    assert wait_until_done(page, ENCRYPTED, stack) == "failed"
    b.row(page, ENCRYPTED).get_by_role("link", name=ENCRYPTED).click()
    expect(page.locator("#document-detail")).to_contain_text("pdf_encrypted")
    expect(page.locator("#kb-counts")).to_have_text("2 ready · 1 failed")
    b.screenshot(page, "failed-document.png")

    page.get_by_role("button", name=f"Delete {MEMO}").click()
    page.get_by_role("button", name="Delete document", exact=True).click()
    expect(b.row(page, MEMO)).to_have_count(0)

    page.set_viewport_size(b.PHONE)
    assert b.horizontal_overflow(page) == 0
    page.get_by_role("link", name="Close details").click()
    page.get_by_role("button", name="Clear finished uploads").click()
    page.get_by_role("heading", level=2, name="Documents").scroll_into_view_if_needed()
    b.screenshot(page, "documents-ready-phone.png", full_page=False)
    assert page.evaluate("() => window.__notReloaded === true"), "the page reloaded"
    assert page.page_errors == []
