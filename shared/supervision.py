"""What ``kbingest up`` reports about the processes it supervises: one small JSON file in the data dir.

``up`` writes it whenever a process exits or is restarted; ``kbingest doctor`` reads it from the
data dir, and the API (started by ``up`` with ``STATUS_FILE_ENV`` set) adds it to ``/v1/pipeline``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Final

from pydantic import BaseModel, Field

STATUS_FILENAME: Final = "up-status.json"
# Set by `up` for its services only, so an API not started by `up` never reports a stale file.
STATUS_FILE_ENV: Final = "KBINGEST_UP_STATUS_FILE"


class SupervisedProcess(BaseModel):
    name: str
    pid: int | None = Field(description="null while it waits to be restarted")
    running: bool
    restarts: int = Field(description="restarts since `kbingest up` started")
    recent_restarts: int = Field(description="restarts within the crash-loop window")
    crash_looping: bool = Field(description="too many restarts within the window; still retried with capped backoff")
    last_exit: str | None = Field(description="how it last ended: 'exit code 1', 'signal SIGKILL', 'not running'")
    last_exit_at: datetime | None
    next_restart_at: datetime | None


class SupervisorStatus(BaseModel):
    """``kbingest up``'s view of its children: restarted with backoff, crash loops shown, never hidden."""

    pid: int = Field(description="the `kbingest up` process")
    updated_at: datetime
    restarts: int
    crash_window_s: float
    processes: list[SupervisedProcess]


def write_status(path: Path, status: SupervisorStatus) -> None:
    """Replace the file atomically, so a reader never sees half of it."""
    draft = path.with_name(path.name + ".tmp")
    draft.write_text(status.model_dump_json(indent=2) + "\n", encoding="utf-8")
    draft.replace(path)


def read_status(path: Path | None) -> SupervisorStatus | None:
    """The status at ``path``; None when there is no path or no file (not running under ``up``)."""
    if path is None:
        return None
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return SupervisorStatus.model_validate_json(raw)


def status_path_from_env(environ: Mapping[str, str]) -> Path | None:
    value = environ.get(STATUS_FILE_ENV)
    return Path(value) if value else None


def supervisor_alive(status: SupervisorStatus) -> bool:
    """Whether the ``up`` that wrote it still runs (a ``kill -9``'d ``up`` leaves its file behind)."""
    try:
        os.kill(status.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
