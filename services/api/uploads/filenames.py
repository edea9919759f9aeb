"""Filename sanitising: no path parts, no control characters, bounded length."""

from __future__ import annotations

import unicodedata
from typing import Final

MAX_FILENAME_BYTES: Final = 255
MAX_ORIGINAL_CHARS: Final = 1024
FALLBACK_NAME: Final = "upload"


def _strip_controls(value: str) -> str:
    return "".join(ch for ch in value if unicodedata.category(ch)[0] != "C")


def original_for_display(raw: str | None) -> str:
    """The client's name as given, minus control characters, bounded."""
    return _strip_controls(raw or "")[:MAX_ORIGINAL_CHARS] or FALLBACK_NAME


def sanitize_filename(raw: str | None) -> str:
    """A safe leaf name: last path component, no controls, no leading dots, ≤ 255 UTF-8 bytes."""
    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("\\", "/").split("/")[-1]
    name = _strip_controls(name).strip().lstrip(".").strip()
    if not name:
        return FALLBACK_NAME
    if len(name.encode()) <= MAX_FILENAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext.encode()) > 16:
        stem, ext = name, ""
    suffix = f".{ext}" if ext else ""
    budget = MAX_FILENAME_BYTES - len(suffix.encode())
    stem_bytes = stem.encode()[:budget]
    return stem_bytes.decode("utf-8", errors="ignore").rstrip() + suffix
