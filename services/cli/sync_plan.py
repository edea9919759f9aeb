"""What ``kbingest sync`` will do: local files and the KB's documents in, one step per name out (pure).

A file is known by its path relative to the synced folder (POSIX, NFC), sent as the upload's file
name. The server keeps only the last component as the document's ``filename`` (unique in a KB) and
the name as sent as ``original_filename``; so a document's sync name is its ``original_filename``
when that ends in its ``filename``, else its ``filename`` (uploaded some other way).
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, Final

# The extensions the server extracts (services/api/uploads/media.py sniffs content; these are the
# names it reads). A file without an extension is sent too: the server recognises text by content.
SUPPORTED_SUFFIXES: Final = frozenset(
    {".pdf", ".docx", ".pptx", ".xlsx", ".csv", ".html", ".htm", ".md", ".markdown", ".txt", ".text", ".eml"}
)
IDEMPOTENCY_PREFIX: Final = "kbingest-sync-"


class Action(StrEnum):
    UPLOAD = "upload"
    REPLACE = "replace"
    DELETE = "delete"
    UNCHANGED = "unchanged"
    KEEP = "keep"  # a document whose file is present but skipped (never deleted for that)
    CONFLICT = "conflict"  # cannot be uploaded under its name: fails without a request


@dataclass(frozen=True)
class LocalFile:
    name: str  # relative POSIX path, NFC
    path: Path
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


@dataclass(frozen=True)
class RemoteDoc:
    id: str
    name: str  # the sync name, see the module docstring
    filename: str
    sha256: str
    status: str
    content_version: int = 0

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> RemoteDoc:
        filename = str(document["filename"])
        original = normalise_name(str(document.get("original_filename") or ""))
        name = original if original and PurePosixPath(original).name == filename else normalise_name(filename)
        version = int(document.get("content_version") or 0)
        return cls(str(document["id"]), name, filename, str(document["sha256"]), str(document["status"]), version)


@dataclass(frozen=True)
class Step:
    action: Action
    name: str
    local: LocalFile | None = None
    remote: RemoteDoc | None = None
    reason: str = ""


def normalise_name(raw: str) -> str:
    """One spelling per name: NFC (macOS writes NFD), forward slashes, no leading ``./`` or ``/``."""
    parts = [p for p in unicodedata.normalize("NFC", raw).replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts)


def leaf(name: str) -> str:
    """The document ``filename`` the server will give an upload called ``name``."""
    return PurePosixPath(name).name


def skip_reason(relative: PurePosixPath) -> str | None:
    """Why a file under the folder is not synced, or None: hidden entries and unreadable types."""
    if any(part.startswith(".") for part in relative.parts):
        return "hidden"
    if relative.suffix and relative.suffix.lower() not in SUPPORTED_SUFFIXES:
        return f"not a type kbingest reads ({relative.suffix})"
    return None


def idempotency_key(*parts: str) -> str:
    """Stable across runs, so a run cut short and started again is answered with what was done."""
    return IDEMPOTENCY_PREFIX + hashlib.sha256(":".join(parts).encode()).hexdigest()


def plan(
    local: Iterable[LocalFile],
    remote: Iterable[RemoteDoc],
    *,
    delete: bool,
    skipped: Iterable[Skipped] = (),
) -> list[Step]:
    """One step per local file and per document, sorted by name.

    Documents being deleted count as absent. Two files whose last path components are equal cannot
    both be documents (``filename`` is unique in a KB): the first by name is planned, the others
    are conflicts; likewise a new file whose ``filename`` belongs to a document that stays.
    """
    documents = {doc.name: doc for doc in remote if doc.status != "deleting"}
    skipped_names = {item.name for item in skipped}
    files = sorted(local, key=lambda f: f.name)
    steps: list[Step] = []
    for file in files:
        doc = documents.get(file.name)
        if doc is None:
            steps.append(Step(Action.UPLOAD, file.name, local=file))
        elif doc.sha256 == file.sha256:
            steps.append(Step(Action.UNCHANGED, file.name, local=file, remote=doc))
        else:
            steps.append(Step(Action.REPLACE, file.name, local=file, remote=doc))
    local_names = {f.name for f in files}
    # filename -> the sync name holding it, for every document that stays in the KB.
    taken: dict[str, str] = {}
    for doc in sorted(documents.values(), key=lambda d: d.name):
        if doc.name in local_names:
            taken.setdefault(doc.filename, doc.name)
        elif doc.name in skipped_names:
            steps.append(Step(Action.KEEP, doc.name, remote=doc, reason="its file is skipped"))
            taken.setdefault(doc.filename, doc.name)
        elif delete:
            steps.append(Step(Action.DELETE, doc.name, remote=doc))
        else:
            taken.setdefault(doc.filename, doc.name)
    return sorted(_conflicts(steps, taken), key=lambda s: s.name)


def _conflicts(steps: list[Step], taken: dict[str, str]) -> list[Step]:
    """Uploads whose document ``filename`` is taken (by a document that stays, or by an earlier
    file) become conflicts, with the reason; the server would refuse them as duplicates."""
    result: list[Step] = []
    for step in steps:
        if step.action is not Action.UPLOAD:
            result.append(step)
            continue
        name = leaf(step.name)
        owner = taken.get(name)
        if owner is not None:
            reason = f"the document name '{name}' is already used by '{owner}' (a document is named by its file name)"
            result.append(Step(Action.CONFLICT, step.name, local=step.local, reason=reason))
        else:
            taken[name] = step.name
            result.append(step)
    return result
