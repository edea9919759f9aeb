"""The processors table: register, heartbeat, mark ready, mark stopped (so absence is visible)."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Final

from sqlalchemy import text

from shared.db import Database

REGISTER: Final = text(
    """
    INSERT INTO processors (id, hostname, pid, concurrency) VALUES (:id, :hostname, :pid, :concurrency)
    """
)
# Liveness of the process itself, independent of any document lease.
TOUCH: Final = text("UPDATE processors SET last_seen = now() WHERE id = :id")
MARK_READY: Final = text("UPDATE processors SET ready_at = coalesce(ready_at, now()), last_seen = now() WHERE id = :id")
MARK_STOPPED: Final = text("UPDATE processors SET stopped_at = now(), last_seen = now() WHERE id = :id")


def new_processor_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Registry:
    def __init__(self, db: Database, processor_id: str, concurrency: int) -> None:
        self._db = db
        self.processor_id = processor_id
        self._concurrency = concurrency
        self.registered = False

    async def register(self) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(
                REGISTER,
                {
                    "id": self.processor_id,
                    "hostname": socket.gethostname(),
                    "pid": os.getpid(),
                    "concurrency": self._concurrency,
                },
            )
        self.registered = True

    async def touch(self) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(TOUCH, {"id": self.processor_id})

    async def mark_ready(self) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(MARK_READY, {"id": self.processor_id})

    async def mark_stopped(self) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(MARK_STOPPED, {"id": self.processor_id})
