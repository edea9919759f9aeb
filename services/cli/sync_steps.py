"""``kbingest sync``'s steps carried out: one request per step, each safe to repeat, and what became of it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from services.cli.client import ApiProblem, Client, CliError, SentFile
from services.cli.messages import failure_words
from services.cli.sync_plan import Action, Step, idempotency_key
from services.cli.upload import PARALLEL_UPLOADS, POLL_INTERVAL_S, Tracked

# Uploads answered with a since-deleted document (each under a new key) before giving up.
MAX_STALE_ANSWERS = 5
# A name or content held by a document being deleted (a renamed file with --delete) is free once
# the deletion finishes; wait this long for it before calling the upload failed.
DELETION_WAIT_S = 120.0


def byte_progress(console: Console) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    return Progress(*columns, TimeRemainingColumn(), console=console, transient=True)


@dataclass
class SyncItem(Tracked):
    """One step being carried out. ``path`` is the file's name in the folder (shown in tables)."""

    step: Step | None = None

    @property
    def action(self) -> Action:
        assert self.step is not None
        return self.step.action

    def update(self, document: dict[str, Any]) -> None:
        super().update(document)
        pending = document.get("pending_version")
        # A replacement is done when the document serves it (pending_version null again) or it failed;
        # meanwhile the document itself stays ready and serving the previous version.
        if self.action is Action.REPLACE and pending:
            self.status = str(pending.get("status") or "processing")
            self.stage = pending.get("stage")
            if self.status == "failed":
                self.refuse(pending.get("error") or {}, status="failed", prefix="the new version failed: ")
        elif self.action is Action.REPLACE and self.status == "ready" and self.step and self.step.local:
            if document.get("sha256") != self.step.local.sha256:
                message = "the document now serves other content than this file (changed meanwhile?)"
                self.refuse({"code": "content_mismatch", "message": message}, status="failed")

    def refuse(self, error: dict[str, Any], *, status: str = "refused", prefix: str = "") -> None:
        self.status = status
        self.error_code = str(error.get("code") or "error")
        self.error_message = str(error.get("message") or "")
        self.meaning = prefix + (failure_words(self.error_code) or self.error_message)

    def refuse_problem(self, problem: ApiProblem) -> None:
        self.refuse({"code": problem.code, "message": problem.message})
        self.meaning = problem.plain()


def _wait_deleted(client: Client, document_id: str) -> None:
    """Until the document is gone (404), at most DELETION_WAIT_S; its deletion is the server's work."""
    deadline = time.monotonic() + DELETION_WAIT_S
    pause = threading.Event()
    while time.monotonic() < deadline:
        try:
            client.get_document(document_id)
        except ApiProblem as problem:
            if problem.status == 404:
                return
            raise
        pause.wait(POLL_INTERVAL_S)


def _ignore_bytes(_: int) -> None:
    """A repeated upload's bytes: the progress bar counted the file once already."""


def _post(client: Client, kb_id: str, step: Step, key: str, advance: Callable[[int], None]) -> dict[str, Any]:
    """One upload; refused because a document being deleted holds the name or content: once it is gone."""
    assert step.local is not None
    file = SentFile(step.local.path, step.name, advance, key)
    try:
        return client.upload_named(kb_id, file)
    except ApiProblem as problem:
        holder = problem.extra.get("document_id")
        if problem.status != 409 or problem.extra.get("status") != "deleting" or not holder:
            raise
        _wait_deleted(client, str(holder))
        return client.upload_named(kb_id, replace(file, on_bytes=_ignore_bytes))


def _live(client: Client, document_id: str) -> dict[str, Any] | None:
    """The document as it is now; None when it is deleted or being deleted."""
    try:
        document = client.get_document(document_id)
    except ApiProblem as problem:
        if problem.status == 404:
            return None
        raise
    return None if document["status"] == "deleting" else document


def _upload(client: Client, kb_id: str, step: Step, advance: Callable[[int], None]) -> dict[str, Any]:
    assert step.local is not None
    key = idempotency_key(kb_id, step.name, step.local.sha256)
    for _ in range(MAX_STALE_ANSWERS):
        document = _post(client, kb_id, step, key, advance)
        advance = _ignore_bytes
        current = _live(client, str(document["id"]))
        if current is not None:
            return current
        # The key was answered with a document deleted since (a file removed, then restored within
        # the server's idempotency retention): upload again under a key naming the deleted one.
        key = idempotency_key(kb_id, step.name, step.local.sha256, str(document["id"]))
    raise CliError(f"{step.name}: every upload was answered with a deleted document")


def carry_out_one(client: Client, kb_id: str, item: SyncItem, advance: Callable[[int], None]) -> None:
    step = item.step
    assert step is not None
    try:
        if step.action is Action.DELETE:
            assert step.remote is not None
            item.document_id = step.remote.id
            try:
                client.delete_document(step.remote.id)
            except ApiProblem as problem:
                if problem.status != 404:  # already gone is what was asked
                    raise
            item.status = "deleted"
        elif step.action is Action.REPLACE:
            assert step.local is not None and step.remote is not None
            # The active version is part of the key: content that comes back after a later change
            # (A -> B -> A -> B) is a new replacement, not the replay of the first one.
            key = idempotency_key(kb_id, step.remote.id, str(step.remote.content_version), step.local.sha256)
            item.update(client.replace_content(step.remote.id, SentFile(step.local.path, step.name, advance, key)))
        else:
            item.update(_upload(client, kb_id, step, advance))
    except ApiProblem as problem:
        item.refuse_problem(problem)
        if problem.route_missing and step.action is Action.REPLACE:
            item.meaning = "this server cannot replace a document's content (an older kbingest)"
        elif problem.code == "duplicate_content":
            where = problem.extra.get("filename") or "another document"
            item.meaning = f"the same content is already in the knowledge base as '{where}'"
    except CliError as error:
        item.refuse({"code": "connection_error", "message": str(error)})
        item.meaning = "the request did not reach the server"


def _in_parallel(work: Callable[[SyncItem], None], items: list[SyncItem]) -> None:
    """``work`` on each item, PARALLEL_UPLOADS at a time. On Ctrl-C the steps not started are dropped
    and only those in flight finish (each is whole on the server either way): a rerun does the rest."""
    pool = ThreadPoolExecutor(PARALLEL_UPLOADS)
    try:
        for future in [pool.submit(work, item) for item in items]:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def carry_out(client: Client, kb_id: str, items: list[SyncItem], console: Console) -> None:
    """Deletions first (they free names and contents a renamed file needs), then the transfers."""
    deletions = [item for item in items if item.action is Action.DELETE]
    transfers = [item for item in items if item.action in (Action.UPLOAD, Action.REPLACE)]
    _in_parallel(lambda item: carry_out_one(client, kb_id, item, _ignore_bytes), deletions)
    total = sum(item.step.local.size_bytes for item in transfers if item.step and item.step.local)
    with byte_progress(console) as progress:
        task = progress.add_task(f"sending {len(transfers)} file(s)", total=total)
        _in_parallel(lambda item: carry_out_one(client, kb_id, item, lambda n: progress.advance(task, n)), transfers)


def outcome(item: SyncItem) -> str | None:
    if item.failed:
        return "failed"
    if item.action is Action.DELETE:
        return "deleted"
    # Accepted by the server: counted whether or not it is processed yet (--no-wait, a timeout).
    return "added" if item.action is Action.UPLOAD else "replaced"
