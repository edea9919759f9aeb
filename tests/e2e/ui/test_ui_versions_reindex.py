"""Replace in place, the version list, index settings and re-index in the browser.

The first test runs against contract-shaped answers (CONTRACT.md "Additions (December 2026)") that it
moves from one state to the next, so each state the UI must show is held until the page shows it
(sign-in, the knowledge base and the document are the real stack's). The second replaces a document
on the real stack and waits for the processor to serve the new version.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect

from tests.support import browser as b
from tests.support import user_stack

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.xdist_group(user_stack.GROUP)]

# Long enough for a cold processor (model load, imports) on a busy 2-core machine.
PROCESSING_DEADLINE_S = 240
SHA = {1: "a" * 64, 2: "b" * 64, 3: "c" * 64}


def _version(number: int, status: str) -> dict[str, Any]:
    return {
        "version": number,
        "sha256": SHA[number],
        "size_bytes": 100 * number,
        "status": status,
        "created_at": f"2026-12-0{number}T10:00:00Z",
    }


def _file_chooser_from_keyboard(page: Any, tries: int = 3) -> Any:
    """Enter on the focused Replace button opens the picker; a loaded headless Chromium sometimes drops
    one (as in test_ui_basics.py), so ask again."""
    for _ in range(tries):
        try:
            with page.expect_file_chooser(timeout=20_000) as pending:
                page.keyboard.press("Enter")
            return pending.value
        except PlaywrightTimeoutError:
            expect(page.get_by_role("button", name="Replace file…")).to_be_focused()
    raise AssertionError(f"the focused Replace button did not open the file picker after {tries} presses")


def _replace_with(page: Any, content: bytes, name: str = "notes.md") -> None:
    """The picker's input, given a file directly (the keyboard path is tested once, above)."""
    page.locator("#replace-input").set_input_files(
        files=[{"name": name, "mimeType": "text/markdown", "buffer": content}]
    )


