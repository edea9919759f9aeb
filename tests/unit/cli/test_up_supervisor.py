"""``kbingest up`` as a supervisor: backoff, its reset, crash loops, the status file and doctor's lines."""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.cli import doctor_pipeline
from services.cli.supervisor import (
    CRASH_LOOP_RESTARTS,
    CRASH_LOOP_WINDOW_S,
    RESTART_MAX_S,
    STABLE_AFTER_S,
    Exit,
    RestartPolicy,
    Supervisor,
)
from shared.settings import Settings
from shared.supervision import STATUS_FILE_ENV, STATUS_FILENAME, SupervisorStatus, read_status, write_status


@dataclass
class FakeUnit:
    name: str
    returncode: int | None = None
    starts: int = 0
    fail_start: bool = False
    pids: list[int] = field(default_factory=lambda: [100])

    def start(self) -> None:
        self.starts += 1
        if self.fail_start:
            raise OSError("port taken")
        self.returncode = None
        self.pids.append(self.pids[-1] + 1)

    def exited(self) -> Exit | None:
        return None if self.returncode is None else Exit(self.returncode)

    def pid(self) -> int | None:
        return self.pids[-1]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _policy() -> RestartPolicy:
    return RestartPolicy(rng=random.Random(7))


def test_backoff_doubles_from_one_second_up_to_the_cap() -> None:
    policy = _policy()
    delays = [policy.delay_after_exit(ran_s=0.5) for _ in range(10)]
    steps = [min(RESTART_MAX_S, 2.0**i) for i in range(10)]
    assert all(step / 2 <= delay <= step for delay, step in zip(delays, steps, strict=True))
    assert max(delays) <= RESTART_MAX_S


def test_a_run_that_lasted_resets_the_backoff() -> None:
    policy = _policy()
    for _ in range(6):
        policy.delay_after_exit(ran_s=1.0)
    assert policy.failures == 6
    assert policy.delay_after_exit(ran_s=STABLE_AFTER_S) <= 1.0
    assert policy.failures == 1


def test_crash_loop_is_restarts_within_the_window_and_ends_when_a_run_lasts() -> None:
    policy = _policy()
    for i in range(CRASH_LOOP_RESTARTS - 1):
        policy.restarted(float(i))
    assert not policy.crash_looping
    policy.restarted(10.0)
    assert policy.crash_looping and policy.recent(10.0) == CRASH_LOOP_RESTARTS
    # Restarts leaving the window do not end it (at the capped backoff they hover around the threshold).
    assert policy.recent(10.0 + CRASH_LOOP_WINDOW_S) == 0 and policy.crash_looping
    policy.settle(STABLE_AFTER_S - 1)
    assert policy.crash_looping
    policy.settle(STABLE_AFTER_S)
    assert not policy.crash_looping and policy.failures == 0


def test_restarts_spread_beyond_the_window_are_no_crash_loop() -> None:
    policy = _policy()
    for i in range(3 * CRASH_LOOP_RESTARTS):
        policy.restarted(i * CRASH_LOOP_WINDOW_S / (CRASH_LOOP_RESTARTS - 1))
    assert not policy.crash_looping


def test_a_dead_service_is_restarted_after_its_backoff_and_shown(tmp_path: Path) -> None:
    clock, unit, other = Clock(), FakeUnit("processor"), FakeUnit("api")
    status_path = tmp_path / STATUS_FILENAME
    supervisor = Supervisor([other, unit], status_path=status_path, clock=clock, policy=_policy)
    supervisor.check()
    first = read_status(status_path)
    assert first is not None and first.restarts == 0 and all(p.running for p in first.processes)

    unit.returncode = -9
    supervisor.check()
    down = read_status(status_path)
    assert down is not None
    processor = down.processes[1]
    assert not processor.running and processor.pid is None and processor.last_exit == "signal SIGKILL"
    assert processor.next_restart_at is not None and unit.starts == 0

    clock.now += 1.0  # the first delay is at most RESTART_BASE_S
    supervisor.check()
    up = read_status(status_path)
    assert up is not None and unit.starts == 1 and other.starts == 0
    processor = up.processes[1]
    assert processor.running and processor.pid == 101 and processor.restarts == 1 and not processor.crash_looping
    assert up.restarts == 1 and up.pid == os.getpid()


