"""The relay's delivery signature: how the relay signs a delivery and how a subscriber verifies it.

A subscriber's idempotency record (the processor's inbox) is shared/inbox.py.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Final

EVENT_ID_HEADER: Final = "X-Kbingest-Event-Id"
TIMESTAMP_HEADER: Final = "X-Kbingest-Timestamp"
SIGNATURE_HEADER: Final = "X-Kbingest-Signature"
SIGNATURE_PREFIX: Final = "sha256="
DEFAULT_TOLERANCE_S: Final = 300


class SignatureError(ValueError):
    """The request is not a genuine, fresh relay delivery; answer 401."""


class MissingSignature(SignatureError):
    """A signature or timestamp header is absent or malformed."""


class ForgedSignature(SignatureError):
    """The signature does not match the body and timestamp under our secret."""


class StaleSignature(SignatureError):
    """The timestamp is outside the tolerance window (a replayed or delayed request)."""


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def sign(secret: str | bytes, timestamp: int | str, body: str | bytes) -> str:
    """The ``X-Kbingest-Signature`` value: ``sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">``."""
    message = str(timestamp).encode() + b"." + _as_bytes(body)
    return SIGNATURE_PREFIX + hmac.new(_as_bytes(secret), message, hashlib.sha256).hexdigest()


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: str | bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Raise a ``SignatureError`` unless ``headers`` carry a valid, fresh signature of ``body``."""
    lowered = {key.lower(): value for key, value in headers.items()}
    signature = lowered.get(SIGNATURE_HEADER.lower())
    timestamp = lowered.get(TIMESTAMP_HEADER.lower())
    if not signature or not timestamp:
        raise MissingSignature(f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header")
    if not signature.startswith(SIGNATURE_PREFIX):
        raise MissingSignature(f"{SIGNATURE_HEADER} must look like 'sha256=<hex>'")
    try:
        sent_at = int(timestamp)
    except ValueError as exc:
        raise MissingSignature(f"{TIMESTAMP_HEADER} must be unix seconds, got {timestamp[:40]!r}") from exc
    # Compare before checking freshness so a forged request learns nothing about our clock.
    if not hmac.compare_digest(sign(secret, sent_at, body), signature.strip()):
        raise ForgedSignature("signature does not match the body and timestamp")
    skew = abs((time.time() if now is None else now) - sent_at)
    if skew > tolerance_s:
        raise StaleSignature(f"timestamp is {skew:.0f}s away from now (tolerance {tolerance_s:.0f}s)")
