"""Column and index shapes the migrations (alembic/versions) write again and again, written once.

Migrations are history: each function must keep emitting exactly what it emits today, or every
migration that calls it changes with it (a new shape gets a new function). This module never
imports shared.models: a migration describes the schema of its revision, not of today's models.
It lives here because the migrations' folder is named ``alembic`` and shadows the alembic package.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op


def timestamp(name: str, *, default_now: bool = False) -> sa.Column[Any]:
    """timestamptz: NOT NULL DEFAULT now() for a moment every row has from its insert, else NULL until it happens."""
    if default_now:
        return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False)
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def foreign_key(table: str, column: str, target: str, *, ondelete: str = "CASCADE") -> sa.ForeignKeyConstraint:
    """``table.column`` references ``target`` ("other.id"), named as the models' convention names it."""
    referred_table = target.split(".")[0]
    return sa.ForeignKeyConstraint(
        [column], [target], name=op.f(f"fk_{table}_{column}_{referred_table}"), ondelete=ondelete
    )


def delivery_outcome() -> list[sa.Column[Any]]:
    """How a delivery ended (delivered or dead) and the errors on the way: an outbox event's and a subscriber's."""
    return [
        timestamp("delivered_at"),
        timestamp("dead_at"),
        sa.Column("dead_reason", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "errors", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False
        ),
    ]


def partial_index(name: str, table: str, columns: list[str], where: str, *, unique: bool = False) -> None:
    """An index on the rows ``where`` matches only (``unique``: unique among those rows)."""
    op.create_index(name, table, columns, unique=unique, postgresql_where=sa.text(where))
