"""The CLI's server-side settings: read once per command; a bad environment is a clear message and exit 2."""

from __future__ import annotations

import typer

from shared.settings import Settings


def load_settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:
        typer.secho(f"invalid configuration: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
