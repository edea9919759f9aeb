"""``kbingest sync``'s steps against a mock API: what each answer makes of a step, and which keys are sent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.cli.client import Client
from services.cli.sync_plan import Action, LocalFile, RemoteDoc, Step, idempotency_key
from services.cli.sync_steps import SyncItem, carry_out_one, outcome
from shared.errors import error_catalogue

KB = "kb-1"
Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler) -> Client:
    """The API ``handler`` answers, plus the error catalogue (GET /v1/errors) the CLI's words come from."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/errors":
            return httpx.Response(200, content=error_catalogue().model_dump_json())
        return handler(request)

    return Client("http://api.test", "kbi_test", transport=httpx.MockTransport(answer))


def _document(doc_id: str, sha: str = "new", status: str = "queued", **extra: Any) -> dict[str, Any]:
    return {"id": doc_id, "status": status, "stage": None, "chunk_count": None, "error": None, "sha256": sha, **extra}


def _step(action: Action, tmp_path: Path, *, content_version: int = 1) -> Step:
    path = tmp_path / "notes.md"
    path.write_text("new words\n")
    local = LocalFile("notes.md", path, path.stat().st_size, "new")
    remote = RemoteDoc("doc-1", "notes.md", "notes.md", "old", "ready", content_version)
    return Step(action, "notes.md", local=local, remote=None if action is Action.UPLOAD else remote)


def _error(http_status: int, code: str, **extra: Any) -> httpx.Response:
    return httpx.Response(http_status, json={"error": {"code": code, "message": "server text", **extra}})


def test_a_replacement_is_done_when_served_or_failed(tmp_path: Path) -> None:
    item = SyncItem(Path("notes.md"), step=_step(Action.REPLACE, tmp_path))
    pending = {"version": 2, "status": "processing", "stage": "embedding", "error": None}
    item.update(_document("doc-1", sha="old", status="ready", pending_version=pending))
    assert (item.done, item.status, item.stage) == (False, "processing", "embedding")

    error = {"code": "pdf_encrypted", "message": "needs a password"}
    item.update(
        _document("doc-1", sha="old", status="ready", pending_version={**pending, "status": "failed", "error": error})
    )
    assert item.done and item.failed and outcome(item) == "failed"
    assert (
        item.error_code == "pdf_encrypted" and item.meaning == "the new version failed: the PDF is password-protected"
    )

    item.update(_document("doc-1", sha="new", status="ready", pending_version=None))
    assert item.done and not item.failed and outcome(item) == "replaced"


def test_a_replacement_served_with_other_content_is_a_failure(tmp_path: Path) -> None:
    item = SyncItem(Path("notes.md"), step=_step(Action.REPLACE, tmp_path))
    item.update(_document("doc-1", sha="someone-elses", status="ready", pending_version=None))
    assert item.failed and item.error_code == "content_mismatch"


def test_the_replacement_key_names_the_active_version(tmp_path: Path) -> None:
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("PUT", "/v1/documents/doc-1/content")
        sent.append(request.headers["Idempotency-Key"])
        return httpx.Response(202, json=_document("doc-1", sha="old", status="ready"))

    with _client(handler) as client:
        for version in (1, 3):
            carry_out_one(
                client,
                KB,
                SyncItem(Path("notes.md"), step=_step(Action.REPLACE, tmp_path, content_version=version)),
                print,
            )
    assert sent == [idempotency_key(KB, "doc-1", "1", "new"), idempotency_key(KB, "doc-1", "3", "new")]


def test_an_upload_answered_with_a_deleted_document_is_sent_again_under_its_own_key(tmp_path: Path) -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            keys.append(request.headers["Idempotency-Key"])
            assert b'filename="notes.md"' in request.content
            return httpx.Response(201, json=_document("stale" if len(keys) == 1 else "fresh"))
        if request.url.path == "/v1/documents/stale":
            return _error(404, "not_found")
        return httpx.Response(200, json=_document("fresh", status="processing"))

    item = SyncItem(Path("notes.md"), step=_step(Action.UPLOAD, tmp_path))
    with _client(handler) as client:
        carry_out_one(client, KB, item, lambda n: None)
    assert (item.document_id, item.status) == ("fresh", "processing")
    assert keys == [idempotency_key(KB, "notes.md", "new"), idempotency_key(KB, "notes.md", "new", "stale")]


def test_an_upload_waits_for_a_deletion_that_holds_its_name(tmp_path: Path) -> None:
    posts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            posts.append(1)
            if len(posts) == 1:
                return _error(409, "duplicate_document", document_id="old-doc", status="deleting")
            return httpx.Response(201, json=_document("doc-2"))
        if request.url.path == "/v1/documents/old-doc":
            return _error(404, "not_found")
        return httpx.Response(200, json=_document("doc-2"))

    item = SyncItem(Path("notes.md"), step=_step(Action.UPLOAD, tmp_path))
    with _client(handler) as client:
        carry_out_one(client, KB, item, lambda n: None)
    assert len(posts) == 2 and item.document_id == "doc-2" and not item.failed


@pytest.mark.parametrize(
    ("answer", "status", "meaning"),
    [
        (
            _error(409, "duplicate_content", document_id="d", status="ready", filename="other.md"),
            "refused",
            "the same content is already in the knowledge base as 'other.md'",
        ),
        (_error(415, "unsupported_media_type"), "refused", "unsupported file type"),
    ],
)
def test_refusals_say_why(tmp_path: Path, answer: httpx.Response, status: str, meaning: str) -> None:
    item = SyncItem(Path("notes.md"), step=_step(Action.UPLOAD, tmp_path))
    with _client(lambda request: answer) as client:
        carry_out_one(client, KB, item, lambda n: None)
    assert item.status == status and item.failed and item.meaning.startswith(meaning)


def test_deleting_a_document_already_gone_is_done(tmp_path: Path) -> None:
    item = SyncItem(Path("notes.md"), step=_step(Action.DELETE, tmp_path))
    with _client(lambda request: _error(404, "not_found")) as client:
        carry_out_one(client, KB, item, lambda n: None)
    assert item.status == "deleted" and outcome(item) == "deleted"
