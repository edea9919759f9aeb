"""``kbingest upload|status|search`` run as real commands against the real stack (``kbingest up``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import user_stack

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group(user_stack.GROUP)]

# Long enough for the first PDFs of a cold processor (model load, imports) on a 2-core machine.
PROCESSING_DEADLINE_S = 240


def _folder(tmp_path: Path, corpus: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "to-upload"
    for target, source in files.items():
        (folder / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus / source, folder / target)
    return folder


def _say(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def test_upload_directory_reports_refusals_and_status_lists_it(
    kbingest, stack: user_stack.UserStack, corpus: Path, tmp_path: Path
) -> None:
    folder = _folder(
        tmp_path,
        corpus,
        {
            "fake-memo.pdf": "pdf/fake-memo.pdf",
            "reports/reliance-annual-report-3p.pdf": "pdf/reliance-annual-report-3p.pdf",
            "reports/audio/cantina-band-3s.wav": "unsupported/cantina-band-3s.wav",
            "empty.txt": "empty/empty.txt",
            ".hidden/skipped.pdf": "pdf/fake-memo.pdf",
        },
    )
    kb = stack.name("cli-folder")

    missing = kbingest("upload", str(folder), "--kb", kb)
    assert missing.returncode == 1, _say(missing)
    assert f"no knowledge base named '{kb}'" in missing.stderr and "--create" in missing.stderr

    result = kbingest("upload", str(folder), "--kb", kb, "--create", "--no-wait")
    assert result.returncode == 1, _say(result)
    out = result.stdout
    assert "uploaded 2 of 4 file(s), 2 refused" in out, _say(result)
    assert "skipped.pdf" not in out
    for expected in ("failed or refused", "cantina-band-3s.wav", "unsupported_media_type", "empty.txt", "empty_file"):
        assert expected in out, _say(result)
    assert "unsupported file type" in out and "the file is empty (0 bytes)" in out

    again = kbingest("upload", str(folder / "fake-memo.pdf"), "--kb", kb, "--no-wait")
    assert again.returncode == 0, _say(again)
    assert "already uploaded" in again.stdout

    overview = kbingest("status")
    assert overview.returncode == 0, _say(overview)
    kb_line = next(line for line in overview.stdout.splitlines() if f" {kb} " in line)
    assert kb_line.split("│")[-2].strip() == "2", kb_line  # total documents

    detail = kbingest("status", "--kb", kb)
    assert detail.returncode == 0, _say(detail)
    assert "fake-memo.pdf" in detail.stdout and "reliance-annual-report-3p.pdf" in detail.stdout


def test_key_file_fallback_and_refused_key(kbingest, stack: user_stack.UserStack, tmp_path: Path) -> None:
    (tmp_path / ".kbingest").mkdir()
    (tmp_path / ".kbingest" / "api_key").write_text(stack.api_key + "\n")
    from_file = kbingest("status", env={"KBINGEST_API_KEY": None}, cwd=tmp_path)
    assert from_file.returncode == 0, _say(from_file)
    assert "knowledge bases" in from_file.stdout

    refused = kbingest("status", env={"KBINGEST_API_KEY": "kbi_wrong"})
    assert refused.returncode == 1, _say(refused)
    assert "the API key was refused" in refused.stderr and "Traceback" not in refused.stderr

    nowhere = kbingest("status", env={"KBINGEST_URL": "http://127.0.0.1:9"})
    assert nowhere.returncode == 1 and "can't reach the kbingest API" in nowhere.stderr, _say(nowhere)


def test_upload_waits_until_ready_or_failed_then_search(
    kbingest, stack: user_stack.UserStack, corpus: Path, tmp_path: Path
) -> None:
    """Needs the processor: fails (exit 3, "still in progress") if documents are never processed."""
    kb = stack.name("cli-wait")
    files = [corpus / "pdf/fake-memo.pdf", corpus / "pdf/reliance-annual-report-3p.pdf"]
    encrypted = corpus / "encrypted/password-user-password.pdf"
    timeout = ("--timeout", str(PROCESSING_DEADLINE_S))

    result = kbingest("upload", *map(str, [*files, encrypted]), "--kb", kb, "--create", *timeout, timeout=400)
    assert "still in progress" not in result.stderr, "documents were not processed in time:\n" + _say(result)
    assert result.returncode == 1, _say(result)
    assert "2 ready, 1 failed, 0 refused, 0 in progress" in result.stdout, _say(result)
    assert "pdf_encrypted" in result.stdout and "the PDF is password-protected" in result.stdout

    duplicate = kbingest("upload", str(files[0]), "--kb", kb, *timeout)
    assert duplicate.returncode == 0, _say(duplicate)
    assert "ready (already uploaded)" in duplicate.stdout

    found = kbingest("search", "--kb", kb, "20,000 bottles of water", "--limit", "3")
    assert found.returncode == 0, _say(found)
    rows = [line for line in found.stdout.splitlines() if line.startswith("│")]
    assert rows and "fake-memo.pdf" in rows[0], _say(found)
