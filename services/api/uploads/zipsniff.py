"""Which OOXML kind a ZIP is, from its central directory, reading at most ``max_entries`` entries.

``zipfile.ZipFile`` builds one object per entry before we can look at any: a 100 MB archive of
2 M empty entries costs seconds and ~1 GB. This walks the directory record by record, keeps nothing
but two answers, and refuses an archive that declares more entries than the cap (it never reads
more than it declared, so a lying count only hides entries from us).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

MAX_ENTRIES: Final = 10_000

_EOCD: Final = struct.Struct("<4s4H2LH")
_EOCD_SIGNATURE: Final = b"PK\x05\x06"
_ZIP64_LOCATOR: Final = struct.Struct("<4sLQL")
_ZIP64_LOCATOR_SIGNATURE: Final = b"PK\x06\x07"
_ZIP64_EOCD: Final = struct.Struct("<4sQ2H2L4Q")
_ZIP64_EOCD_SIGNATURE: Final = b"PK\x06\x06"
_ENTRY: Final = struct.Struct("<4s4B4HL2L5H2L")
_ENTRY_SIGNATURE: Final = b"PK\x01\x02"
# The end record sits in the last 22 bytes plus an archive comment of up to 64 KiB.
_TAIL_BYTES: Final = _EOCD.size + 0xFFFF
_CONTENT_TYPES: Final = b"[Content_Types].xml"


class BadZip(Exception):
    """Not a readable ZIP central directory."""


class TooManyEntries(Exception):
    """More entries than we are willing to look at."""


@dataclass(frozen=True)
class ZipListing:
    has_content_types: bool
    prefixes: frozenset[str]


def list_zip(path: Path, *, prefixes: tuple[str, ...], max_entries: int = MAX_ENTRIES) -> ZipListing:
    """Whether ``[Content_Types].xml`` exists and which of ``prefixes`` start some entry name."""
    wanted = tuple(p.encode() for p in prefixes)
    found: set[bytes] = set()
    has_content_types = False
    with path.open("rb") as fh:
        declared, offset = _directory(fh)
        if declared > max_entries:
            raise TooManyEntries(f"the archive declares {declared} entries")
        fh.seek(offset)
        for _ in range(declared):
            name = _entry_name(fh)
            has_content_types = has_content_types or name == _CONTENT_TYPES
            found.update(p for p in wanted if name.startswith(p))
    return ZipListing(has_content_types, frozenset(p.decode() for p in found))


def _directory(fh: BinaryIO) -> tuple[int, int]:
    """(entry count, offset of the central directory) from the end record (ZIP64 aware)."""
    size = fh.seek(0, 2)
    start = max(0, size - _TAIL_BYTES)
    fh.seek(start)
    tail = fh.read()
    at = tail.rfind(_EOCD_SIGNATURE)
    if at < 0 or at + _EOCD.size > len(tail):
        raise BadZip("no end-of-central-directory record")
    _, _, _, _, entries, directory_size, offset, _ = _EOCD.unpack_from(tail, at)
    if entries != 0xFFFF and offset != 0xFFFFFFFF:
        # Measured back from the end record, as zipfile does: data prepended to the archive is fine.
        directory_at = start + at - directory_size
        if directory_at < 0:
            raise BadZip("central directory size points before the start of the file")
        return entries, directory_at
    locator_at = at - _ZIP64_LOCATOR.size
    if locator_at < 0 or tail[locator_at : locator_at + 4] != _ZIP64_LOCATOR_SIGNATURE:
        raise BadZip("ZIP64 archive without its locator")
    _, _, eocd64_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
    fh.seek(eocd64_offset)
    record = fh.read(_ZIP64_EOCD.size)
    if len(record) < _ZIP64_EOCD.size or record[:4] != _ZIP64_EOCD_SIGNATURE:
        raise BadZip("bad ZIP64 end-of-central-directory record")
    fields = _ZIP64_EOCD.unpack(record)
    return fields[7], fields[9]


def _entry_name(fh: BinaryIO) -> bytes:
    header = fh.read(_ENTRY.size)
    if len(header) < _ENTRY.size or header[:4] != _ENTRY_SIGNATURE:
        raise BadZip("truncated or corrupt central directory")
    fields = _ENTRY.unpack(header)
    name_len, extra_len, comment_len = fields[12], fields[13], fields[14]
    name = fh.read(name_len)
    fh.seek(extra_len + comment_len, 1)
    if len(name) < name_len:
        raise BadZip("truncated central directory")
    return name
