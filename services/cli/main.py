"""``kbingest``: one CLI for the local stack, each service, migrations, keys and checks."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.engine import make_url

from services.cli import doctor as doctor_checks
from services.cli import search as search_cmd
from services.cli import status as status_cmd
from services.cli import sync as sync_cmd
from services.cli import upload as upload_cmd
from services.cli.config import load_settings
from services.cli.localstack import MAX_LOCAL_PROCESSORS, LocalStack, bootstrap_key, plan_services
from services.cli.outbox import outbox_app
from services.cli.supervisor import CHECK_INTERVAL_S, Supervisor
from shared.local_postgres import password_path
from shared.logging import configure_logging
from shared.settings import LOCAL_PG_PORT, LOCAL_S3_PORT

app = typer.Typer(help="kbingest: document ingestion for knowledge bases.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(outbox_app, name="outbox")


@app.command()
def up(
    data_dir: Annotated[Path, typer.Option(envvar="KBINGEST_DATA_DIR", help="Where all local data lives.")] = Path(
        ".kbingest"
    ),
    pg_port: Annotated[int, typer.Option(envvar="KBINGEST_LOCAL_PG_PORT", help="Embedded Postgres port.")] = (
        LOCAL_PG_PORT
    ),
    s3_port: Annotated[int, typer.Option(envvar="KBINGEST_LOCAL_S3_PORT", help="Embedded S3 port.")] = LOCAL_S3_PORT,
    processors: Annotated[
        int,
        typer.Option(
            envvar="KBINGEST_PROCESSORS",
            min=1,
            max=MAX_LOCAL_PROCESSORS,
            help="Processor processes to start (each with PROCESSOR_CONCURRENCY slots).",
        ),
    ] = 1,
) -> None:
    """Run the whole local stack on embedded dependencies until Ctrl-C; restart any of its processes that dies."""
    stack = LocalStack(data_dir, pg_port=pg_port, s3_port=s3_port)
    configure_logging(service="up", log_format=stack.settings.log_format, level=stack.settings.log_level)
    supervisor: Supervisor | None = None
    key, generated = bootstrap_key(stack.data_dir)
    env = stack.env(key)
    stopping = False

    def _interrupt(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    # Explicit for SIGINT too: a shell starts background jobs with SIGINT ignored, and Python keeps that.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    # A closed terminal: stop the services too (they run in their own sessions and get no SIGHUP).
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        typer.echo(f"kbingest: data in {stack.data_dir}")
        stack.start_dependencies()
        shown = make_url(stack.postgres.dsn).render_as_string(hide_password=True)
        typer.echo(f"  postgres  {shown} (password in {password_path(stack.postgres.data_dir)})")
        typer.echo(f"  s3        http://{stack.s3.endpoint} (bucket {stack.settings.s3_bucket})")
        stack.migrate(env)
        # Services in start order; each answers /readyz on its port before the stack is 'ready'.
        planned = plan_services(stack.settings, processors)
        for service in planned:
            stack.start_service(service.name, service.port, {**env, **service.env}, command=service.command)
        supervisor = Supervisor(stack.units(), status_path=stack.status_path)
        supervisor.check()
        # A service that cannot start at all is a configuration problem: stop and say so, no restart loop.
        failed = stack.wait_ready()
        if failed:
            typer.secho(f"kbingest: not ready: {', '.join(failed)} (see the logs above)", fg=typer.colors.RED)
            raise typer.Exit(1)
        for service in planned:
            typer.echo(f"  {service.name:<9} http://127.0.0.1:{service.port}")
        api = f"http://127.0.0.1:{stack.settings.api_port}"
        typer.echo(f"  API key   {key}" + ("  (generated, saved in data dir)" if generated else ""))
        typer.secho(f"kbingest ready: {api}  (UI {api}/, docs {api}/docs)  Ctrl-C stops", fg=typer.colors.GREEN)
        stack.doctor(env)
        while True:
            supervisor.check()
            time.sleep(CHECK_INTERVAL_S)
    except KeyboardInterrupt:
        typer.echo("kbingest: stopping…")
    finally:
        stack.stop()
        if supervisor is not None:
            supervisor.remove_status()
        typer.echo("kbingest: stopped")


@app.command()
def api() -> None:
    """Run the HTTP API."""
    from services.api.main import run

    run(load_settings())


@app.command()
def relay() -> None:
    """Run the outbox relay: deliver events to subscribers (exit 0 after SIGTERM, 1 if it dies)."""
    from services.relay.main import run

    raise typer.Exit(run(load_settings()))


@app.command()
def processor() -> None:
    """Run a processor: lease, heartbeat, extract, chunk, embed, index (its own process, never the API's)."""
    from services.processor.main import run

    run(load_settings())


@app.command()
def reconciler() -> None:
    """Run the reconciler: rescue stale work, re-emit lost events, sweep orphans (one leader at a time)."""
    from services.reconciler.main import run

    run(load_settings())


@app.command()
def migrate() -> None:
    """Apply database migrations (alembic upgrade head)."""
    from alembic.config import Config

    from alembic import command

    settings = load_settings()
    root = Path(__file__).resolve().parents[2]
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "alembic"))
    config.set_main_option("sqlalchemy.url", settings.database_url)
    command.upgrade(config, "head")
    typer.echo("migrations at head")


_MARKS = {"OK": (" OK ", typer.colors.GREEN), "WARN": ("WARN", typer.colors.YELLOW), "FAIL": ("FAIL", typer.colors.RED)}


@app.command()
def doctor(
    deep: Annotated[bool, typer.Option("--deep", help="Also call the embedder (imports litellm).")] = False,
) -> None:
    """Check every dependency; print OK/WARN/FAIL per check with how to fix it (exit 1 on FAIL)."""
    results = asyncio.run(doctor_checks.run_checks(load_settings(), deep=deep))
    for result in results:
        label, color = _MARKS[result.status]
        typer.echo(f"[{typer.style(label, fg=color)}] {result.name}: {result.detail}")
        if result.status != "OK" and result.fix:
            typer.echo(f"       fix: {result.fix}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")] = "default",
    kb: Annotated[list[uuid.UUID] | None, typer.Option(help="Limit the key to these knowledge base ids.")] = None,
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    from services.cli import keys

    typer.echo(asyncio.run(keys.create(load_settings(), name=name, kb_ids=kb)))


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (prefix, name, scope, last use)."""
    from services.cli import keys

    for line in asyncio.run(keys.list_lines(load_settings())):
        typer.echo(line)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="Key id or displayed prefix.")]) -> None:
    """Revoke a key by id or prefix."""
    from services.cli import keys

    count = asyncio.run(keys.revoke(load_settings(), key_id))
    if count == 0:
        typer.secho(f"no live key matches {key_id}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {count} key(s)")


app.command("upload")(upload_cmd.upload)
app.command("status")(status_cmd.status)
app.command("search")(search_cmd.search)
app.command("sync")(sync_cmd.sync)


def main() -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    app()


if __name__ == "__main__":
    main()
