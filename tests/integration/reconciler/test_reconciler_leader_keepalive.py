"""The leader's lock session has TCP keepalives and timeouts: a vanished host loses the lock in seconds, not hours."""

from __future__ import annotations

import json

from services.reconciler.leader import LOCK_TIMEOUT_MS, STATEMENT_TIMEOUT_MS, failover_bound_s
from shared.pg_session import SESSION_KEEPALIVE
from shared.settings import Settings
from tests.support.reconcilers import ReconcilerFactory

# pg_settings as seen by the session that runs the query: its own values, in base units (s, ms).
OWN_SETTINGS = """
    SELECT json_object_agg(name, setting) AS settings, inet_client_addr() IS NOT NULL AS over_tcp
    FROM pg_settings WHERE name = ANY($1::text[])
"""
NAMES = [*SESSION_KEEPALIVE, "statement_timeout", "lock_timeout"]


async def test_the_lock_session_has_keepalives_and_timeouts(make_reconciler: ReconcilerFactory) -> None:
    reconciler = make_reconciler()
    assert (await reconciler.run_once()).leader

    row = await reconciler.leadership.fetchrow_as_leader(OWN_SETTINGS, NAMES)

    assert row is not None
    assert row["over_tcp"], "over a Unix socket the server ignores keepalive settings; the test needs TCP"
    in_effect = json.loads(row["settings"])
    assert in_effect == {
        "tcp_keepalives_idle": "5",
        "tcp_keepalives_interval": "2",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "10000",
        "statement_timeout": str(STATEMENT_TIMEOUT_MS),
        "lock_timeout": str(LOCK_TIMEOUT_MS),
    }


def test_a_vanished_leader_is_replaced_within_30_s_by_default() -> None:
    """The bound docs/operations.md states: the server drops the silent session, then a standby's next pass."""
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert failover_bound_s(defaults.reconcile_interval_s) == 21.0
