"""shared/db.py's one "is this a connection error?" classifier: classes through SQLAlchemy's wrappers, never names."""

from __future__ import annotations

import asyncpg
import pytest
import sqlalchemy.exc

from shared.db import DatabaseUnavailable, is_connection_error


def _through_sqlalchemy(driver_error: BaseException) -> sqlalchemy.exc.DBAPIError:
    """What SQLAlchemy's asyncpg dialect raises: a DBAPIError from its adapted error, from asyncpg's."""
    adapted = Exception(f"{type(driver_error)}: {driver_error}")
    adapted.__cause__ = driver_error
    wrapped = sqlalchemy.exc.DBAPIError("SELECT 1", None, adapted)  # type: ignore[arg-type]
    wrapped.__cause__ = adapted
    return wrapped


@pytest.mark.parametrize(
    "driver_error",
    [
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        ConnectionResetError("reset by peer"),
    ],
)
def test_lost_connections_through_sqlalchemy(driver_error: BaseException) -> None:
    assert is_connection_error(_through_sqlalchemy(driver_error))
    assert is_connection_error(driver_error)


def test_statement_errors_are_not_connection_errors() -> None:
    assert not is_connection_error(_through_sqlalchemy(asyncpg.UniqueViolationError("duplicate key")))
    assert not is_connection_error(ValueError("bad input"))


def test_our_own_and_invalidated() -> None:
    assert is_connection_error(DatabaseUnavailable("no connection free"))
    invalidated = sqlalchemy.exc.DBAPIError("SELECT 1", None, Exception("x"), connection_invalidated=True)  # type: ignore[arg-type]
    assert is_connection_error(invalidated)