def _kb_with_document(
    stack: user_stack.UserStack, kb_name: str, filename: str, content: bytes
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new knowledge base on the real stack holding one uploaded document: both as the API answered."""
    with stack.client() as api:
        kb = api.post("/v1/knowledge-bases", json={"name": stack.name(kb_name)}).json()
        created = api.post(f"/v1/knowledge-bases/{kb['id']}/documents", files={"file": (filename, content)})
        assert created.status_code == 201, created.text
    return kb, created.json()


class Fakes:
    """What the faked routes answer now, and what the page sent them."""

    def __init__(self, doc: dict[str, Any], kb: dict[str, Any]) -> None:
        self.doc = {**doc, "status": "ready", "stage": None, "content_version": 1, "pending_version": None}
        self.versions = [_version(1, "active")]
        self.kb = {
            **kb,
            "chunk_size": 512,
            "chunk_overlap": 64,
            "embedding_model": "local/bge-small",
            "index": {"generation": 1, "building": None},
        }
        self.sent: list[tuple[str, str, Any]] = []

    def document(self, route: Any) -> None:
        if route.request.method == "PUT":
            self.sent.append(("PUT", route.request.url, None))
            number = max(v["version"] for v in self.versions) + 1
            self.versions.insert(0, _version(number, "pending"))
            pending = {"version": number, "status": "queued", "stage": None, "error": None}
            self.doc = {**self.doc, "pending_version": pending}
            route.fulfill(status=202, json=self.doc)
        else:
            route.fulfill(json=self.doc)

    def knowledge_base(self, route: Any) -> None:
        method, url = route.request.method, route.request.url
        if method == "GET":
            route.fulfill(json=self.kb)
            return
        body = json.loads(route.request.post_data) if route.request.post_data else None
        self.sent.append((method, url, body))
        index = self.kb["index"]
        if url.endswith("/reindex/cancel"):
            self.kb["index"] = {**index, "building": None}
        elif url.endswith("/reindex/rollback"):
            self.kb["index"] = {"generation": index["generation"] - 1, "building": None}
        else:  # PATCH with "reindex": true, or POST …/reindex
            self.kb.update({k: v for k, v in (body or {}).items() if k != "reindex"})
            building = {"generation": index["generation"] + 1, "done": 0, "total": 3, "failed": 0}
            self.kb["index"] = {**index, "building": building}
        route.fulfill(status=202 if method == "POST" else 200, json=self.kb)

    def build(self, done: int, failed: int = 0) -> None:
        self.kb["index"]["building"] = {**self.kb["index"]["building"], "done": done, "failed": failed}

    def switch(self) -> None:
        self.kb["index"] = {"generation": self.kb["index"]["building"]["generation"], "building": None}


def test_replace_shows_progress_a_failed_version_and_the_versions_then_reindex_cancel_and_rollback(
    page: Any, stack: user_stack.UserStack
) -> None:
    kb, doc = _kb_with_document(stack, "versions-ui", "notes.md", b"# Notes\n\nfirst words\n")
    fakes = Fakes(doc, kb)
    page.route(f"**/v1/documents/{fakes.doc['id']}", fakes.document)
    page.route(f"**/v1/documents/{fakes.doc['id']}/content", fakes.document)
    page.route(
        f"**/v1/documents/{fakes.doc['id']}/versions", lambda route: route.fulfill(json={"items": fakes.versions})
    )
    page.route(f"**/v1/knowledge-bases/{kb['id']}", fakes.knowledge_base)
    page.route(f"**/v1/knowledge-bases/{kb['id']}/reindex**", fakes.knowledge_base)
    page.route(
        f"**/v1/knowledge-bases/{kb['id']}/documents?*",
        lambda route: route.fulfill(json={"items": [fakes.doc], "next_cursor": None}),
    )
    page.route(f"**/v1/knowledge-bases/{kb['id']}/events", lambda route: route.fulfill(status=204))

    b.sign_in(page, stack.base_url, stack.api_key)
    page.goto(f"{stack.base_url}/#/kbs/{kb['id']}/docs/{fakes.doc['id']}")
    detail = page.locator("#document-detail")
    expect(detail.locator("#versions-table tbody tr")).to_have_count(1)
    expect(detail.locator("#versions-table")).to_contain_text("(current)")

    # Replace, by keyboard: the button opens the file picker.
    page.get_by_role("button", name="Replace file…").focus()
    _file_chooser_from_keyboard(page).set_files(
        files=[{"name": "notes.md", "mimeType": "text/markdown", "buffer": b"# Notes v2\n"}]
    )
    pending = detail.locator("#pending-version")
    expect(pending).to_contain_text("New version 2")
    expect(pending).to_contain_text("queued")
    assert [method for method, _, _ in fakes.sent] == ["PUT"]
    expect(detail.locator("#versions-table tbody tr")).to_have_count(2)

    fakes.doc = {
        **fakes.doc,
        "pending_version": {"version": 2, "status": "processing", "stage": "embedding", "error": None},
    }
    expect(pending).to_contain_text("embedding (4 of 5)")
    error = {"code": "pdf_encrypted", "message": "the PDF needs a password", "retryable": False}
    fakes.doc = {
        **fakes.doc,
        "pending_version": {"version": 2, "status": "failed", "stage": "extracting", "error": error},
    }
    fakes.versions[0]["status"] = "failed"
    expect(pending).to_contain_text("New version 2 failed")
    expect(pending.locator("code.error-code")).to_have_text("pdf_encrypted")
    expect(pending).to_contain_text("The current version stays ready and searchable.")
    expect(detail.locator("#versions-table tbody tr").first).to_contain_text("failed")

    _replace_with(page, b"# Notes v3\n")
    expect(pending).to_contain_text("New version 3")
    fakes.versions = [_version(3, "active"), _version(2, "failed"), _version(1, "retained")]
    fakes.doc = {**fakes.doc, "content_version": 3, "sha256": SHA[3], "pending_version": None}
    expect(detail.locator("#replace-message")).to_have_text("Version 3 is now served.")
    expect(pending).to_have_count(0)
    expect(detail.locator("#versions-table tbody tr")).to_have_count(3)
    expect(detail.locator("#versions-table tr[data-version='3']")).to_contain_text("(current)")

    # Index settings: new settings travel with "reindex": true; progress; cancel; re-index again; roll back.
    index = page.locator("#index-settings")
    expect(index.locator("#index-active")).to_contain_text("generation 1")
    index.get_by_label("Chunk size").fill("256")
    index.get_by_role("button", name="Re-index").click()
    expect(index.locator("#reindex-building")).to_be_visible()
    assert fakes.sent[-1][0] == "PATCH" and fakes.sent[-1][2] == {"chunk_size": 256, "reindex": True}
    fakes.build(done=2, failed=1)
    expect(index.locator("#reindex-progress-text")).to_have_text("generation 2: 2 of 3 documents, 1 failed")
    index.get_by_role("button", name="Cancel re-index").click()
    expect(index.locator("#reindex-building")).to_be_hidden()
    expect(index.locator("#index-message")).to_have_text("Re-index cancelled: the active index is unchanged.")
    assert fakes.sent[-1][:2] == ("POST", f"{stack.base_url}/v1/knowledge-bases/{kb['id']}/reindex/cancel")

    index.get_by_role("button", name="Re-index").click()
    expect(index.locator("#reindex-building")).to_be_visible()
    assert fakes.sent[-1][:2] == ("POST", f"{stack.base_url}/v1/knowledge-bases/{kb['id']}/reindex")
    fakes.switch()
    expect(index.locator("#index-message")).to_contain_text("search uses generation 2")
    index.get_by_role("button", name="Roll back to the previous index").click()
    expect(index.locator("#index-active")).to_contain_text("generation 1")
    assert fakes.sent[-1][:2] == ("POST", f"{stack.base_url}/v1/knowledge-bases/{kb['id']}/reindex/rollback")

    assert b.accessibility_problems(page) == []
    page.set_viewport_size(b.PHONE)
    expect(index.get_by_role("button", name="Re-index")).to_be_visible()
    assert b.horizontal_overflow(page) == 0
    assert page.page_errors == []


def test_replace_on_the_real_stack_serves_the_new_version_and_lists_both(
    page: Any, stack: user_stack.UserStack
) -> None:
    """Needs the processor: the first version and its replacement are processed for real."""
    first = b"# Recipes\n\nBread needs flour, water, salt and time.\n"
    kb, doc = _kb_with_document(stack, "versions-real", "recipes.md", first)
    b.sign_in(page, stack.base_url, stack.api_key)
    page.goto(f"{stack.base_url}/#/kbs/{kb['id']}/docs/{doc['id']}")
    detail = page.locator("#document-detail")
    deadline_ms = PROCESSING_DEADLINE_S * 1000
    expect(detail.locator(".badge-ready"), "the first version must be processed").to_be_visible(timeout=deadline_ms)

    new = b"# Recipes\n\nSourdough needs a starter, flour, water and salt.\n"
    _replace_with(page, new, name="recipes.md")
    expect(detail.locator("#replace-message")).to_have_text("Version 2 is now served.", timeout=deadline_ms)
    rows = detail.locator("#versions-table tbody tr")
    expect(rows).to_have_count(2)
    expect(detail.locator("#versions-table tr[data-version='2']")).to_contain_text("(current)")
    expect(detail.locator("#versions-table tr[data-version='2']")).to_contain_text("active")
    with stack.client() as api:
        served = api.get(f"/v1/documents/{doc['id']}").json()
    assert served["content_version"] == 2 and served["pending_version"] is None
    assert served["sha256"] == hashlib.sha256(new).hexdigest()

    _replace_with(page, new, name="recipes.md")
    expect(detail.locator("#replace-message")).to_have_text("Identical content: nothing changed.")
    assert page.page_errors == []


def test_reindex_on_the_real_stack_switches_then_rolls_back(page: Any, stack: user_stack.UserStack) -> None:
    """Needs the processor: the document is processed, then built again with another chunk size."""
    text = "".join(f"Paragraph {i}: kilns fire clay at high heat for hours on end.\n\n" for i in range(60))
    kb, _ = _kb_with_document(stack, "reindex-real", "kilns.md", text.encode())
    b.sign_in(page, stack.base_url, stack.api_key)
    page.goto(f"{stack.base_url}/#/kbs/{kb['id']}")
    deadline_ms = PROCESSING_DEADLINE_S * 1000
    expect(b.row(page, "kilns.md"), "the document must be processed").to_have_attribute(
        "data-status", "ready", timeout=deadline_ms
    )
    index = page.locator("#index-settings")
    expect(index.locator("#index-active")).to_contain_text("generation 1")
    index.get_by_label("Chunk size").fill("900")
    index.get_by_role("button", name="Re-index").click()
    expect(index.locator("#index-message")).to_have_text(
        "Re-index finished: search uses generation 2.", timeout=deadline_ms
    )
    expect(index.locator("#index-active")).to_contain_text("chunk size 900")
    with stack.client() as api:
        assert api.get(f"/v1/knowledge-bases/{kb['id']}").json()["index"] == {"generation": 2, "building": None}

    index.get_by_role("button", name="Roll back to the previous index").click()
    expect(index.locator("#index-active")).to_contain_text("generation 1")
    expect(index.locator("#index-message")).to_have_text("Rolled back to the previous index.")
    assert page.page_errors == []
