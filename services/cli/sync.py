"""``kbingest sync PATH --kb NAME``: make a knowledge base hold what a folder holds, rsync-like.

Every step is idempotent on its own (uploads carry an Idempotency-Key derived from the KB, the
file's name and its sha256; a replacement with identical content is a no-op), so a run cut short
resumes by running it again, and a second run plans nothing but "unchanged".
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from services.cli.client import (
    DEFAULT_URL,
    ApiKeyOption,
    ApiProblem,
    Client,
    CliError,
    KbOption,
    UrlOption,
    connect,
    user_errors,
)
from services.cli.messages import failure_words, human_size
from services.cli.sync_plan import (
    Action,
    LocalFile,
    RemoteDoc,
    Skipped,
    Step,
    idempotency_key,
    normalise_name,
    plan,
    skip_reason,
)
from services.cli.upload import (
    EXIT_FAILED,
    EXIT_TIMED_OUT,
    PARALLEL_UPLOADS,
    POLL_INTERVAL_S,
    Tracked,
    wait_for_results,
)

EXIT_USAGE = 2
# Uploads answered with a since-deleted document (each under a new key) before giving up.
MAX_STALE_ANSWERS = 5
EXIT_INTERRUPTED = 130
HASH_CHUNK_BYTES = 1024 * 1024
# A name or content held by a document being deleted (a renamed file with --delete) is free once
# the deletion finishes; wait this long for it before calling the upload failed.
DELETION_WAIT_S = 120.0
ACTION_COLOURS = {
    Action.UPLOAD: "green",
    Action.REPLACE: "yellow",
    Action.DELETE: "red",
    Action.CONFLICT: "red",
    Action.UNCHANGED: "dim",
    Action.KEEP: "dim",
}
SUMMARY_COLUMNS = ("added", "replaced", "deleted", "unchanged", "failed")


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


def walk(folder: Path) -> tuple[list[tuple[str, Path]], list[Skipped]]:
    """Files under ``folder`` by sync name, and those skipped with why (hidden, unreadable type)."""
    found: list[tuple[str, Path]] = []
    skipped: list[Skipped] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = PurePosixPath(path.relative_to(folder).as_posix())
        name = normalise_name(str(relative))
        reason = skip_reason(relative)
        if reason is None:
            found.append((name, path))
        else:
            skipped.append(Skipped(name, reason))
    return found, skipped


def sha256_file(path: Path, on_bytes: Callable[[int], None]) -> str:
    """Streamed: a large file is never held in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            on_bytes(len(chunk))
    return digest.hexdigest()


def _byte_progress(console: Console) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    return Progress(*columns, TimeRemainingColumn(), console=console, transient=True)


def hash_all(found: list[tuple[str, Path]], console: Console) -> list[LocalFile]:
    sizes = [path.stat().st_size for _, path in found]
    with _byte_progress(console) as progress:
        task = progress.add_task(f"hashing {len(found)} file(s)", total=sum(sizes))
        return [
            LocalFile(name, path, size, sha256_file(path, lambda n: progress.advance(task, n)))
            for (name, path), size in zip(found, sizes, strict=True)
        ]


