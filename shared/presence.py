"""A processor's presence lock: how the processor names it and how the reconciler finds it in ``pg_locks``.

Each processor holds ``pg_advisory_lock(NAMESPACE, hashtext(processor_id))`` on a session of its own for
its whole life. Postgres frees a session's locks the moment the session ends, so a processor killed by
kill -9, the OOM killer or a lost node (once its socket is closed) is visible at once as a missing lock,
long before its heartbeats go stale. The key is derived from the id in SQL, so nothing is stored.

``pg_locks`` shows the two-key form as ``locktype = 'advisory'``, ``classid = NAMESPACE``,
``objid = hashtext(id)::oid`` (a negative hash reads as its two's complement) and ``objsubid = 2``,
in the lock holder's database.
"""

from __future__ import annotations

from typing import Final

# "kbpr" as a big-endian int4; the reconciler's leader lock is a one-key (objsubid = 1) lock, apart from these.
NAMESPACE: Final = int.from_bytes(b"kbpr", "big")

# Takes this processor's presence lock on the calling session; false while another session holds it.
TRY_LOCK: Final = "SELECT pg_try_advisory_lock($1::int4, hashtext($2))"

# One row for the reconciler: the presence keys held now in this database, the owners of processing
# documents with their keys, and how long the server has been up (its restart ended every session).
CHECK: Final = """
    WITH owners AS (
        SELECT DISTINCT lease_owner AS owner FROM documents
        WHERE status = 'processing' AND lease_owner IS NOT NULL
    )
    SELECT
        ARRAY(
            SELECT l.objid FROM pg_locks AS l
            WHERE l.locktype = 'advisory' AND l.classid = $1::int4::oid AND l.objsubid = 2 AND l.granted
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        ) AS held,
        ARRAY(SELECT owner FROM owners ORDER BY owner) AS owners,
        ARRAY(SELECT hashtext(owner)::oid FROM owners ORDER BY owner) AS keys,
        extract(epoch FROM now() - pg_postmaster_start_time())::float8 AS uptime_s
"""
