"""Signed calls between kbingest processes (the API's internal vector store), under their own secret.

The MAC covers method, path, timestamp and the body's SHA-256, which travels in a header: the
receiver checks the signature before it reads a byte of the body, then checks the body against
the signed digest as it streams in. The relay's secret is a different one (every event subscriber
holds that), so a relay signature never opens these endpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from shared.settings import Settings
from shared.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError, sign, verify

DIGEST_HEADER: Final = "X-Kbingest-Content-SHA256"
SECRET_FILE: Final = "internal_secret"


class DigestMismatch(SignatureError):
    """The body is not the one whose digest was signed."""


def _signed_message(method: str, path: str, digest: str) -> str:
    # The timestamp is prepended by ``sign``; none of these parts can contain a newline.
    return f"{method.upper()}\n{path}\n{digest}"


def sign_request(secret: str, method: str, path: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """The headers that authenticate ``method path`` with ``body``."""
    digest = hashlib.sha256(body).hexdigest()
    timestamp = int(time.time() if now is None else now)
    return {
        TIMESTAMP_HEADER: str(timestamp),
        DIGEST_HEADER: digest,
        SIGNATURE_HEADER: sign(secret, timestamp, _signed_message(method, path, digest)),
    }


def verify_request(secret: str, method: str, path: str, headers: Mapping[str, str]) -> str:
    """Check a request's signature from its headers alone; returns the signed body digest.

    Raises ``SignatureError`` (missing, forged, stale); the caller then checks the body with
    ``BodyDigest`` against the returned digest.
    """
    digest = next((value for name, value in headers.items() if name.lower() == DIGEST_HEADER.lower()), "")
    if len(digest) != 64:
        raise SignatureError(f"missing or malformed {DIGEST_HEADER} header")
    verify(secret, headers, _signed_message(method, path, digest))
    return digest


class BodyDigest:
    """Hashes a body as it streams in and says whether it is the signed one."""

    def __init__(self, expected: str) -> None:
        self._expected = expected
        self._hash = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)

    def check(self) -> None:
        if not secrets.compare_digest(self._hash.hexdigest(), self._expected):
            raise DigestMismatch("the body does not match its signed digest")


def internal_secret(settings: Settings) -> str:
    """``INTERNAL_SECRET``, else the data dir's own: generated once, shared by every local process."""
    if settings.internal_secret is not None:
        return settings.internal_secret.get_secret_value()
    return data_dir_secret(settings.data_dir)


def data_dir_secret(data_dir: Path) -> str:
    """Read ``DATA_DIR/internal_secret``, creating it first if needed (processes may race to it)."""
    path = data_dir / SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        draft = data_dir / f".{SECRET_FILE}.{os.getpid()}"
        draft.write_text(secrets.token_urlsafe(32) + "\n")
        draft.chmod(0o600)
        # link() never replaces: the first process to publish its secret wins, the others read it.
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
        draft.unlink()
    return path.read_text().strip()
