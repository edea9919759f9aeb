"""``kbingest sync PATH --kb NAME``: make a knowledge base hold what a folder holds, rsync-like.

Every step is idempotent on its own (uploads carry an Idempotency-Key derived from the KB, the
file's name and its sha256; a replacement with identical content is a no-op), so a run cut short
resumes by running it again, and a second run plans nothing but "unchanged".
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.cli import options
from services.cli.client import Client, CliError, connect, user_errors
from services.cli.messages import human_size
from services.cli.sync_plan import (
    Action,
    LocalFile,
    RemoteDoc,
    Skipped,
    Step,
    normalise_name,
    plan,
    skip_reason,
)
from services.cli.sync_steps import SyncItem, byte_progress, carry_out, outcome
from services.cli.upload import (
    EXIT_FAILED,
    EXIT_TIMED_OUT,
    Tracked,
    failed_table,
    wait_for_results,
)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
HASH_CHUNK_BYTES = 1024 * 1024
ACTION_COLOURS = {
    Action.UPLOAD: "green",
    Action.REPLACE: "yellow",
    Action.DELETE: "red",
    Action.CONFLICT: "red",
    Action.UNCHANGED: "dim",
    Action.KEEP: "dim",
}
SUMMARY_COLUMNS = ("added", "replaced", "deleted", "unchanged", "failed")


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


def hash_all(found: list[tuple[str, Path]], console: Console) -> list[LocalFile]:
    sizes = [path.stat().st_size for _, path in found]
    with byte_progress(console) as progress:
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


def summary_table(items: list[SyncItem], steps: list[Step], *, title: str) -> Table:
    counts = Counter(result for item in items if (result := outcome(item)))
    counts["unchanged"] = sum(step.action in (Action.UNCHANGED, Action.KEEP) for step in steps)
    table = Table(title=title, title_justify="left")
    for column in SUMMARY_COLUMNS:
        table.add_column(column, justify="right")
    cells = [str(counts[column]) for column in SUMMARY_COLUMNS]
    if counts["failed"]:
        cells[-1] = f"[red]{cells[-1]}[/]"
    table.add_row(*cells)
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


@contextmanager
def _resumable() -> Iterator[None]:
    """Ctrl-C ends the run with how to resume it (every step is idempotent) and exit code 130."""
    try:
        yield
    except KeyboardInterrupt:
        typer.secho("kbingest: interrupted; run the same command again to resume", fg="yellow", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def sync(
    path: Annotated[Path, typer.Argument(help="The folder to mirror (searched recursively).")],
    kb: options.Kb,
    create: options.Create = False,
    delete: Annotated[
        bool, typer.Option("--delete", help="Delete documents whose file is no longer in the folder.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Watch until every change is ready or failed.")] = True,
    timeout: options.Timeout = options.DEFAULT_TIMEOUT_S,
    url: options.Url = options.DEFAULT_URL,
    api_key: options.ApiKey = None,
) -> None:
    """Upload new files, replace changed ones (by sha256) and, with --delete, delete documents whose
    file is gone; then wait until every change is ready or failed and print a summary.

    Idempotent: a second run changes nothing; a run cut short resumes by running it again. Exit code
    0 when everything is in step, 1 when anything failed, 2 for a missing folder or knowledge base,
    3 when waiting timed out.
    """
    console = Console()
    with _resumable(), user_errors():
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
        # In step with the folder, yet not searchable: said, not counted as this run's failures.
        stuck = [s.name for s in steps if s.action is Action.UNCHANGED and s.remote and s.remote.status == "failed"]
        if stuck:
            console.print(
                f"note: {len(stuck)} unchanged file(s) failed processing earlier: {', '.join(stuck)} "
                f"(`kbingest status --kb {kb}` says why)"
            )
        if failed := [
            (Text(str(item.path)), item.action.value, Text(item.error_code or ""), Text(item.meaning))
            for item in items
            if item.failed
        ]:
            console.print(failed_table("failed", ("file", "action", "error code", "why"), failed))
            raise typer.Exit(EXIT_FAILED)
        if not finished:
            typer.secho(
                f"kbingest: {processing} change(s) still in progress after {timeout:.0f} s", fg="yellow", err=True
            )
            raise typer.Exit(EXIT_TIMED_OUT)
