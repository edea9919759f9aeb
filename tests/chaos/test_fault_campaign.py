"""Fault campaign: the real services as processes, a mixed workload, seeded random faults, and an invariant
checker that reads Postgres, the bucket and the vector store directly (docs/chaos.md).

The default suite runs a short campaign (``SHORT_WINDOW_S`` of faults, about two minutes in all);
``make chaos DURATION=30m SEED=…`` runs a long one. ``SEED`` replays a run's fault sequence; without
it a seed is drawn and printed. The campaign runs once per module; each test below is one invariant,
so a known defect can be marked on its own test without hiding the others.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from tests.support.chaos_report import Report
from tests.support.chaos_run import parse_duration, run_campaign, summary

SHORT_WINDOW_S = 60.0
LONG_DEFAULT = "5m"
# The campaign runs inside the first test's setup: its timeout covers start-up, the window, the
# settle (up to 240 s) and the checks, with room for a loaded machine.
TIMEOUT_S = parse_duration(os.environ.get("DURATION") or LONG_DEFAULT) + 1800

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("chaos-campaign"), pytest.mark.timeout(TIMEOUT_S)]


def _seed() -> int:
    return int(os.environ["SEED"]) if os.environ.get("SEED") else random.SystemRandom().randrange(1, 10**6)


@pytest.fixture(
    scope="module",
    params=[pytest.param("short"), pytest.param("long", marks=pytest.mark.chaos)],
)
def campaign(request: pytest.FixtureRequest) -> Iterator[Report]:
    long_run = request.param == "long"
    window = parse_duration(os.environ.get("DURATION") or LONG_DEFAULT) if long_run else SHORT_WINDOW_S
    report = run_campaign(_seed(), window, long_run=long_run, only=os.environ.get("CHAOS_FAULTS", ""))
    summary(report)
    yield report


def _items(report: Report, *invariants: str) -> list[str]:
    return [f"{i}: {item}" for i in invariants for item in report.findings.items.get(i, [])]


def _explain(report: Report, what: list[str]) -> str:
    return f"SEED={report.seed}: " + "\n".join(what[:20]) + "\n\nfaults:\n" + report.fault_log()


def test_the_harness_ran_its_faults(campaign: Report) -> None:
    assert not campaign.harness_errors, _explain(campaign, campaign.harness_errors)
    assert campaign.faults, "no fault was injected"
    assert campaign.findings.stats["accepted"] > 0, "no upload was accepted"


# One case per invariant: the checker's finding kinds that break it. A known defect is marked on its case
# (``pytest.param(..., marks=pytest.mark.xfail(...))``) without hiding the others.
INVARIANTS = [
    pytest.param(
        (
            "accepted upload has no row",
            "ready without all its points",
            "live row without its object",
            "acknowledged event never received",
        ),
        id="no-accepted-upload-is-lost",
    ),
    pytest.param(
        ("not terminal at the end", "failed without an error code"),
        id="every-document-ends-ready-or-failed-with-a-code",
    ),
    pytest.param(("ready with extra points or versions", "search returned a chunk twice"), id="no-duplicates"),
    pytest.param(("points without a ready document of that version",), id="no-orphan-points"),
    pytest.param(("object without a live row", "deleted document still has its object"), id="no-orphan-objects"),
    pytest.param(("acknowledged deletion not done",), id="acknowledged-deletions-happen"),
    pytest.param(
        ("live document in a deleted KB", "points of a live document in a deleted KB"),
        id="no-live-document-in-a-deleted-kb",
    ),
    pytest.param(("search returned a deleted document",), id="search-never-returns-a-deleted-document"),
    pytest.param(("event overdue",), id="no-event-waits-past-its-due-time"),
    pytest.param(("dead letter that is no refusal",), id="dead-letters-only-for-refusals"),
]


@pytest.mark.parametrize("finding_kinds", INVARIANTS)
def test_the_invariant_holds(campaign: Report, finding_kinds: tuple[str, ...]) -> None:
    found = _items(campaign, *finding_kinds)
    assert not found, _explain(campaign, found)


def test_connections_within_the_budget(campaign: Report) -> None:
    over = campaign.monitor["connection_violations"]
    assert not over, _explain(campaign, over)


def test_no_service_exits_by_itself(campaign: Report) -> None:
    exits = [
        f"{e['service']} exited {e['returncode']} at {e['at_s']} s:\n{e['log'][-1500:]}"
        for e in campaign.monitor["unexpected_exits"]
    ]
    assert not exits, _explain(campaign, exits)


def test_postgres_restarts_recover(campaign: Report) -> None:
    slow = [f"{f.at_s} s {f.kind}: {f.note}" for f in campaign.faults if f.kind.startswith("postgres") and f.note]
    assert not slow, _explain(campaign, slow)
