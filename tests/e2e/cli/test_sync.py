"""``kbingest sync`` run as a real command against the real stack (``kbingest up``)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cli.conftest import Run, _kbingest
from tests.support import user_stack

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group(user_stack.GROUP)]

# Long enough for a cold processor (model load, imports) on a busy 2-core machine.
PROCESSING_DEADLINE_S = 240
SUMMARY = ("added", "replaced", "deleted", "unchanged", "failed")


def _say(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def _summary(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The numbers of the summary table (the row under the header naming its columns)."""
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if all(word in line for word in SUMMARY))
    row = next(line for line in lines[header + 1 :] if any(ch.isdigit() for ch in line))
    cells = [cell.strip() for cell in row.strip("│┃ ").split("│")]
    return dict(zip(SUMMARY, map(int, cells), strict=True))


def _documents(stack: user_stack.UserStack, kb_name: str) -> dict[str, dict[str, Any]]:
    with stack.client() as http:
        kb = next(k for k in http.get("/v1/knowledge-bases").json()["items"] if k["name"] == kb_name)
        items = http.get(f"/v1/knowledge-bases/{kb['id']}/documents", params={"limit": 200}).json()["items"]
    return {doc["original_filename"]: doc for doc in items if doc["status"] != "deleting"}


def _kb_exists(stack: user_stack.UserStack, kb_name: str) -> bool:
    with stack.client() as http:
        return any(k["name"] == kb_name for k in http.get("/v1/knowledge-bases").json()["items"])


def test_sync_a_folder_then_again_then_after_a_change_and_a_removal(
    kbingest: Run, stack: user_stack.UserStack, tmp_path: Path
) -> None:
    folder = tmp_path / "notes"
    (folder / "deep").mkdir(parents=True)
    (folder / "alpha.md").write_text("# Alpha\n\nThe alpha note talks about lighthouses and the sea.\n")
    (folder / "beta.txt").write_text("Beta: a text file about mountain railways in winter.\n")
    (folder / "deep" / "gamma.md").write_text("# Gamma\n\nGamma is about bread, flour and ovens.\n")
    (folder / ".draft.md").write_text("hidden: never synced\n")
    (folder / "song.wav").write_bytes(b"RIFF0000WAVE")
    kb = stack.name("cli-sync")
    wait = ("--timeout", str(PROCESSING_DEADLINE_S))

    missing = kbingest("sync", str(folder), "--kb", kb)
    assert missing.returncode == 2, _say(missing)
    assert f"no knowledge base named '{kb}'" in missing.stderr and "--create" in missing.stderr

    dry = kbingest("sync", str(folder), "--kb", kb, "--create", "--dry-run")
    assert dry.returncode == 0, _say(dry)
    assert "3 upload" in dry.stdout and "nothing was changed" in dry.stdout and "it would be created" in dry.stdout
    assert "skipped song.wav" in dry.stdout and "skipped .draft.md" in dry.stdout
    assert not _kb_exists(stack, kb)

    first = kbingest("sync", str(folder), "--kb", kb, "--create", *wait, timeout=400)
    assert "still in progress" not in first.stderr, "documents were not processed in time:\n" + _say(first)
    assert first.returncode == 0, _say(first)
    assert _summary(first) == {"added": 3, "replaced": 0, "deleted": 0, "unchanged": 0, "failed": 0}, _say(first)
    documents = _documents(stack, kb)
    assert set(documents) == {"alpha.md", "beta.txt", "deep/gamma.md"}
    assert {doc["status"] for doc in documents.values()} == {"ready"}

    second = kbingest("sync", str(folder), "--kb", kb, "--delete", *wait)
    assert second.returncode == 0, _say(second)
    assert "plan: 3 unchanged" in second.stdout, _say(second)
    assert _summary(second) == {"added": 0, "replaced": 0, "deleted": 0, "unchanged": 3, "failed": 0}
    assert {name: (d["id"], d["version"], d["updated_at"]) for name, d in _documents(stack, kb).items()} == {
        name: (d["id"], d["version"], d["updated_at"]) for name, d in documents.items()
    }

    # The same content under another name is refused by the server: a failure that says why.
    (folder / "alpha-copy.md").write_bytes((folder / "alpha.md").read_bytes())
    copy = kbingest("sync", str(folder), "--kb", kb, *wait)
    assert copy.returncode == 1, _say(copy)
    assert _summary(copy)["failed"] == 1 and "duplicate_content" in copy.stdout, _say(copy)
    assert "the same content is already in the knowledge base as 'alpha.md'" in copy.stdout, _say(copy)
    (folder / "alpha-copy.md").unlink()

    changed = "Beta, second edition: rack railways and snow ploughs.\n"
    (folder / "beta.txt").write_text(changed)
    (folder / "alpha.md").unlink()
    before = _documents(stack, kb)
    planned = kbingest("sync", str(folder), "--kb", kb, "--delete", "--dry-run")
    assert planned.returncode == 0, _say(planned)
    assert "1 replace, 1 delete, 1 unchanged" in planned.stdout, _say(planned)
    assert _documents(stack, kb) == before and before["beta.txt"]["sha256"] == documents["beta.txt"]["sha256"]

    third = kbingest("sync", str(folder), "--kb", kb, "--delete", *wait, timeout=400)
    assert "still in progress" not in third.stderr, "the replacement was not processed in time:\n" + _say(third)
    assert third.returncode == 0, _say(third)
    assert _summary(third) == {"added": 0, "replaced": 1, "deleted": 1, "unchanged": 1, "failed": 0}, _say(third)
    after = _documents(stack, kb)
    assert set(after) == {"beta.txt", "deep/gamma.md"}
    beta = after["beta.txt"]
    assert beta["id"] == documents["beta.txt"]["id"]  # replaced in place, not deleted and uploaded again
    assert beta["sha256"] == hashlib.sha256(changed.encode()).hexdigest()
    assert beta["status"] == "ready" and beta.get("pending_version") is None

    last = kbingest("sync", str(folder), "--kb", kb, "--delete", *wait)
    assert last.returncode == 0 and "plan: 2 unchanged" in last.stdout, _say(last)


