"""Credentials in subscriber URLs and error texts never reach stored errors or logs."""

from __future__ import annotations

import pytest

from services.relay.delivery import Outcome
from services.relay.outcomes import RetryPolicy, step
from shared.redact import redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:s3cret@hooks.example/v1/events?token=abc", "https://***@hooks.example/v1/events?***"),
        ("http://127.0.0.1:8002/v1/events", "http://127.0.0.1:8002/v1/events"),
        ("http://hooks.example/in?sig=1#frag", "http://hooks.example/in?***"),
        ("http://[::1", "***"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_hides_every_url_inside() -> None:
    text = "connection error posting to https://u:p@a.example/x?k=v: refused; then http://b.example/y?t=1"
    assert redact_text(text) == (
        "connection error posting to https://***@a.example/x?***: refused; then http://b.example/y?***"
    )


def test_a_failed_attempt_stores_no_credentials() -> None:
    url = "https://user:s3cret@hooks.example/v1/events?token=abc"
    outcome = Outcome("retry", 503, f"HTTP 503 from {url}: see {url}")
    result = step(url, 0, outcome, RetryPolicy(max_attempts=5, base_s=1.0, max_s=10.0))
    assert result.error is not None
    stored = repr(result.error)
    assert "s3cret" not in stored and "token=abc" not in stored
    assert result.error["subscriber"] == "https://***@hooks.example/v1/events?***"
