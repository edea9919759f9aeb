"""``kbingest search --kb NAME "query"``: the best matching chunks with file name and score."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.cli import options
from services.cli.client import connect, user_errors

SNIPPET_CHARS = 300


def search(
    query: Annotated[str, typer.Argument(help="What to look for, in your own words.")],
    kb: options.Kb,
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many chunks to show.")] = 5,
    url: options.Url = options.DEFAULT_URL,
    api_key: options.ApiKey = None,
) -> None:
    """Semantic search over the ready documents of a knowledge base."""
    console = Console()
    with user_errors(), connect(url, api_key) as client:
        found = client.resolve_kb(kb)
        hits = client.search(str(found["id"]), query, limit)
    if not hits:
        console.print(Text(f"no matches in {found['name']} (only ready documents are searchable)"))
        return
    table = Table(title=Text(f"{len(hits)} match(es) in {found['name']}"), title_justify="left", show_lines=True)
    table.add_column("score", justify="right")
    table.add_column("file", overflow="fold")
    table.add_column("chunk", justify="right")
    table.add_column("text", overflow="fold")
    for hit in hits:
        text = " ".join(str(hit["text"]).split())
        snippet = text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "…"
        table.add_row(f"{float(hit['score']):.3f}", Text(hit["filename"]), str(hit["chunk_no"]), Text(snippet))
    console.print(table)