def test_a_sync_cut_by_ctrl_c_resumes_by_running_it_again(
    kbingest: Run, stack: user_stack.UserStack, tmp_path: Path
) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    names = {f"note-{i:02}.md" for i in range(12)}
    for i, name in enumerate(sorted(names)):
        (folder / name).write_text(f"# Note {i}\n\n" + f"words of note {i}, " * 400)
    kb = stack.name("cli-sync-resume")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBINGEST_")}
    env |= {"KBINGEST_URL": stack.base_url, "KBINGEST_API_KEY": stack.api_key, "COLUMNS": "200"}
    first = subprocess.Popen(
        [*_kbingest(), "sync", str(folder), "--kb", kb, "--create", "--no-wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Ctrl-C once the server holds a first file (on a fast machine the run may have ended already).
    deadline = time.monotonic() + 120
    while first.poll() is None and time.monotonic() < deadline:
        if _kb_exists(stack, kb) and _documents(stack, kb):
            break
        time.sleep(0.05)  # a polling interval, not a timing assumption
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    # 130: interrupted and said so; 0 or killed by the signal (-2): it ended before or while exiting.
    assert first.returncode in (0, 130, -signal.SIGINT), f"exit {first.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    if first.returncode == 130:
        assert "run the same command again to resume" in err and "Traceback" not in err

    again = kbingest("sync", str(folder), "--kb", kb, "--no-wait")
    assert again.returncode == 0, _say(again)
    summary = _summary(again)
    assert summary["added"] + summary["unchanged"] == len(names) and summary["failed"] == 0, _say(again)
    assert set(_documents(stack, kb)) == names  # each file once: nothing lost, nothing doubled
    last = kbingest("sync", str(folder), "--kb", kb, "--no-wait")
    assert last.returncode == 0 and f"plan: {len(names)} unchanged" in last.stdout, _say(last)


def test_a_file_that_fails_processing_fails_the_run_then_is_noted_as_unchanged(
    kbingest: Run, stack: user_stack.UserStack, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "fine.md").write_text("# Fine\n\nA note with words in it.\n")
    (folder / "blank.md").write_text(" \n\n \n")  # accepted (not empty), but no text to index
    kb = stack.name("cli-sync-failing")
    wait = ("--timeout", str(PROCESSING_DEADLINE_S))

    first = kbingest("sync", str(folder), "--kb", kb, "--create", *wait, timeout=400)
    assert "still in progress" not in first.stderr, "documents were not processed in time:\n" + _say(first)
    assert first.returncode == 1, _say(first)
    assert _summary(first) == {"added": 1, "replaced": 0, "deleted": 0, "unchanged": 0, "failed": 1}, _say(first)
    assert "blank.md" in first.stdout.split("failed")[-1] and "empty_text" in first.stdout, _say(first)

    again = kbingest("sync", str(folder), "--kb", kb, *wait)
    assert again.returncode == 0 and "plan: 2 unchanged" in again.stdout, _say(again)
    assert "note: 1 unchanged file(s) failed processing earlier: blank.md" in again.stdout, _say(again)
