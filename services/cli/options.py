"""The options the user commands share (typer), with their defaults: declared once."""

from __future__ import annotations

from typing import Annotated

import typer

DEFAULT_URL = "http://127.0.0.1:8000"

Url = Annotated[str, typer.Option("--url", envvar="KBINGEST_URL", help="The kbingest API.", show_default=True)]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="KBINGEST_API_KEY",
        help="API key (default: KBINGEST_API_KEY, else .kbingest/api_key of the local stack).",
        show_default=False,
    ),
]
Kb = Annotated[str, typer.Option("--kb", help="Knowledge base name.")]
Create = Annotated[bool, typer.Option("--create", help="Create the knowledge base if it does not exist.")]
# How long upload and sync watch their documents by default.
DEFAULT_TIMEOUT_S = 3600.0
Timeout = Annotated[float, typer.Option(help="Give up waiting after this many seconds (exit 3).")]
