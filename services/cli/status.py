"""``kbingest status [--kb NAME]``: knowledge bases with document counts, or one KB's documents."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.cli import options
from services.cli.client import Client, connect, user_errors
from services.cli.messages import status_markup
from shared.vocabulary import STATUSES


def eta_words(seconds: float) -> str:
    """An ETA in words ("~2 min"), rounded half up like the UI's ``formatEta``; "now" under a second."""
    s = math.floor(seconds + 0.5)
    if s < 1:
        return "now"
    if s < 60:
        return f"~{s} s"
    m = math.floor(s / 60 + 0.5)
    if m < 60:
        return f"~{m} min"
    return f"~{m // 60} h {m % 60} min" if m % 60 else f"~{m // 60} h"


def queue_label(doc: dict[str, Any]) -> str:
    """Where a queued document stands ("37 ahead · ~2 min", "next"), "" otherwise: the UI's ``queueLabel``."""
    position, eta = doc.get("queue_position"), doc.get("eta_s")
    if doc.get("status") != "queued" or position is None:
        return ""
    ahead = "next" if position == 0 else f"{position} ahead"
    return ahead if eta is None else f"{ahead} · {eta_words(eta)}"


def kbs_table(client: Client) -> Table:
    table = Table(title="knowledge bases", title_justify="left")
    table.add_column("name", overflow="fold")
    table.add_column("id", overflow="fold")
    for status in (*STATUSES, "total"):
        table.add_column(status, justify="right")
    for kb in client.list_kbs():
        counts: dict[str, int] = client.get_kb(str(kb["id"])).get("counts") or {}
        table.add_row(
            Text(kb["name"]), str(kb["id"]), *(str(counts.get(s, 0)) for s in STATUSES), str(sum(counts.values()))
        )
    return table


def documents_table(kb: dict[str, Any], documents: list[dict[str, Any]]) -> Table:
    counts = kb.get("counts") or {}
    summary = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s)) or "empty"
    table = Table(title=Text(f"knowledge base {kb['name']} ({summary})"), title_justify="left")
    for name in ("file", "status", "stage", "chunks", "error", "updated", "id"):
        table.add_column(name, overflow="fold")
    for doc in documents:
        error = doc.get("error") or {}
        queue = queue_label(doc)
        table.add_row(
            Text(doc["filename"]),
            status_markup(doc["status"]) + (f" · {queue}" if queue else ""),
            doc.get("stage") or "",
            "" if doc.get("chunk_count") is None else str(doc["chunk_count"]),
            Text(f"{error['code']}: {error.get('message', '')}" if error else ""),
            str(doc.get("updated_at", ""))[:19].replace("T", " "),
            str(doc["id"]),
        )
    return table


def status(
    kb: Annotated[str | None, typer.Option("--kb", help="Show this knowledge base's documents.")] = None,
    only: Annotated[str | None, typer.Option("--status", help="Only documents with this status.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many documents.")] = 500,
    url: options.Url = options.DEFAULT_URL,
    api_key: options.ApiKey = None,
) -> None:
    """Knowledge bases with document counts by status; with --kb, that knowledge base's documents."""
    console = Console()
    with user_errors(), connect(url, api_key) as client:
        if kb is None:
            console.print(kbs_table(client))
            return
        found = client.resolve_kb(kb)
        documents: list[dict[str, Any]] = []
        for doc in client.iter_documents(str(found["id"]), status=only):
            documents.append(doc)
            if len(documents) >= limit:
                break
        console.print(documents_table(client.get_kb(str(found["id"])), documents))
        if len(documents) >= limit:
            console.print(f"(first {limit} shown; --limit shows more)")
