"""Which failed lease renewals the heartbeat retries and which end the attempt (services/processor/heartbeat.py)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from services.processor.heartbeat import failure_kind
from shared.db import DatabaseUnavailable


class _PgError(Exception):
    """Stands in for the driver error SQLAlchemy wraps (asyncpg's carry ``sqlstate``)."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _wrapped(cls: type[DBAPIError], message: str, sqlstate: str) -> DBAPIError:
    return cls("UPDATE documents SET heartbeat_at = now() ...", {}, _PgError(message, sqlstate))


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (DatabaseUnavailable("connection refused"), "unavailable"),
        (ConnectionResetError("reset by peer"), "unavailable"),
        (_wrapped(OperationalError, "deadlock detected", "40P01"), "transient"),
        (_wrapped(OperationalError, "could not serialize access", "40001"), "transient"),
        (_wrapped(OperationalError, "canceling statement due to statement timeout", "57014"), "transient"),
        (_wrapped(OperationalError, "could not obtain lock on row", "55P03"), "transient"),
        (_wrapped(ProgrammingError, "permission denied for table documents", "42501"), "error"),
        (_wrapped(ProgrammingError, 'column "heartbeat_at" does not exist', "42703"), "error"),
        (RuntimeError("a bug"), "error"),
    ],
)
def test_failure_kind(error: BaseException, kind: str) -> None:
    assert failure_kind(error) == kind


def test_a_transient_error_is_recognised_behind_a_wrapper() -> None:
    try:
        try:
            raise _wrapped(OperationalError, "deadlock detected", "40P01")
        except DBAPIError as inner:
            raise RuntimeError("renewal failed") from inner
    except RuntimeError as outer:
        assert failure_kind(outer) == "transient"
