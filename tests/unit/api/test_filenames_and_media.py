"""Filename sanitising and content-based media detection (no servers)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from services.api.uploads.filenames import MAX_FILENAME_BYTES, original_for_display, sanitize_filename
from services.api.uploads.media import UnsupportedMediaType, detect_media_type


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\doc.docx", "doc.docx"),
        ("  .hidden.txt  ", "hidden.txt"),
        ("tab\tand\nnewline.md", "tabandnewline.md"),
        ("", "upload"),
        (None, "upload"),
        ("/", "upload"),
        ("résumé.txt", "résumé.txt"),
    ],
)
def test_sanitize_filename(raw: str | None, expected: str) -> None:
    assert sanitize_filename(raw) == expected


def test_overlong_names_keep_their_extension_and_fit() -> None:
    name = sanitize_filename("é" * 400 + ".pdf")
    assert name.endswith(".pdf") and len(name.encode()) <= MAX_FILENAME_BYTES
    assert original_for_display("a\x00b" * 1000).startswith("abab") and len(original_for_display("x" * 5000)) == 1024


def _detect(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / "f"
    path.write_bytes(data)
    return detect_media_type(path, data[:8192], name)


def test_detects_text_family_by_content_and_name(tmp_path: Path) -> None:
    assert _detect(tmp_path, "x.md", b"# Title\n") == "text/markdown"
    assert _detect(tmp_path, "x.csv", b"a,b\n1,2\n") == "text/csv"
    assert _detect(tmp_path, "page", b"<!DOCTYPE html><html><body>hi</body></html>") == "text/html"
    assert _detect(tmp_path, "mail", b"From: a@b.c\nSubject: hi\n\nbody") == "message/rfc822"
    assert _detect(tmp_path, "x", "plain words, déjà vu".encode()) == "text/plain"
    assert _detect(tmp_path, "u16.txt", "hello".encode("utf-16")) == "text/plain"
    assert _detect(tmp_path, "cp.txt", "caf\xe9 cr\xe8me".encode("cp1252")) == "text/plain"


def test_detects_office_by_zip_parts_not_name(tmp_path: Path) -> None:
    path = tmp_path / "doc.bin"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document/>")
    head = path.read_bytes()[:8192]
    assert detect_media_type(path, head, "renamed.txt").endswith("wordprocessingml.document")


def test_rejects_binary_and_plain_zip(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedMediaType):
        _detect(tmp_path, "a.bin", bytes(range(256)) * 10)
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(UnsupportedMediaType):
        detect_media_type(path, path.read_bytes()[:8192], "a.zip")
    with pytest.raises(UnsupportedMediaType):
        _detect(tmp_path, "song.wav", b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(100))
