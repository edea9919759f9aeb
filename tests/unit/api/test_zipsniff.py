"""The bounded ZIP directory reader behind the OOXML sniff (no servers)."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest

from services.api.uploads.zipsniff import BadZip, TooManyEntries, list_zip

PREFIXES = ("word/", "ppt/", "xl/")


def _zip(path: Path, names: list[str], *, force_zip64: bool = False, prefix: bytes = b"") -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            with archive.open(name, "w", force_zip64=force_zip64) as fh:
                fh.write(b"x")
    path.write_bytes(prefix + buffer.getvalue())
    return path


def test_lists_what_the_sniff_needs(tmp_path: Path) -> None:
    listing = list_zip(_zip(tmp_path / "a.docx", ["[Content_Types].xml", "word/document.xml"]), prefixes=PREFIXES)
    assert listing.has_content_types and listing.prefixes == {"word/"}
    plain = list_zip(_zip(tmp_path / "b.zip", ["readme.txt"]), prefixes=PREFIXES)
    assert not plain.has_content_types and plain.prefixes == frozenset()


def test_prepended_data_and_zip64_records_are_read(tmp_path: Path) -> None:
    names = ["[Content_Types].xml", "xl/workbook.xml"]
    assert list_zip(_zip(tmp_path / "p.xlsx", names, prefix=b"#!stub\n" * 10), prefixes=PREFIXES).prefixes == {"xl/"}
    path = tmp_path / "z64.xlsx"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, b"x")
    data = bytearray(buffer.getvalue())
    # Rewrite the end record as ZIP64 (count and offset 0xFFFF...), the way tools write huge archives.
    at = data.rfind(b"PK\x05\x06")
    entries, size, offset = struct.unpack_from("<HLL", data, at + 10)
    zip64_end = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(bytes(data[:at]) + zip64_end + locator + end)
    assert list_zip(path, prefixes=PREFIXES).prefixes == {"xl/"}


def test_too_many_entries_are_refused_without_reading_them(tmp_path: Path) -> None:
    path = _zip(tmp_path / "many.zip", [f"e{n}" for n in range(50)])
    with pytest.raises(TooManyEntries):
        list_zip(path, prefixes=PREFIXES, max_entries=49)
    assert list_zip(path, prefixes=PREFIXES, max_entries=50).prefixes == frozenset()


def test_a_lying_count_only_hides_entries(tmp_path: Path) -> None:
    path = _zip(tmp_path / "liar.zip", ["[Content_Types].xml", *(f"e{n}" for n in range(100)), "word/x.xml"])
    data = bytearray(path.read_bytes())
    at = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, at + 8, 1, 1)
    path.write_bytes(bytes(data))
    listing = list_zip(path, prefixes=PREFIXES, max_entries=10)
    assert listing.has_content_types and listing.prefixes == frozenset()


@pytest.mark.parametrize("cut", [10, 30, 60])
def test_truncated_or_garbage_archives_are_bad(tmp_path: Path, cut: int) -> None:
    whole = _zip(tmp_path / "w.zip", ["[Content_Types].xml", "word/document.xml"]).read_bytes()
    path = tmp_path / "cut.zip"
    path.write_bytes(whole[:cut])
    with pytest.raises(BadZip):
        list_zip(path, prefixes=PREFIXES)
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(BadZip):
        list_zip(path, prefixes=PREFIXES)
