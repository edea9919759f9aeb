"""The web UI against the real stack, for what needs no processing: sign-in, KBs, uploads, refusals, delete.

Also the accessibility smoke check (labels, names, keyboard) and the phone-width layout check.
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

MEMO = "pdf/fake-memo.pdf"
REPORT = "pdf/reliance-annual-report-3p.pdf"


def test_sign_in_upload_duplicate_filter_delete(page: Any, stack: user_stack.UserStack, corpus: Path) -> None:
    page.goto(stack.base_url + "/")
    expect(page.get_by_role("heading", level=1, name="Sign in")).to_be_visible()
    assert b.accessibility_problems(page) == []
    b.screenshot(page, "sign-in.png")

    page.get_by_label("API key").fill("kbi_not_a_real_key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("refused")

    b.sign_in(page, stack.base_url, stack.api_key)
    kb_name = stack.name("handbooks")
    b.create_kb(page, kb_name)

    # Two real PDFs dropped at once: each gets its own progress bar and ends "Uploaded".
    b.drop_files(page, "#dropzone", [corpus / MEMO, corpus / REPORT])
    for name in ("fake-memo.pdf", "reliance-annual-report-3p.pdf"):
        expect(b.upload_item(page, name)).to_have_attribute("data-state", "uploaded")
        expect(b.upload_item(page, name).locator("progress")).to_have_attribute("value", "100")
        expect(b.row(page, name)).to_have_count(1)

    # The same file again, this time through the file picker: a duplicate, with a link to the first one.
    page.locator("#file-input").set_input_files(str(corpus / MEMO))
    duplicate = page.locator('li.upload[data-state="refused"][data-filename="fake-memo.pdf"]')
    expect(duplicate).to_contain_text("already in this knowledge base")
    memo_id = b.row(page, "fake-memo.pdf").get_attribute("data-document-id")
    duplicate.get_by_role("link", name="Open the existing document").click()
    expect(page.locator("#document-detail")).to_contain_text(memo_id)
    expect(page.locator("#document-detail h2")).to_have_text("fake-memo.pdf")

    # Refusals in plain words: 415 for audio, 422 for an empty file.
    page.locator("#file-input").set_input_files(
        [str(corpus / "unsupported/cantina-band-3s.wav"), str(corpus / "empty/empty.txt")]
    )
    expect(b.upload_item(page, "cantina-band-3s.wav")).to_contain_text("Unsupported file type")
    expect(b.upload_item(page, "empty.txt")).to_contain_text("The file is empty")
    expect(page.locator("#announcer")).to_contain_text("refused")
    assert b.accessibility_problems(page) == []
    b.screenshot(page, "upload-laptop.png")

    # Filter by the status one of the documents has now, then by one none has.
    status = b.row(page, "fake-memo.pdf").get_attribute("data-status")
    page.get_by_label("Show").select_option(status)
    expect(b.row(page, "fake-memo.pdf")).to_have_count(1)
    for found in page.locator("tr[data-document-id]").all():
        assert found.get_attribute("data-status") == status
    page.get_by_label("Show").select_option("deleting")
    expect(page.locator("tr[data-document-id]")).to_have_count(0)
    expect(page.locator("#documents-empty")).to_have_text("No deleting documents.")
    page.get_by_label("Show").select_option("")
    expect(page.locator("tr[data-document-id]")).to_have_count(2)

    # Delete asks first; cancelling keeps the document, confirming removes it from the table.
    report_id = b.row(page, "reliance-annual-report-3p.pdf").get_attribute("data-document-id")
    page.get_by_role("button", name="Delete reliance-annual-report-3p.pdf").click()
    page.get_by_role("button", name="Cancel").click()
    expect(b.row(page, "reliance-annual-report-3p.pdf")).to_have_count(1)
    page.get_by_role("button", name="Delete reliance-annual-report-3p.pdf").click()
    page.get_by_role("button", name="Delete document", exact=True).click()
    expect(b.row(page, "reliance-annual-report-3p.pdf")).to_have_count(0)
    expect(page.locator("#announcer")).to_have_text("reliance-annual-report-3p.pdf deleted")
    with stack.client() as api:
        gone = api.get(f"/v1/documents/{report_id}")
        assert gone.status_code == 404 or gone.json()["status"] == "deleting", gone.text
    assert page.page_errors == []


def test_keyboard_phone_width_and_health(page: Any, stack: user_stack.UserStack, corpus: Path) -> None:
    b.sign_in(page, stack.base_url, stack.api_key)
    kb_name = stack.name("phone-check")
    b.create_kb(page, kb_name)

    # The drop zone is a button, next in tab order after the heading: the keyboard opens the file picker.
    # (Space, not Enter: headless Chromium drops the first chooser opened from an Enter keypress.)
    expect(page.get_by_role("heading", level=1, name=kb_name)).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#dropzone")).to_be_focused()
    assert page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle") == "solid"
    chooser = b.file_chooser_by_keyboard(page, page.locator("#dropzone"))
    chooser.set_files(str(corpus / MEMO))
    expect(b.row(page, "fake-memo.pdf")).to_have_count(1)

    page.set_viewport_size(b.PHONE)
    expect(b.row(page, "fake-memo.pdf")).to_be_visible()
    assert b.horizontal_overflow(page) == 0
    assert b.accessibility_problems(page) == []
    b.screenshot(page, "upload-phone.png", full_page=False)

    page.get_by_role("link", name="Knowledge bases").first.click()
    expect(page.get_by_role("link", name=kb_name)).to_be_visible()
    assert b.horizontal_overflow(page) == 0
    page.set_viewport_size(b.LAPTOP)
    expect(page.locator("td[data-label=Documents]", has_text="…")).to_have_count(0)
    expect(page.get_by_role("row", name=kb_name)).to_contain_text("1 ")
    b.screenshot(page, "knowledge-bases.png")

    # Health works whether or not /v1/pipeline and the dead-letter routes exist yet: data or a clear note.
    page.get_by_role("link", name="Pipeline health").click()
    expect(page.get_by_role("heading", level=1, name="Pipeline health")).to_be_focused()
    expect(page.locator("#alerts")).not_to_be_empty()
    expect(page.locator("#dead-letters")).not_to_be_empty()
    # The reconciler samples every pass, so the last hour is drawn (the page refreshes every 15 s).
    expect(page.locator("#slots")).to_have_text(re.compile(r"\d+ busy of \d+"))
    expect(page.locator("#flow-charts svg.chart-plot")).to_have_count(3, timeout=60_000)
    expect(page.locator("#flow-charts path.chart-line").first).to_be_attached()
    assert b.accessibility_problems(page) == []
    page.set_viewport_size(b.PHONE)
    assert b.horizontal_overflow(page) == 0
    page.set_viewport_size(b.LAPTOP)
    b.screenshot(page, "health.png")

    # Deleting a knowledge base asks first, then it leaves the list.
    page.get_by_role("link", name="Knowledge bases").first.click()
    page.get_by_role("button", name=f"Delete knowledge base {kb_name}").click()
    expect(page.locator("#confirm-message")).to_contain_text("all its documents")
    page.get_by_role("button", name="Delete knowledge base", exact=True).click()
    expect(page.get_by_role("link", name=kb_name)).to_have_count(0)

    # Signing out forgets the key: a reload shows the sign-in form again.
    page.get_by_role("button", name="Sign out").click()
    page.reload()
    expect(page.get_by_role("heading", level=1, name="Sign in")).to_be_visible()
    assert page.page_errors == []
