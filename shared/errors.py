"""Error taxonomy: document failure codes (CONTRACT.md) and the API's error envelope."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Why a document failed. ``RETRYABLE`` says which ones are worth another attempt."""

    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    FILE_TOO_LARGE = "file_too_large"
    EMPTY_FILE = "empty_file"
    EMPTY_TEXT = "empty_text"
    PDF_ENCRYPTED = "pdf_encrypted"
    CORRUPT_FILE = "corrupt_file"
    EXTRACT_TIMEOUT = "extract_timeout"
    EXTRACT_CRASHED = "extract_crashed"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    OBJECT_MISSING = "object_missing"
    EMBEDDER_UNAVAILABLE = "embedder_unavailable"
    EMBEDDER_RATE_LIMITED = "embedder_rate_limited"
    EMBED_TIMEOUT = "embed_timeout"
    INDEX_UNAVAILABLE = "index_unavailable"
    STAGE_TIMEOUT = "stage_timeout"
    STALLED = "stalled"
    MAX_ATTEMPTS_EXCEEDED = "max_attempts_exceeded"
    INTERNAL_ERROR = "internal_error"
    CANCELLED = "cancelled"


RETRYABLE: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.EXTRACT_TIMEOUT,
        ErrorCode.EXTRACT_CRASHED,
        ErrorCode.STORAGE_UNAVAILABLE,
        ErrorCode.EMBEDDER_UNAVAILABLE,
        ErrorCode.EMBEDDER_RATE_LIMITED,
        ErrorCode.EMBED_TIMEOUT,
        ErrorCode.INDEX_UNAVAILABLE,
        ErrorCode.STAGE_TIMEOUT,
        ErrorCode.STALLED,
        ErrorCode.INTERNAL_ERROR,
    }
)


def is_retryable(code: ErrorCode) -> bool:
    return code in RETRYABLE


@dataclass(frozen=True)
class DocumentError:
    """The ``error`` object of a Document: code, message, retryable (and what it wraps)."""

    code: ErrorCode
    message: str
    cause: DocumentError | None = None

    @property
    def retryable(self) -> bool:
        return is_retryable(self.code)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "code": self.code.value,
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.cause is not None:
            data["cause"] = self.cause.to_json()
        return data


class ProcessingError(Exception):
    """Raised by a processing stage with the code the document should fail (or retry) with."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_document_error(self) -> DocumentError:
        return DocumentError(self.code, self.message)


@dataclass
class ApiError(Exception):
    """An HTTP error with a stable ``error.code``; rendered as ``{"error": {...}}``."""

    status_code: int
    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}
