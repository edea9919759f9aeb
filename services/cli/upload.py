"""``kbingest upload PATH... --kb NAME``: upload with a progress bar, then watch until ready or failed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from services.cli import options
from services.cli.client import ApiProblem, Client, CliError, connect, user_errors
from services.cli.messages import failure_words, status_markup

PARALLEL_UPLOADS = 4
PARALLEL_POLLS = 4
POLL_INTERVAL_S = 1.0
# Larger jobs poll more gently: one round every (pending / this) seconds at most.
POLLS_PER_S = 20
EXIT_FAILED = 1
EXIT_TIMED_OUT = 3
TERMINAL = frozenset({"ready", "failed"})
DUPLICATES = frozenset({"duplicate_document", "duplicate_content"})


@dataclass
class Tracked:
    """One file of the command line and what became of it."""

    path: Path
    document_id: str | None = None
    status: str = "waiting"
    stage: str | None = None
    chunks: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    meaning: str = ""
    note: str = ""

    @property
    def done(self) -> bool:
        return self.document_id is None or self.status in TERMINAL

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "refused")

    def update(self, document: dict[str, Any]) -> None:
        self.document_id = str(document["id"])
        self.status = document["status"]
        self.stage = document.get("stage")
        self.chunks = document.get("chunk_count")
        error = document.get("error") or {}
        self.error_code = error.get("code")
        self.error_message = error.get("message")
        self.meaning = failure_words(self.error_code or "")


def collect_files(paths: list[Path]) -> list[Path]:
    """Files as given, directories recursively (hidden entries skipped), each file once."""
    found: list[Path] = []
    seen: set[Path] = set()
    for path in paths:
        if not path.exists():
            raise CliError(f"{path}: no such file or directory", exit_code=2)
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for candidate in candidates:
            relative = candidate.relative_to(path) if path.is_dir() else Path(candidate.name)
            if any(part.startswith(".") for part in relative.parts):
                continue
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    if not found:
        raise CliError("no files to upload", exit_code=2)
    return found


def _upload_one(client: Client, kb_id: str, item: Tracked, progress: Progress, task: TaskID) -> None:
    try:
        item.update(client.upload(kb_id, item.path, lambda n: progress.advance(task, n)))
    except ApiProblem as problem:
        existing = problem.extra.get("document_id")
        if problem.code in DUPLICATES and existing:
            item.document_id = str(existing)
            item.status = str(problem.extra.get("status", "queued"))
            item.note = "already uploaded"
        else:
            item.status = "refused"
            item.error_code = problem.code
            item.error_message = problem.message
            item.meaning = problem.plain()
    except CliError as error:
        item.status = "refused"
        item.error_code = "connection_error"
        item.error_message = str(error)
        item.meaning = "the upload did not reach the server"


def upload_all(client: Client, kb_id: str, items: list[Tracked], console: Console) -> None:
    total = sum(item.path.stat().st_size for item in items)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=not console.is_terminal) as progress:
        task = progress.add_task(f"uploading {len(items)} file(s)", total=total)
        with ThreadPoolExecutor(PARALLEL_UPLOADS) as pool:
            for future in [pool.submit(_upload_one, client, kb_id, item, progress, task) for item in items]:
                future.result()
    refused = sum(item.status == "refused" for item in items)
    console.print(
        f"uploaded {len(items) - refused} of {len(items)} file(s)" + (f", {refused} refused" if refused else "")
    )


def status_table(items: list[Tracked], *, title: Text | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("file", "status", "stage", "chunks", "error"):
        table.add_column(name, overflow="fold")
    for item in items:
        status = status_markup(item.status)
        if item.note:
            status += f" ({item.note})"
        chunks = "" if item.chunks is None else str(item.chunks)
        table.add_row(Text(item.path.name), status, item.stage or "", chunks, Text(item.error_code or ""))
    return table


def wait_for_results(client: Client, items: list[Tracked], console: Console, timeout_s: float) -> bool:
    """Poll each unfinished document until all are ready/failed; False when ``timeout_s`` ran out."""
    deadline = time.monotonic() + timeout_s
    stop = threading.Event()

    def poll(item: Tracked) -> None:
        assert item.document_id is not None
        try:
            item.update(client.get_document(item.document_id))
        except ApiProblem as problem:
            if problem.status == 404:
                item.status, item.error_code, item.error_message = "failed", "not_found", "the document was deleted"

    with Live(status_table(items), console=console, transient=True, auto_refresh=False) as live:
        with ThreadPoolExecutor(PARALLEL_POLLS) as pool:
            while not stop.is_set():
                pending = [item for item in items if not item.done]
                if not pending:
                    return True
                if time.monotonic() > deadline:
                    return False
                list(pool.map(poll, pending))
                live.update(status_table(items), refresh=True)
                stop.wait(max(POLL_INTERVAL_S, len(pending) / POLLS_PER_S))
    return True


def failed_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str | Text]]) -> Table:
    """What failed, in red after a run (upload and sync): long cells fold rather than being cut off.

    Names, codes and messages come from files and the server, so they go in as ``Text`` (no markup).
    """
    table = Table(title=title, title_justify="left", title_style="bold red")
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def upload(
    paths: Annotated[list[Path], typer.Argument(help="Files or directories (searched recursively).")],
    kb: options.Kb,
    create: options.Create = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Watch until every file is ready or failed.")] = True,
    timeout: options.Timeout = options.DEFAULT_TIMEOUT_S,
    url: options.Url = options.DEFAULT_URL,
    api_key: options.ApiKey = None,
) -> None:
    """Upload files into a knowledge base and show their progress until each is ready or failed.

    Exit code 0 when every file is ready (a duplicate of a ready document counts as ready), 1 when any
    file was refused or failed, 3 when waiting timed out.
    """
    console = Console()
    with user_errors():
        files = collect_files(paths)
        with connect(url, api_key) as client:
            knowledge_base = client.resolve_kb(kb, create=create)
            items = [Tracked(path) for path in files]
            upload_all(client, str(knowledge_base["id"]), items, console)
            finished = wait_for_results(client, items, console, timeout) if wait else True
    console.print(status_table(items, title=Text(f"knowledge base {knowledge_base['name']}")))
    if failed := [
        (Text(item.path.name), Text(item.error_code or ""), item.meaning, Text(item.error_message or ""))
        for item in items
        if item.failed
    ]:
        console.print(failed_table("failed or refused", ("file", "error code", "what it means", "message"), failed))
    pending = sum(not item.done for item in items)
    counts = {status: sum(item.status == status for item in items) for status in ("ready", "failed", "refused")}
    console.print(", ".join([f"{n} {status}" for status, n in counts.items()] + [f"{pending} in progress"]))
    if not finished:
        typer.secho(f"kbingest: {pending} file(s) still in progress after {timeout:.0f} s", fg="yellow", err=True)
    if any(item.failed for item in items):
        raise typer.Exit(EXIT_FAILED)
    if not finished:
        raise typer.Exit(EXIT_TIMED_OUT)
