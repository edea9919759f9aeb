"""Backoff shape, Retry-After parsing, status classification and route matching (no servers)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from services.relay.backoff import (
    BUSY_JITTER_S,
    BUSY_RETRY_DEFAULT_S,
    BUSY_RETRY_FLOOR_S,
    BUSY_RETRY_MAX_S,
    RETRY_AFTER_CAP_S,
    busy_delay_s,
    parse_retry_after,
    retry_delay_s,
)
from services.relay.delivery import classify
from services.relay.routes import Router
from shared.backoff import backoff_s


def test_backoff_grows_exponentially_with_jitter_and_caps() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        step = min(60.0, 0.5 * 2 ** (attempt - 1))
        for _ in range(50):
            assert step / 2 <= backoff_s(attempt, base_s=0.5, max_s=60.0, rng=rng) <= step
    delays = {round(backoff_s(3, base_s=1.0, max_s=60.0, rng=rng), 6) for _ in range(20)}
    assert len(delays) > 10, "jitter spreads retries of replicas that failed together"


def test_retry_after_wins_when_longer() -> None:
    rng = random.Random(1)
    assert retry_delay_s(1, 30.0, base_s=0.01, max_s=0.1, rng=rng) == 30.0
    assert retry_delay_s(1, 0.0, base_s=1.0, max_s=1.0, rng=rng) >= 0.5
    assert retry_delay_s(1, None, base_s=1.0, max_s=1.0, rng=rng) <= 1.0


def test_parse_retry_after_seconds_and_dates() -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now) == 90.0
    assert parse_retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now=now) == 0.0
    assert parse_retry_after("99999999") == RETRY_AFTER_CAP_S
    for bad in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(bad) is None


@pytest.mark.parametrize(
    "odd",
    [
        "²",  # isdigit() is True, float() raises: once a crash of every relay replica
        "٣",  # an Arabic-Indic digit: float() would read it as 3
        "１２",  # fullwidth digits
        "1e3",
        "-1",
        "+5",
        "0x10",
        "inf",
        "NaN",
        "1_000",
        "Mon, 32 Dec 2026 25:61:00 GMT",
        "Fri, 31 Dec 99999 23:59:59 GMT",
        "\x00",
    ],
)
def test_parse_retry_after_treats_anything_but_ascii_seconds_or_a_date_as_absent(odd: str) -> None:
    assert parse_retry_after(odd) is None


def test_parse_retry_after_huge_values_are_capped() -> None:
    assert parse_retry_after("9" * 5000) == RETRY_AFTER_CAP_S
    far = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert parse_retry_after(format_datetime(far, usegmt=True)) == RETRY_AFTER_CAP_S
    # Obsolete but valid HTTP-date forms (RFC 9110 §5.6.7) are still read.
    now = datetime(1994, 11, 6, 8, 49, 0, tzinfo=UTC)
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=now) == 37.0
    assert parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now=now) == 37.0


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, "delivered"),
        (202, "delivered"),
        (204, "delivered"),
        (429, "busy"),
        (503, "retry"),
        (500, "retry"),
        (408, "retry"),
        (425, "retry"),
        (400, "rejected"),
        (401, "rejected"),
        (404, "rejected"),
        (410, "rejected"),
        (301, "rejected"),
    ],
)
def test_status_classification(status: int, kind: str) -> None:
    assert classify(status).kind == kind


def test_classification_keeps_retry_after_and_body() -> None:
    outcome = classify(503, retry_after="7", body="down for maintenance")
    assert (outcome.kind, outcome.retry_after_s, outcome.status) == ("retry", 7.0, 503)
    assert outcome.error == "HTTP 503: down for maintenance"
    busy = classify(429, retry_after="7", body="slow down")
    assert (busy.kind, busy.retry_after_s, busy.status) == ("busy", 7.0, 429)


def test_busy_delay_is_short_jittered_and_capped() -> None:
    rng = random.Random(5)
    low, high = BUSY_RETRY_DEFAULT_S
    defaults = [busy_delay_s(None, rng=rng) for _ in range(200)]
    assert all(low <= d <= high for d in defaults) and len({round(d, 6) for d in defaults}) > 100
    for asked in (0.0, 0.01):
        assert BUSY_RETRY_FLOOR_S <= busy_delay_s(asked, rng=rng) <= BUSY_RETRY_FLOOR_S + BUSY_JITTER_S
    for _ in range(50):
        assert 0.5 <= busy_delay_s(0.5, rng=rng) <= 0.5 + BUSY_JITTER_S, "never earlier than asked, below the cap"
    for asked in (1.0, 5.0, RETRY_AFTER_CAP_S):
        assert BUSY_RETRY_MAX_S <= busy_delay_s(asked, rng=rng) <= BUSY_RETRY_MAX_S + BUSY_JITTER_S


def test_routes_match_fnmatch_patterns_and_merge() -> None:
    router = Router(
        {
            "document.*": ["http://a/events", "http://b/events"],
            "document.uploaded": ["http://a/events", "http://c/events"],
            "document.indexed": [],
            "knowledge_base.?eleted": ["http://d/events"],
        }
    )
    assert router.targets("document.uploaded") == ("http://a/events", "http://b/events", "http://c/events")
    assert router.targets("document.failed") == ("http://a/events", "http://b/events")
    assert router.targets("document.indexed") == ("http://a/events", "http://b/events")
    assert router.targets("knowledge_base.deleted") == ("http://d/events",)
    assert router.targets("Document.uploaded") is None, "matching is case-sensitive"
    assert router.targets("batch.created") is None, "no pattern: unroutable"
    assert router.subscribers == ("http://a/events", "http://b/events", "http://c/events", "http://d/events")


def test_empty_route_means_nobody_needs_it() -> None:
    router = Router({"document.stage_changed": [], "document.uploaded": ["http://p/v1/events"]})
    assert router.targets("document.stage_changed") == ()
    assert router.targets("document.deleted") is None


def test_transient_errors_are_found_in_the_chain() -> None:
    import asyncpg

    from services.relay.pool import is_transient

    assert is_transient(ConnectionRefusedError()) and is_transient(TimeoutError())
    assert is_transient(asyncpg.AdminShutdownError("terminating connection"))
    assert not is_transient(asyncpg.UndefinedTableError("no outbox")) and not is_transient(ValueError())
    try:
        try:
            raise asyncpg.AdminShutdownError("terminating connection")
        except asyncpg.AdminShutdownError:
            raise ValueError("a bug") from None
    except ValueError as wrapped:
        assert not is_transient(wrapped), "from None hides the cause"
    # A connection whose protocol broke when Postgres went away (asyncpg#1069): a new one works.
    assert is_transient(asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"))
    try:
        try:
            raise asyncpg.AdminShutdownError("terminating connection")
        except asyncpg.AdminShutdownError:
            raise asyncpg.InternalClientError("cannot switch to state 15")  # noqa: B904 - asyncpg does this
    except asyncpg.InternalClientError as wrapped:
        assert is_transient(wrapped)
