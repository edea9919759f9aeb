"""``kbingest sync``'s planner: local files and the KB's documents in, one step per name out."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from services.cli.sync_plan import (
    Action,
    LocalFile,
    RemoteDoc,
    Skipped,
    idempotency_key,
    normalise_name,
    plan,
    skip_reason,
)


def _file(name: str, sha: str) -> LocalFile:
    return LocalFile(name, Path("/folder") / name, 10, sha)


def _doc(name: str, sha: str, status: str = "ready", *, original: str | None = None) -> RemoteDoc:
    document: dict[str, Any] = {
        "id": f"id-{name}",
        "filename": PurePosixPath(name).name,
        "original_filename": name if original is None else original,
        "sha256": sha,
        "status": status,
    }
    return RemoteDoc.from_document(document)


def _actions(steps: list[Any]) -> dict[str, Action]:
    return {step.name: step.action for step in steps}


def test_new_changed_unchanged_and_gone() -> None:
    local = [_file("a.md", "1"), _file("b.txt", "2"), _file("docs/c.txt", "3")]
    remote = [_doc("b.txt", "2"), _doc("docs/c.txt", "old"), _doc("gone.pdf", "9")]
    steps = plan(local, remote, delete=False)
    assert _actions(steps) == {"a.md": Action.UPLOAD, "b.txt": Action.UNCHANGED, "docs/c.txt": Action.REPLACE}
    replace = next(s for s in steps if s.action is Action.REPLACE)
    assert replace.remote is not None and replace.remote.id == "id-docs/c.txt" and replace.local == local[2]
    with_delete = plan(local, remote, delete=True)
    assert _actions(with_delete)["gone.pdf"] is Action.DELETE
    assert [s.name for s in with_delete] == sorted(s.name for s in with_delete)


def test_everything_in_step_plans_nothing_but_unchanged() -> None:
    local = [_file("a.md", "1"), _file("sub/b.txt", "2")]
    remote = [_doc("a.md", "1"), _doc("sub/b.txt", "2")]
    assert set(_actions(plan(local, remote, delete=True)).values()) == {Action.UNCHANGED}


def test_documents_being_deleted_count_as_absent() -> None:
    steps = plan(
        [_file("a.md", "1")], [_doc("a.md", "1", status="deleting"), _doc("x.md", "2", "deleting")], delete=True
    )
    assert _actions(steps) == {"a.md": Action.UPLOAD}


def test_a_document_uploaded_under_its_leaf_name_matches_a_top_level_file_only() -> None:
    # `kbingest upload` and the UI send the bare file name; a browser may send other spellings.
    remote = [_doc("report.pdf", "1", original="report.pdf"), _doc("notes.md", "2", original="C:\\fake\\other.md")]
    assert remote[1].name == "notes.md"
    steps = plan([_file("report.pdf", "1"), _file("notes.md", "2")], remote, delete=True)
    assert set(_actions(steps).values()) == {Action.UNCHANGED}


def test_two_files_with_one_document_name_conflict() -> None:
    steps = plan([_file("a/x.txt", "1"), _file("b/x.txt", "2")], [], delete=False)
    assert _actions(steps) == {"a/x.txt": Action.UPLOAD, "b/x.txt": Action.CONFLICT}
    conflict = next(s for s in steps if s.action is Action.CONFLICT)
    assert "'x.txt'" in conflict.reason and "'a/x.txt'" in conflict.reason


def test_a_new_file_cannot_take_the_name_of_a_document_that_stays() -> None:
    remote = [_doc("old/x.txt", "1")]
    kept = plan([_file("new/x.txt", "2")], remote, delete=False)
    assert _actions(kept) == {"new/x.txt": Action.CONFLICT}
    # With --delete the old document goes first, which frees its name.
    moved = plan([_file("new/x.txt", "2")], remote, delete=True)
    assert _actions(moved) == {"new/x.txt": Action.UPLOAD, "old/x.txt": Action.DELETE}


def test_a_skipped_file_keeps_its_document() -> None:
    steps = plan([], [_doc("data.bin", "1")], delete=True, skipped=[Skipped("data.bin", "not a type")])
    assert _actions(steps) == {"data.bin": Action.KEEP}


@pytest.mark.parametrize(
    ("relative", "skipped"),
    [
        ("a.md", False),
        ("REPORT.PDF", False),
        ("README", False),
        ("sub/deck.pptx", False),
        (".env", True),
        (".git/config", True),
        ("sub/.hidden.md", True),
        ("song.wav", True),
        ("archive.zip", True),
    ],
)
def test_what_is_skipped(relative: str, skipped: bool) -> None:
    assert (skip_reason(PurePosixPath(relative)) is not None) is skipped


def test_names_have_one_spelling() -> None:
    assert normalise_name("./Cafe\u0301/x.md") == "Caf\u00e9/x.md"
    assert normalise_name("a\\b.md") == "a/b.md"


def test_idempotency_keys_are_stable_and_distinct() -> None:
    assert idempotency_key("kb", "a.md", "1") == idempotency_key("kb", "a.md", "1")
    assert (
        len(
            {
                idempotency_key("kb", "a.md", "1"),
                idempotency_key("kb", "a.md", "2"),
                idempotency_key("kb2", "a.md", "1"),
            }
        )
        == 3
    )
    assert len(idempotency_key("kb", "x" * 1000, "1")) <= 200  # the API's header limit
