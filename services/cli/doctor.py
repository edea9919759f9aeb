"""``kbingest doctor``: one line per dependency, with a deadline each and how to fix it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from shared.aio import wait_for
from shared.db import worker_database
from shared.settings import Settings
from shared.storage import ObjectStore

CHECK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warn: bool = False

    @property
    def status(self) -> str:
        """``FAIL`` (exit non-zero), ``WARN`` (worth a look, not fatal) or ``OK``."""
        return "FAIL" if not self.ok else "WARN" if self.warn else "OK"


def _alembic_head() -> str | None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    root = Path(__file__).resolve().parents[2]
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "alembic"))
    return ScriptDirectory.from_config(config).get_current_head()


async def check_postgres(settings: Settings) -> list[CheckResult]:
    db = worker_database(settings.database_url, service="doctor", max_connections=1, acquire_timeout_s=5)
    results: list[CheckResult] = []
    try:
        async with db.connection() as conn:
            await conn.execute(text("SELECT 1"))
            results.append(CheckResult("postgres", True, "reachable"))
            version = (
                (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one_or_none()
                if (await conn.execute(text("SELECT to_regclass('alembic_version') IS NOT NULL"))).scalar_one()
                else None
            )
            head = _alembic_head()
            results.append(
                CheckResult(
                    "migrations", version == head, f"database at {version}, code at {head}", "run `kbingest migrate`"
                )
            )
    except Exception as exc:
        results.append(
            CheckResult(
                "postgres",
                False,
                f"{type(exc).__name__}: {exc}"[:300],
                "start PostgreSQL (make run) or set KBINGEST_DATABASE_URL",
            )
        )
    finally:
        await db.dispose()
    return results


async def check_object_store(settings: Settings) -> list[CheckResult]:
    store = ObjectStore.from_settings(settings)
    try:
        await store.ensure_bucket()
        await store.probe()
    except Exception as exc:
        return [
            CheckResult(
                "object_store",
                False,
                f"{exc}"[:300],
                f"start the S3 server (make run) or check KBINGEST_S3_ENDPOINT={settings.s3_endpoint}",
            )
        ]
    return [CheckResult("object_store", True, f"bucket '{settings.s3_bucket}' write/read/delete ok")]


CHECKS: tuple[Callable[[Settings], Awaitable[list[CheckResult]]], ...] = (check_postgres, check_object_store)


def _all_checks(deep: bool) -> list[Callable[[Settings], Awaitable[list[CheckResult]]]]:
    # Imported here: doctor_pipeline builds on CheckResult defined above.
    from services.cli import doctor_pipeline as p

    async def embedder(settings: Settings) -> list[CheckResult]:
        return await p.check_embedder(settings, deep=deep)

    return [
        *CHECKS,
        p.check_qdrant,
        embedder,
        p.check_routes,
        p.check_pipeline,
        p.check_connection_budget,
        p.check_supervisor,
    ]


async def run_checks(settings: Settings, *, deep: bool = False) -> list[CheckResult]:
    results: list[CheckResult] = []
    for check in _all_checks(deep):
        name = check.__name__.removeprefix("check_")
        try:
            results += await wait_for(check(settings), CHECK_TIMEOUT_S * (6 if deep else 1))
        except TimeoutError:
            results.append(CheckResult(name, False, f"no answer within {CHECK_TIMEOUT_S:g}s", "is it running?"))
        except Exception as exc:  # one broken check must not hide the others: it becomes a FAIL line
            results.append(CheckResult(name, False, f"{type(exc).__name__}: {exc}"[:300], "see the checks above"))
    return results
