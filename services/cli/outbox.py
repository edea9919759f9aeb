"""``kbingest outbox dead|replay``: dead letters, straight from Postgres."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

import typer

from services.cli.config import load_settings
from services.cli.db import one_transaction
from shared.deadletters import DeadLetter, list_dead, replay
from shared.settings import Settings

outbox_app = typer.Typer(help="Dead-lettered events: list and replay.", no_args_is_help=True)


async def _list(settings: Settings, limit: int) -> list[DeadLetter]:
    async with one_transaction(settings) as conn:
        return await list_dead(conn, limit=limit)


async def _replay(settings: Settings, event_id: uuid.UUID) -> str:
    async with one_transaction(settings) as conn:
        return await replay(conn, event_id)


def describe(letter: DeadLetter) -> str:
    """One plain line per dead letter."""
    when = letter.dead_at.isoformat(timespec="seconds")
    return (
        f"{letter.id}  {letter.type}  subject={letter.subject}  reason={letter.dead_reason}  "
        f"attempts={letter.attempts}  dead_at={when}  last_error={letter.last_error or '-'}"
    )


@outbox_app.command("dead")
def dead(limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many to show, oldest first.")] = 50) -> None:
    """List dead-lettered events (undeliverable, rejected, or with no route)."""
    letters = asyncio.run(_list(load_settings(), limit))
    if not letters:
        typer.echo("no dead letters")
        return
    for letter in letters:
        typer.echo(describe(letter))
    typer.echo(f"{len(letters)} dead letter(s); replay one with: kbingest outbox replay EVENT_ID")


@outbox_app.command("replay")
def replay_command(event_id: Annotated[uuid.UUID, typer.Argument(help="The event id (CloudEvents id).")]) -> None:
    """Make a dead event deliverable again with a fresh attempt budget."""
    result = asyncio.run(_replay(load_settings(), event_id))
    if result == "not_found":
        typer.secho(f"no event {event_id}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    if result == "not_dead":
        typer.secho(f"event {event_id} is not dead-lettered; nothing to replay", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"replayed {event_id}: the relay delivers it again")
