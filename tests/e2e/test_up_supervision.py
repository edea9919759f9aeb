"""`kbingest up` supervises its services: a SIGKILLed processor comes back, the stack stays up, Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pytest

from shared.supervision import STATUS_FILENAME, SupervisedProcess, read_status
from tests.support import servers
from tests.support.pipeline_helpers import run_cli
from tests.support.poll import until
from tests.support.up_process import STOP_TIMEOUT_S, UpProcess, alive, start_up, up_env, wait_gone

pytestmark = pytest.mark.e2e

DEADLINE_S = 240.0
T = TypeVar("T")


def _wait(what: str, probe: Callable[[], T | None], up: UpProcess, deadline_s: float = DEADLINE_S) -> T:
    def exited() -> str | None:
        return None if up.proc.poll() is None else "`kbingest up` exited"

    try:
        return until(probe, timeout_s=deadline_s, every_s=0.5, what=what, give_up=exited)
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{up.log_tail()}") from exc


def _processor(up: UpProcess) -> SupervisedProcess:
    status = read_status(up.data_dir / STATUS_FILENAME)
    assert status is not None, "`kbingest up` writes its status file once its services started"
    return next(p for p in status.processes if p.name == "processor")


def test_a_killed_processor_is_restarted_and_ctrl_c_still_stops_everything() -> None:
    data_dir = servers.scratch_dir("kbi-up-") / "data"
    up = start_up(data_dir, up_env())
    try:
        client = up.client()
        before = _processor(up)
        assert before.running and before.restarts == 0 and before.pid is not None
        old_pid, old_tree = before.pid, up.descendants(before.pid)

        os.kill(old_pid, signal.SIGKILL)

        def restarted() -> SupervisedProcess | None:
            now = _processor(up)
            return now if now.running and now.restarts == 1 and now.pid not in (None, old_pid) else None

        after = _wait("restarted processor", restarted, up)
        assert after.last_exit == "signal SIGKILL" and not after.crash_looping
        assert "up.service_restarted" in up.text() and "exited; stopping" not in up.text()
        _wait("end of the killed processor's children", lambda: True if not any(map(alive, old_tree)) else None, up)

        def registered() -> dict[str, Any] | None:
            body: dict[str, Any] = client.get("/v1/pipeline").json()
            ready = [p for p in body["processors"] if p["pid"] == after.pid and p["ready_at"] and p["alive"]]
            return body if ready else None

        pipeline = _wait("ready processor with the new pid in /v1/pipeline", registered, up)
        supervisor = pipeline["supervisor"]
        assert supervisor is not None and supervisor["restarts"] == 1
        shown = next(p for p in supervisor["processes"] if p["name"] == "processor")
        assert shown["restarts"] == 1 and shown["last_exit"] == "signal SIGKILL" and shown["pid"] == after.pid
        assert httpx.get(f"{up.base_url}/readyz", timeout=30).status_code == 200

        kb = client.post("/v1/knowledge-bases", json={"name": "supervised"}).json()["id"]
        created = client.post(
            f"/v1/knowledge-bases/{kb}/documents",
            files={"file": ("after.md", b"# After the restart\n\nStill processed.", "text/markdown")},
        )
        assert created.status_code == 201, created.text
        doc = created.json()["id"]

        def finished() -> str | None:
            status: str = client.get(f"/v1/documents/{doc}").json()["status"]
            return status if status in ("ready", "failed") else None

        assert _wait("finished upload", finished, up) == "ready"

        doctor = run_cli(["doctor"], up.service_env(NO_COLOR="1"), 300)
        assert "processor restarted 1 time(s)" in doctor.stdout, doctor.stdout + doctor.stderr

        tree = up.descendants()
        assert after.pid in tree
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=STOP_TIMEOUT_S) == 0, up.log_tail()
        wait_gone(tree, what="every process of `up` to stop after Ctrl-C")
        assert not servers.EmbeddedPostgres(data_dir / "postgres", 1).running()
        assert not (data_dir / STATUS_FILENAME).exists()
    finally:
        up.stop()
