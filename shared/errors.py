"""Error taxonomy: document failure codes (CONTRACT.md) and the API's error envelope."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel


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
    # A replacement whose content another document of the KB took meanwhile (one live copy per KB).
    DUPLICATE_CONTENT = "duplicate_content"


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


# --------------------------------------------------------------------------- plain words (GET /v1/errors)
# The one catalogue the CLI and the UI show people (they fetch it from the API, never keep a copy).
# A message may name the error's own fields: {message} (the server's text), {status}, {max_size}
# (its max_bytes, in a unit people read); a client fills in what the error carries.

# Why a document failed (its ``error.code``): every ErrorCode has words (a test checks it).
DOCUMENT_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: "this file type cannot be extracted",
    ErrorCode.FILE_TOO_LARGE: "the file is over the size limit",
    ErrorCode.EMPTY_FILE: "the file is empty",
    ErrorCode.EMPTY_TEXT: "no text could be extracted (a scan without a text layer, or an empty document)",
    ErrorCode.PDF_ENCRYPTED: "the PDF is password-protected",
    ErrorCode.CORRUPT_FILE: "the file is damaged or not what its type says",
    ErrorCode.EXTRACT_TIMEOUT: "extracting the text took too long",
    ErrorCode.EXTRACT_CRASHED: "the extractor crashed or ran out of memory on this file",
    ErrorCode.STORAGE_UNAVAILABLE: "the file storage was unavailable",
    ErrorCode.OBJECT_MISSING: "the stored file is missing",
    ErrorCode.EMBEDDER_UNAVAILABLE: "the embedding model was unavailable",
    ErrorCode.EMBEDDER_RATE_LIMITED: "the embedding provider refused more requests (rate limit)",
    ErrorCode.EMBED_TIMEOUT: "embedding took too long",
    ErrorCode.INDEX_UNAVAILABLE: "the search index was unavailable",
    ErrorCode.STAGE_TIMEOUT: "a processing stage took too long",
    ErrorCode.STALLED: "the processor stopped reporting progress",
    ErrorCode.MAX_ATTEMPTS_EXCEEDED: "every attempt failed",
    ErrorCode.INTERNAL_ERROR: "an unexpected error in the processor",
    ErrorCode.CANCELLED: "the batch was cancelled before this document was processed",
    ErrorCode.DUPLICATE_CONTENT: "another document of the knowledge base already has this content",
}

# What an API answer's ``error.code`` means; a code not listed here is shown with the server's message.
REQUEST_MESSAGES: dict[str, str] = {
    "unauthorized": "no API key was sent",
    "invalid_api_key": "the API key was refused (unknown or revoked)",
    "forbidden": "this API key may not access that knowledge base",
    "forbidden_scope": "this API key is limited to some knowledge bases and may not do this",
    "not_found": "not found: {message}",
    "duplicate_name": "a knowledge base with that name already exists",
    "duplicate_document": "already uploaded: a document with this name is already in this knowledge base ({status})",
    "duplicate_content": "already uploaded: the same content is already in this knowledge base ({status})",
    "not_retryable": "only failed documents can be retried",
    "document_deleting": "the document is being deleted; its content cannot be replaced",
    "version_not_found": "that version of the document does not exist",
    "version_purged": "that version's file is no longer kept (VERSION_RETENTION)",
    "file_too_large": "too large: the server accepts files up to {max_size}",
    "body_too_large": "the request is larger than the server accepts",
    "too_many_files": "too many files in one request: {message}",
    "unsupported_media_type": "unsupported file type: kbingest reads PDF, Word, PowerPoint, Excel, CSV, HTML, "
    "Markdown, text and e-mail",
    "empty_file": "the file is empty (0 bytes)",
    "validation_error": "the request was refused: {message}",
    "idempotency_key_reused": "{message}",
    "too_many_streams": "too many event streams are open with this API key; close one and try again",
    "database_unavailable": "the server's database is unavailable; try again shortly",
    "storage_unavailable": "the server's file storage is unavailable; nothing was stored; try again shortly",
    "embedder_unavailable": "search is unavailable: the embedding model does not answer; try again shortly",
    "rate_limited": "the server is busy; try again shortly",
    "internal_error": "unexpected server error (logged on the server)",
}

# Request errors that go away by themselves: the same request may succeed later.
RETRYABLE_REQUESTS: frozenset[str] = frozenset(
    {"database_unavailable", "storage_unavailable", "embedder_unavailable", "rate_limited", "too_many_streams"}
)


class ErrorMeaning(BaseModel):
    message: str
    retryable: bool


class ErrorCatalogue(BaseModel):
    """The body of ``GET /v1/errors``: request error codes and document failure codes, in plain words."""

    request: dict[str, ErrorMeaning]
    document: dict[str, ErrorMeaning]


def error_catalogue() -> ErrorCatalogue:
    return ErrorCatalogue(
        request={
            code: ErrorMeaning(message=message, retryable=code in RETRYABLE_REQUESTS)
            for code, message in REQUEST_MESSAGES.items()
        },
        document={
            code.value: ErrorMeaning(message=message, retryable=is_retryable(code))
            for code, message in DOCUMENT_MESSAGES.items()
        },
    )
