"""The UI's live updates, health panel and search, against contract-shaped answers injected into the page.

Sign-in, knowledge bases and uploads are the real stack's; the event stream, the document reads, search,
pipeline and dead-letter answers are CONTRACT.md-shaped fakes telling one fixed story, so the UI's
handling of each shape is checked whether or not (and however fast) the real services run.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support import browser as b
from tests.support import user_stack

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.xdist_group(user_stack.GROUP)]


def _event(seq: int, doc: dict[str, Any], status: str, stage: str | None, event_type: str) -> str:
    data = {
        "document_id": doc["id"],
        "knowledge_base_id": doc["knowledge_base_id"],
        "status": status,
        "stage": stage,
        "version": doc["version"],
        "type": event_type,
    }
    return f"event: document\nid: {seq}\ndata: {json.dumps(data)}\n\n"


def _answer(body: dict[str, Any]) -> Any:
    """A route handler answering ``body`` as JSON (Playwright passes the request too if a handler takes two)."""

    def handle(route: Any) -> None:
        route.fulfill(json=body)

    return handle


def _history(now: datetime) -> list[dict[str, Any]]:
    """An hour of samples a minute apart, with a 10-minute hole (no reconciler) and one unknown utilization."""
    samples = []
    for minutes_ago in [*range(59, 40, -1), *range(30, -1, -1)]:
        queued = 4 + minutes_ago // 2  # a backlog draining to 4
        samples.append(
            {
                "at": (now - timedelta(minutes=minutes_ago)).isoformat(),
                "queued": queued,
                "queued_due": queued - 1,
                "processing": 2,
                "slots_total": 2,
                "slots_busy": 2,
                "drain_rate_per_min": 12.4,
                "utilization": None if minutes_ago == 20 else 0.75,
            }
        )
    return samples


class FakeStream:
    """First connection: a burst of stage events for two documents; the reconnect is told to stop (204)."""

    def __init__(self, ready_doc: dict[str, Any], failed_doc: dict[str, Any]) -> None:
        self.requests: list[dict[str, str]] = []
        self.ready_doc, self.failed_doc = ready_doc, failed_doc

    def body(self) -> str:
        events = [": connected\n\nretry: 100\n\n"]
        seq = 0
        for doc, final in ((self.ready_doc, "ready"), (self.failed_doc, "failed")):
            for status, stage in (
                ("processing", "downloading"),
                ("processing", "extracting"),
                ("processing", "embedding"),
            ):
                seq += 1
                events.append(_event(seq, doc, status, stage, "document.stage_changed"))
            seq += 1
            events.append(_event(seq, doc, final, None, f"document.{'indexed' if final == 'ready' else 'failed'}"))
        return "".join(events)

    def handle(self, route: Any) -> None:
        self.requests.append(route.request.headers)
        if len(self.requests) == 1:
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=self.body())
        else:
            route.fulfill(status=204)


def test_live_stream_health_and_search_render_contract_shapes(
    page: Any, stack: user_stack.UserStack, corpus: Path
) -> None:
    with stack.client() as api:
        kb = api.post("/v1/knowledge-bases", json={"name": stack.name("live-fake")}).json()
        docs = {}
        for name in ("pdf/fake-memo.pdf", "encrypted/password-user-password.pdf"):
            path = corpus / name
            created = api.post(
                f"/v1/knowledge-bases/{kb['id']}/documents", files={"file": (path.name, path.read_bytes())}
            )
            assert created.status_code == 201, created.text
            docs[path.name] = created.json()
    ready = {**docs["fake-memo.pdf"], "status": "ready", "stage": None, "chunk_count": 3}
    error = {"code": "pdf_encrypted", "message": "the PDF needs a password", "retryable": False}
    failed = {**docs["password-user-password.pdf"], "status": "failed", "stage": None, "error": error}
    stream = FakeStream(ready, failed)
    page.route("**/v1/knowledge-bases/*/events", stream.handle)
    # The real processor may be working on these documents too: the page only sees the fake's story,
    # in which a third document waits in the queue throughout.
    waiting = {
        **docs["fake-memo.pdf"],
        **{"id": str(uuid.uuid4()), "filename": "waiting.pdf", "queue_position": 37, "eta_s": 118.0},
    }
    listed = {"items": [{**d, "status": "queued"} for d in docs.values()] + [waiting], "next_cursor": None}
    page.route(f"**/v1/knowledge-bases/{kb['id']}/documents?*", _answer(listed))
    for doc in (ready, failed):
        page.route(f"**/v1/documents/{doc['id']}", _answer(doc))

    b.sign_in(page, stack.base_url, stack.api_key)
    page.evaluate(b.RECORD_ROWS_JS)
    page.goto(f"{stack.base_url}/#/kbs/{kb['id']}")  # a hash change: the recorder keeps running

    expect(b.row(page, "fake-memo.pdf")).to_have_attribute("data-status", "ready")
    expect(b.row(page, "waiting.pdf").locator("td[data-label=Status]")).to_have_text("queued · 37 ahead · ~2 min")
    expect(b.row(page, "fake-memo.pdf").locator("td[data-label=Chunks]")).to_have_text("3")
    failed_row = b.row(page, "password-user-password.pdf")
    expect(failed_row).to_have_attribute("data-status", "failed")
    expect(failed_row.locator("code.error-code")).to_have_text("pdf_encrypted")
    expect(failed_row).to_contain_text("password-protected")
    expect(failed_row.get_by_role("button", name="Retry password-user-password.pdf")).to_be_visible()
    stages = [r["stage"] for r in b.recorded_rows(page) if r["id"] == ready["id"]]
    assert {"downloading", "extracting", "embedding"} <= set(stages), stages

    # The stream was opened with the key in a header (never the URL) and resumed from the last event id.
    expect(page.locator("#live-status")).to_have_attribute("data-state", "unavailable")
    assert stream.requests[0]["authorization"] == f"Bearer {stack.api_key}"
    assert "last-event-id" not in stream.requests[0]
    assert stream.requests[1]["last-event-id"] == "8"

    # 413 is answered by the API only past MAX_UPLOAD_BYTES (100 MB by default): its shape is faked here.
    too_large = {"error": {"code": "file_too_large", "message": "over the limit", "max_bytes": 100 * 1024 * 1024}}
    page.route(
        f"**/v1/knowledge-bases/{kb['id']}/documents",
        lambda route: route.fulfill(status=413, json=too_large) if route.request.method == "POST" else route.fallback(),
    )
    page.locator("#file-input").set_input_files(
        files=[{"name": "huge.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.7 pretend this is big"}]
    )
    expect(b.upload_item(page, "huge.pdf")).to_contain_text("Too large: the server accepts files up to 100 MB.")

    hits = {
        "items": [
            {
                "document_id": ready["id"],
                "filename": "fake-memo.pdf",
                "chunk_no": 0,
                "text": "20,000 bottles of water",
                "score": 0.91,
            },
        ]
    }
    page.route("**/v1/knowledge-bases/*/search", lambda route: route.fulfill(json=hits))
    page.get_by_label("Search this knowledge base").fill("water")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("li.hit .filename")).to_have_text("fake-memo.pdf")
    expect(page.locator("li.hit")).to_contain_text("score 0.910")

    dead_id = "6f1c6a4e-8f7c-4a8e-9d55-0f3d2b1c4a10"
    dead = [
        {
            "id": dead_id,
            "type": "document.uploaded",
            "subject": ready["id"],
            "attempts": 10,
            "dead_at": "2026-01-01T00:00:00Z",
            "dead_reason": "max_attempts",
            "last_error": "HTTP 503",
        }
    ]
    replayed: list[str] = []

    def dead_letters(route: Any) -> None:
        if route.request.method == "POST":
            replayed.append(route.request.url)
            dead.clear()
            route.fulfill(status=202, json={"id": replayed[-1], "status": "replayed"})
        else:
            route.fulfill(json={"items": dead})

    now = datetime.now(UTC)
    pipeline = {
        "generated_at": now.isoformat(),
        "documents": {"queued": 4, "processing": 1},
        "oldest_queued_age_s": 125,
        "slots": {"total": 2, "busy": 1},
        "drain_rate_per_min": 12.4,
        "utilization": 0.75,
        "outbox": {"pending": 2, "dead": 1},
        "processors": [{"id": "proc-1", "last_heartbeat": "2026-01-01T00:00:00Z"}],
        "alerts": [{"code": "no_processor", "message": "no processor has sent a heartbeat for 60 s"}],
    }
    page.route("**/v1/pipeline", lambda route: route.fulfill(json=pipeline))
    history = _history(now)
    page.route("**/v1/pipeline/history?*", _answer({"items": history}))
    page.route("**/v1/outbox/**", dead_letters)
    page.get_by_role("link", name="Pipeline health").click()
    expect(page.locator("#alerts")).to_contain_text("no_processor")
    expect(page.locator("#pipeline-summary")).to_contain_text("2 min 5 s")
    expect(page.locator("#processors")).to_contain_text("proc-1")
    # The flow: slot numbers, and the last hour as three charts (a gap and an unknown utilization break the line).
    expect(page.locator("#slots")).to_have_text("1 busy of 2")
    expect(page.locator("#flow-numbers")).to_contain_text("12.4 documents / min")
    expect(page.locator("#flow-numbers")).to_contain_text("75 %")
    plots = page.locator("#flow-charts svg.chart-plot")
    expect(plots).to_have_count(3)
    expect(plots.nth(0)).to_have_attribute("aria-label", re.compile(r"Queue depth .*now queued 4, due 3; peak 33"))
    expect(plots.nth(1)).to_have_attribute("aria-label", re.compile(r"now drained 12\.4"))
    expect(plots.nth(2)).to_have_attribute("aria-label", re.compile(r"now utilization 75 %"))
    queue_paths = plots.nth(0).locator("path.chart-line")
    expect(queue_paths).to_have_count(2)
    assert queue_paths.first.get_attribute("d").count("M") == 2  # the 10-minute gap
    assert plots.nth(2).locator("path.chart-line").get_attribute("d").count("M") == 3  # gap and a null
    assert b.horizontal_overflow(page) == 0
    page.locator("section", has=page.locator("#flow-charts")).screenshot(
        path=str(b.SCREENSHOTS / "health-flow.png"), animations="disabled"
    )
    page.get_by_role("button", name=f"Replay event document.uploaded {dead_id}").click()
    expect(page.locator("#dead-letters")).to_contain_text("No dead letters.")
    assert replayed and replayed[0].endswith("/replay")
    assert b.accessibility_problems(page) == []
    assert page.page_errors == []
