"""``kbingest up`` as a process supervisor: restart what dies with backoff, say loudly when it keeps dying."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Protocol

import structlog

from shared.backoff import backoff_s
from shared.supervision import SupervisedProcess, SupervisorStatus, write_status

RESTART_BASE_S: Final = 1.0
RESTART_MAX_S: Final = 30.0
# A process that ran this long before it died was healthy: its next restart starts the backoff over.
STABLE_AFTER_S: Final = 60.0
CRASH_LOOP_RESTARTS: Final = 5
CRASH_LOOP_WINDOW_S: Final = 120.0
CHECK_INTERVAL_S: Final = 0.5

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Exit:
    """How a process ended: ``returncode`` as ``Popen`` reports it (negative: a signal), None if unknown."""

    returncode: int | None = None

    @property
    def code(self) -> int | None:
        return self.returncode if self.returncode is not None and self.returncode >= 0 else None

    @property
    def signal(self) -> str | None:
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return str(-self.returncode)

    def __str__(self) -> str:
        if self.signal is not None:
            return f"signal {self.signal}"
        return "not running" if self.code is None else f"exit code {self.code}"


class Unit(Protocol):
    """A process ``up`` keeps running: a service, or an embedded dependency."""

    @property
    def name(self) -> str: ...

    def start(self) -> None: ...

    def exited(self) -> Exit | None:
        """None while it runs, else how it ended."""
        ...

    def pid(self) -> int | None: ...


@dataclass
class RestartPolicy:
    """When to restart a dead process and whether it is crash-looping; the clock is passed in."""

    base_s: float = RESTART_BASE_S
    max_s: float = RESTART_MAX_S
    stable_after_s: float = STABLE_AFTER_S
    loop_restarts: int = CRASH_LOOP_RESTARTS
    loop_window_s: float = CRASH_LOOP_WINDOW_S
    rng: random.Random | None = None
    restarts: int = 0
    # Consecutive short-lived runs: the backoff's attempt number.
    failures: int = 0
    # Sticky until a run lasts STABLE_AFTER_S: at the capped backoff the restarts per window hover
    # around the threshold, and a crash loop must not blink in and out of view.
    crash_looping: bool = False
    _times: deque[float] = field(default_factory=deque)

    def delay_after_exit(self, ran_s: float) -> float:
        """Seconds to wait before restarting a process that died after running ``ran_s``."""
        self.settle(ran_s)
        self.failures += 1
        return backoff_s(self.failures, base_s=self.base_s, max_s=self.max_s, rng=self.rng)

    def settle(self, ran_s: float) -> None:
        """A run of ``ran_s`` so far: long enough, and the backoff and the crash loop start over."""
        if ran_s >= self.stable_after_s:
            self.failures, self.crash_looping = 0, False

    def restarted(self, now: float) -> None:
        self.restarts += 1
        self._times.append(now)
        if self.recent(now) >= self.loop_restarts:
            self.crash_looping = True

    def recent(self, now: float) -> int:
        """Restarts within the crash-loop window ending at ``now``."""
        while self._times and self._times[0] <= now - self.loop_window_s:
            self._times.popleft()
        return len(self._times)


@dataclass
class _Watched:
    unit: Unit
    policy: RestartPolicy
    started_at: float
    last_exit: Exit | None = None
    last_exit_at: datetime | None = None
    # When the next restart is due (monotonic, and wall clock for the status), while the process is down.
    restart_at: float | None = None
    next_restart_at: datetime | None = None


class Supervisor:
    """Watches units that are already running; ``check()`` is one pass (restart what is due, write the status)."""

    def __init__(
        self,
        units: Sequence[Unit],
        *,
        status_path: Path,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        policy: Callable[[], RestartPolicy] = RestartPolicy,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self.status_path = status_path
        self._watched = [_Watched(unit, policy(), clock()) for unit in units]
        self._written: dict[str, object] | None = None

    def check(self) -> None:
        """Notice exits, restart the processes whose backoff is over, rewrite the status file on any change."""
        for watched in self._watched:
            now = self._clock()
            if watched.restart_at is None:
                ended = watched.unit.exited()
                if ended is not None:
                    self._exited(watched, ended, now)
                else:
                    watched.policy.settle(now - watched.started_at)
            elif now >= watched.restart_at:
                self._restart(watched, now)
        # Compared, not flagged: a crash loop also ends by itself, once the process stays up.
        status = self.status()
        content = status.model_dump(exclude={"updated_at"})
        if content != self._written:
            write_status(self.status_path, status)
            self._written = content

    def _exited(self, watched: _Watched, ended: Exit, now: float) -> None:
        delay = watched.policy.delay_after_exit(now - watched.started_at)
        watched.last_exit, watched.last_exit_at = ended, self._wall()
        self._schedule(watched, now, delay)
        log.warning(
            "up.service_exited",
            name=watched.unit.name,
            exit_code=ended.code,
            signal=ended.signal,
            ran_s=round(now - watched.started_at, 1),
            restart_in_s=round(delay, 2),
        )

    def _restart(self, watched: _Watched, now: float) -> None:
        policy, name = watched.policy, watched.unit.name
        policy.restarted(now)
        looping = policy.crash_looping
        try:
            watched.unit.start()
        # Embedded servers raise RuntimeError subclasses; Popen and pg_ctl raise OSError/SubprocessError.
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            delay = policy.delay_after_exit(0.0)
            self._schedule(watched, now, delay)
            log.error(
                "up.service_start_failed",
                name=name,
                error=f"{type(exc).__name__}: {exc}"[:300],
                restarts=policy.restarts,
                crash_looping=looping,
                restart_in_s=round(delay, 2),
            )
            return
        watched.started_at, watched.restart_at, watched.next_restart_at = now, None, None
        ended = watched.last_exit or Exit()
        fields = {
            "name": name,
            "exit_code": ended.code,
            "signal": ended.signal,
            "restarts": policy.restarts,
            "recent_restarts": policy.recent(now),
            "pid": watched.unit.pid(),
            "crash_looping": looping,
        }
        if looping:
            log.error("up.service_restarted", window_s=policy.loop_window_s, **fields)
        else:
            log.warning("up.service_restarted", **fields)

    def _schedule(self, watched: _Watched, now: float, delay: float) -> None:
        watched.restart_at = now + delay
        watched.next_restart_at = self._wall() + timedelta(seconds=delay)

    def status(self) -> SupervisorStatus:
        now = self._clock()
        processes = []
        for w in self._watched:
            down = w.restart_at is not None
            processes.append(
                SupervisedProcess(
                    name=w.unit.name,
                    pid=None if down else w.unit.pid(),
                    running=not down,
                    restarts=w.policy.restarts,
                    recent_restarts=w.policy.recent(now),
                    crash_looping=w.policy.crash_looping,
                    last_exit=None if w.last_exit is None else str(w.last_exit),
                    last_exit_at=w.last_exit_at,
                    next_restart_at=w.next_restart_at,
                )
            )
        return SupervisorStatus(
            pid=os.getpid(),
            updated_at=self._wall(),
            restarts=sum(w.policy.restarts for w in self._watched),
            crash_window_s=CRASH_LOOP_WINDOW_S,
            processes=processes,
        )

    def remove_status(self) -> None:
        self.status_path.unlink(missing_ok=True)
