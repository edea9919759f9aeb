"""Media-type detection from content (and the name only where content can't tell)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from services.api.uploads.zipsniff import MAX_ENTRIES, BadZip, TooManyEntries, list_zip
from shared.media_types import CSV, DOCX, EML, HTML, MARKDOWN, PDF, PPTX, TEXT, XLSX

_OOXML_BY_EXT: Final = {".docx": DOCX, ".pptx": PPTX, ".xlsx": XLSX}
_OOXML_BY_PART: Final = (("word/", DOCX), ("ppt/", PPTX), ("xl/", XLSX))
_TEXT_BY_EXT: Final = {
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".csv": CSV,
    ".html": HTML,
    ".htm": HTML,
    ".eml": EML,
    ".txt": TEXT,
    ".text": TEXT,
}
_OLE_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_EMAIL_HEADERS: Final = (b"from:", b"received:", b"mime-version:", b"return-path:", b"message-id:", b"subject:")


class UnsupportedMediaType(Exception):
    """The content is not something the processor can extract."""


def _extension(filename: str) -> str:
    dot = filename.rfind(".")
    return filename[dot:].lower() if dot > 0 else ""


def _decode_head(head: bytes) -> str | None:
    """Decode the first bytes as text if they look like text (UTF-8/16 or a single-byte charset)."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return head[2:].decode("utf-16-le" if head[:2] == b"\xff\xfe" else "utf-16-be", errors="ignore")
    if b"\x00" in head:
        return None
    text = head.decode("utf-8", errors="ignore") if _mostly_utf8(head) else head.decode("cp1252", errors="replace")
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f\x1b")
    return None if controls > max(4, len(text) // 100) else text


def _mostly_utf8(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 4  # a character cut at the end of the sample
    return True


def detect_media_type(path: Path, head: bytes, filename: str) -> str:
    """Return the media type we will extract ``path`` as, or raise UnsupportedMediaType.

    Blocking (a ZIP's directory is read from disk): call it from a worker thread.
    """
    ext = _extension(filename)
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith(b"PK\x03\x04"):
        return _ooxml_type(path, ext)
    if head.startswith(_OLE_MAGIC):
        # Encrypted or legacy Office container: accepted under its OOXML name so processing
        # can report precisely why it can't be read.
        if ext in _OOXML_BY_EXT:
            return _OOXML_BY_EXT[ext]
        raise UnsupportedMediaType("legacy Office (OLE) files are not supported; save as DOCX/PPTX/XLSX")
    text = _decode_head(head)
    if text is None:
        raise UnsupportedMediaType("binary content of a type we can't extract")
    if ext in _TEXT_BY_EXT:
        return _TEXT_BY_EXT[ext]
    lowered = text.lstrip("\ufeff \t\r\n").lower()
    if lowered.startswith(("<!doctype html", "<html")) or "<html" in lowered[:1024]:
        return HTML
    if lowered.encode()[:200].startswith(_EMAIL_HEADERS):
        return EML
    return TEXT


def _ooxml_type(path: Path, ext: str) -> str:
    try:
        listing = list_zip(path, prefixes=tuple(prefix for prefix, _ in _OOXML_BY_PART))
    except TooManyEntries as exc:
        raise UnsupportedMediaType(
            f"a ZIP archive with more than {MAX_ENTRIES} entries is not a document we accept ({exc})"
        ) from exc
    except BadZip as exc:
        if ext in _OOXML_BY_EXT:
            return _OOXML_BY_EXT[ext]  # damaged OOXML: processing reports corrupt_file
        raise UnsupportedMediaType("a ZIP archive that is not a DOCX, PPTX or XLSX") from exc
    if listing.has_content_types:
        for prefix, media_type in _OOXML_BY_PART:
            if prefix in listing.prefixes:
                return media_type
    raise UnsupportedMediaType("a ZIP archive that is not a DOCX, PPTX or XLSX")
