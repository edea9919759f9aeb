"""Where the local stack's PostgreSQL is found: its directory name, its password file and its URL.

Settings need these facts at run time to default to the local stack; the dev tooling that creates the
cluster (devstack/postgres.py) writes the password and directory they name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final
from urllib.parse import quote

SUPERUSER: Final = "postgres"
LOCAL_DIRNAME: Final = "postgres"
PASSWORD_SUFFIX: Final = ".password"


def password_path(data_dir: Path) -> Path:
    """Beside the cluster, not in it: initdb wants an empty directory, and the URL is needed before."""
    return data_dir.with_name(data_dir.name + PASSWORD_SUFFIX)


def read_password(data_dir: Path) -> str | None:
    """The cluster's password, or None if it has none yet."""
    try:
        return password_path(data_dir).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None


def database_url(
    port: int, database: str = "postgres", *, password: str | None, driver: str = "postgresql+asyncpg"
) -> str:
    """A URL for the embedded server on 127.0.0.1 (``driver="postgresql"`` for asyncpg/libpq directly)."""
    auth = SUPERUSER if password is None else f"{SUPERUSER}:{quote(password, safe='')}"
    return f"{driver}://{auth}@127.0.0.1:{port}/{database}"
