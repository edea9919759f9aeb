"""Signatures: sign/verify round trip; forged, stale, missing and malformed requests are refused."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from services.relay.delivery import Signer
from shared.signing import (
    ForgedSignature,
    MissingSignature,
    SignatureError,
    StaleSignature,
    sign,
    verify,
)

SECRET = "s3cret"
BODY = b'{"id": "e1", "type": "document.uploaded"}'
NOW = 1_800_000_000


def headers(timestamp: int = NOW, body: bytes = BODY, secret: str = SECRET) -> dict[str, str]:
    return {"X-Kbingest-Timestamp": str(timestamp), "X-Kbingest-Signature": sign(secret, timestamp, body)}


def test_sign_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, BODY) == f"sha256={expected}"
    assert sign(SECRET.encode(), str(NOW), BODY.decode()) == sign(SECRET, NOW, BODY)


def test_the_relays_keyed_signer_signs_like_shared_sign() -> None:
    signer = Signer(SECRET)
    for body in (BODY, b"", b"x" * 10_000):
        assert signer(str(NOW), body) == sign(SECRET, NOW, body)
    assert signer(str(NOW), BODY) == signer(str(NOW), BODY), "the keyed state is copied, never consumed"


def test_valid_signature_passes_with_any_header_case() -> None:
    verify(SECRET, headers(), BODY, now=NOW)
    lowered = {k.lower(): v for k, v in headers().items()}
    verify(SECRET, lowered, BODY.decode(), now=NOW + 299)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda h: {**h, "X-Kbingest-Signature": "sha256=" + "0" * 64}, ForgedSignature),
        (lambda h: headers(secret="other"), ForgedSignature),
        (lambda h: {**h, "X-Kbingest-Timestamp": str(NOW + 1)}, ForgedSignature),
        (lambda h: {"X-Kbingest-Timestamp": str(NOW)}, MissingSignature),
        (lambda h: {"X-Kbingest-Signature": h["X-Kbingest-Signature"]}, MissingSignature),
        (lambda h: {**h, "X-Kbingest-Signature": "md5=abc"}, MissingSignature),
        (lambda h: {**h, "X-Kbingest-Timestamp": "yesterday"}, MissingSignature),
        (lambda h: {}, MissingSignature),
    ],
)
def test_bad_requests_are_refused(mutate, error: type[SignatureError]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        verify(SECRET, mutate(headers()), BODY, now=NOW)


def test_tampered_body_is_forged() -> None:
    with pytest.raises(ForgedSignature):
        verify(SECRET, headers(), BODY + b" ", now=NOW)


@pytest.mark.parametrize("skew", [301, -301, 86_400])
def test_stale_or_future_timestamps_are_refused(skew: int) -> None:
    with pytest.raises(StaleSignature, match="tolerance"):
        verify(SECRET, headers(NOW - skew), BODY, now=NOW)


def test_tolerance_is_configurable_and_errors_are_value_errors() -> None:
    verify(SECRET, headers(NOW - 1000), BODY, now=NOW, tolerance_s=1000)
    with pytest.raises(ValueError):
        verify(SECRET, headers(NOW - 11), BODY, now=NOW, tolerance_s=10)