def plan_table(steps: list[Step], *, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("action", "file", "size", "detail"):
        table.add_column(column, overflow="fold")
    for step in steps:
        colour = ACTION_COLOURS[step.action]
        size = human_size(step.local.size_bytes) if step.local else ""
        detail = step.reason
        if not detail and step.remote is not None and step.remote.status != "ready":
            detail = f"document is {step.remote.status}"
        table.add_row(f"[{colour}]{step.action.value}[/]", Text(step.name), size, Text(detail))
    return table


def plan_counts(steps: list[Step]) -> str:
    counts = Counter(step.action for step in steps)
    words = [f"{counts[a]} {a.value}" for a in Action if counts[a]]
    return ", ".join(words) or "nothing in the folder or the knowledge base"


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
    try:
        return client.upload_named(kb_id, step.local.path, name=step.name, on_bytes=advance, idempotency_key=key)
    except ApiProblem as problem:
        holder = problem.extra.get("document_id")
        if problem.status != 409 or problem.extra.get("status") != "deleting" or not holder:
            raise
        _wait_deleted(client, str(holder))
        return client.upload_named(kb_id, step.local.path, name=step.name, on_bytes=_ignore_bytes, idempotency_key=key)


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


def _carry_out(client: Client, kb_id: str, item: SyncItem, advance: Callable[[int], None]) -> None:
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
            item.update(
                client.replace_content(
                    step.remote.id, step.local.path, name=step.name, on_bytes=advance, idempotency_key=key
                )
            )
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
    _in_parallel(lambda item: _carry_out(client, kb_id, item, _ignore_bytes), deletions)
    total = sum(item.step.local.size_bytes for item in transfers if item.step and item.step.local)
    with _byte_progress(console) as progress:
        task = progress.add_task(f"sending {len(transfers)} file(s)", total=total)
        _in_parallel(lambda item: _carry_out(client, kb_id, item, lambda n: progress.advance(task, n)), transfers)


def _outcome(item: SyncItem) -> str | None:
    if item.failed:
        return "failed"
    if item.action is Action.DELETE:
        return "deleted"
    # Accepted by the server: counted whether or not it is processed yet (--no-wait, a timeout).
    return "added" if item.action is Action.UPLOAD else "replaced"


def summary_table(items: list[SyncItem], steps: list[Step], *, title: str) -> Table:
    counts = Counter(outcome for item in items if (outcome := _outcome(item)))
    counts["unchanged"] = sum(step.action in (Action.UNCHANGED, Action.KEEP) for step in steps)
    table = Table(title=title, title_justify="left")
    for column in SUMMARY_COLUMNS:
        table.add_column(column, justify="right")
    cells = [str(counts[column]) for column in SUMMARY_COLUMNS]
    if counts["failed"]:
        cells[-1] = f"[red]{cells[-1]}[/]"
    table.add_row(*cells)
    return table


def failures_table(items: list[SyncItem]) -> Table:
    table = Table(title="failed", title_justify="left", title_style="bold red")
    for column in ("file", "action", "error code", "why"):
        table.add_column(column, overflow="fold")
    for item in items:
        if item.failed:
            table.add_row(Text(str(item.path)), item.action.value, Text(item.error_code or ""), Text(item.meaning))
    return table


def _conflict_item(step: Step) -> SyncItem:
    item = SyncItem(Path(step.name), step=step)
    item.refuse({"code": "duplicate_document", "message": step.reason})
    return item


def _knowledge_base(client: Client, name: str, *, create: bool, dry_run: bool) -> dict[str, Any] | None:
    """The KB (None: --create --dry-run of a KB that does not exist yet, nothing is created)."""
    if dry_run and create:
        return next((kb for kb in client.list_kbs() if kb["name"] == name), None)
    return client.resolve_kb(name, create=create, missing_exit=EXIT_USAGE)


def sync(
    path: Annotated[Path, typer.Argument(help="The folder to mirror (searched recursively).")],
    kb: KbOption,
    create: Annotated[bool, typer.Option("--create", help="Create the knowledge base if it does not exist.")] = False,
    delete: Annotated[
        bool, typer.Option("--delete", help="Delete documents whose file is no longer in the folder.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Watch until every change is ready or failed.")] = True,
    timeout: Annotated[float, typer.Option(help="Give up waiting after this many seconds (exit 3).")] = 3600.0,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Upload new files, replace changed ones (by sha256) and, with --delete, delete documents whose
    file is gone; then wait until every change is ready or failed and print a summary.

    Idempotent: a second run changes nothing; a run cut short resumes by running it again. Exit code
    0 when everything is in step, 1 when anything failed, 2 for a missing folder or knowledge base,
    3 when waiting timed out.
    """
    console = Console()
    try:
        _sync(
            console,
            path,
            kb,
            create=create,
            delete=delete,
            dry_run=dry_run,
            wait=wait,
            timeout=timeout,
            url=url,
            api_key=api_key,
        )
    except KeyboardInterrupt:
        typer.secho("kbingest: interrupted; run the same command again to resume", fg="yellow", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _sync(
    console: Console,
    path: Path,
    kb: str,
    *,
    create: bool,
    delete: bool,
    dry_run: bool,
    wait: bool,
    timeout: float,
    url: str,
    api_key: str | None,
) -> None:
    with user_errors():
        if not path.is_dir():
            raise CliError(f"{path}: not a folder (sync mirrors a folder; `kbingest upload` sends files)", EXIT_USAGE)
        found, skipped = walk(path)
        with connect(url, api_key) as client:
            knowledge_base = _knowledge_base(client, kb, create=create, dry_run=dry_run)
            kb_id = str(knowledge_base["id"]) if knowledge_base else ""
            remote = [RemoteDoc.from_document(d) for d in client.iter_documents(kb_id)] if knowledge_base else []
            steps = plan(hash_all(found, console), remote, delete=delete, skipped=skipped)
            for item in skipped:
                console.print(Text(f"skipped {item.name}: {item.reason}", style="dim"))
            if dry_run:
                if knowledge_base is None:
                    console.print(f"knowledge base {kb} does not exist yet: it would be created")
                console.print(plan_table(steps, title=f"plan for knowledge base {kb}"))
                console.print(f"dry run: {plan_counts(steps)}; nothing was changed")
                return
            console.print(f"plan: {plan_counts(steps)}")
            items = [
                SyncItem(Path(s.name), step=s)
                for s in steps
                if s.action in (Action.UPLOAD, Action.REPLACE, Action.DELETE)
            ]
            carry_out(client, kb_id, items, console)
            items += [_conflict_item(s) for s in steps if s.action is Action.CONFLICT]
            watched: list[Tracked] = [item for item in items if item.action is not Action.DELETE]
            finished = wait_for_results(client, watched, console, timeout) if wait else True
    console.print(summary_table(items, steps, title=f"knowledge base {kb}"))
    processing = sum(not item.done for item in watched)
    if processing:
        console.print(f"{processing} of them still processing (`kbingest status --kb {kb}` shows them)")
    if any(item.failed for item in items):
        console.print(failures_table(items))
        raise typer.Exit(EXIT_FAILED)
    if not finished:
        typer.secho(f"kbingest: {processing} change(s) still in progress after {timeout:.0f} s", fg="yellow", err=True)
        raise typer.Exit(EXIT_TIMED_OUT)