def test_a_crash_loop_is_reported_and_still_retried_with_the_capped_backoff(tmp_path: Path) -> None:
    clock, unit = Clock(), FakeUnit("processor")
    supervisor = Supervisor([unit], status_path=tmp_path / STATUS_FILENAME, clock=clock, policy=_policy)
    for _ in range(CRASH_LOOP_RESTARTS + 3):
        unit.returncode = 1
        supervisor.check()
        clock.now += RESTART_MAX_S / 10
        while unit.returncode is not None:
            clock.now += 1.0
            supervisor.check()
    status = supervisor.status()
    (processor,) = status.processes
    assert processor.crash_looping and processor.restarts == CRASH_LOOP_RESTARTS + 3
    assert processor.last_exit == "exit code 1" and processor.running
    # A crash loop is retried forever, at most RESTART_MAX_S apart.
    unit.returncode = 1
    supervisor.check()
    clock.now += RESTART_MAX_S
    supervisor.check()
    assert unit.starts == CRASH_LOOP_RESTARTS + 4
    # Once it stays up, the status file says so without any new event.
    clock.now += STABLE_AFTER_S
    supervisor.check()
    after = read_status(tmp_path / STATUS_FILENAME)
    assert after is not None and not after.processes[0].crash_looping


def test_a_failed_start_is_retried(tmp_path: Path) -> None:
    clock, unit = Clock(), FakeUnit("postgres", returncode=None, fail_start=True)
    supervisor = Supervisor([unit], status_path=tmp_path / STATUS_FILENAME, clock=clock, policy=_policy)
    unit.returncode = 0
    supervisor.check()
    for _ in range(3):
        clock.now += RESTART_MAX_S
        supervisor.check()
    assert unit.starts == 3 and not supervisor.status().processes[0].running
    unit.fail_start = False
    clock.now += RESTART_MAX_S
    supervisor.check()
    assert supervisor.status().processes[0].running


def test_exit_descriptions() -> None:
    assert str(Exit(-9)) == "signal SIGKILL" and Exit(-9).code is None and Exit(-9).signal == "SIGKILL"
    assert str(Exit(3)) == "exit code 3" and Exit(3).signal is None
    assert str(Exit()) == "not running"


def _write(path: Path, *, pid: int, restarts: int, looping: bool) -> None:
    now = datetime.now(UTC)
    process = {
        "name": "processor",
        "pid": 42,
        "running": True,
        "restarts": restarts,
        "recent_restarts": restarts,
        "crash_looping": looping,
        "last_exit": "signal SIGKILL" if restarts else None,
        "last_exit_at": now if restarts else None,
        "next_restart_at": None,
    }
    status = SupervisorStatus.model_validate(
        {"pid": pid, "updated_at": now, "restarts": restarts, "crash_window_s": 120.0, "processes": [process]}
    )
    write_status(path, status)


@pytest.mark.parametrize(
    ("restarts", "looping", "expected"),
    [(0, False, "OK"), (2, False, "WARN"), (6, True, "FAIL")],
)
def test_doctor_reports_the_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restarts: int, looping: bool, expected: str
) -> None:
    monkeypatch.delenv(STATUS_FILE_ENV, raising=False)
    _write(tmp_path / STATUS_FILENAME, pid=os.getpid(), restarts=restarts, looping=looping)
    (result,) = asyncio.run(doctor_pipeline.check_supervisor(Settings(_env_file=None, data_dir=tmp_path)))  # type: ignore[call-arg]  # pydantic-settings' own kwarg
    assert result.status == expected
    assert "processor" in result.detail
    if restarts:
        assert "signal SIGKILL" in result.detail


def test_doctor_ignores_the_file_of_an_up_that_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STATUS_FILE_ENV, raising=False)
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]  # pydantic-settings' own kwarg
    assert asyncio.run(doctor_pipeline.check_supervisor(settings)) == []
    _write(tmp_path / STATUS_FILENAME, pid=_dead_pid(), restarts=3, looping=True)
    assert asyncio.run(doctor_pipeline.check_supervisor(settings)) == []


def test_doctor_checks_every_member_of_a_group() -> None:
    closed = [f"http://127.0.0.1:{port}/v1/events" for port in (1, 2)]
    settings = Settings(_env_file=None, relay_routes={"*": ["|".join(closed)]})  # type: ignore[call-arg]  # pydantic-settings' own kwarg
    lines = [r for r in asyncio.run(doctor_pipeline.check_routes(settings)) if r.name == "subscriber"]
    assert [line.detail.split(":")[0:3] for line in lines] == [url.split(":")[0:3] for url in closed]
    assert not any(line.ok for line in lines)


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)
