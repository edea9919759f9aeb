"""Runs inside the extraction child: file → ``list[Element]``, or a ``ProcessingError`` saying why not."""

from __future__ import annotations

import codecs
import io
import logging
import os
import re
import zipfile
from collections.abc import Iterable
from html.parser import HTMLParser
from typing import Any, Final

from services.processor.extraction.elements import Element
from shared.errors import ErrorCode, ProcessingError
from shared.media_types import CSV, DOCX, EML, HTML, MARKDOWN, OOXML, PDF, PPTX, SUPPORTED, TEXT, XLSX

log = logging.getLogger("kbingest.extraction")

SUPPORTED_MEDIA_TYPES: Final = SUPPORTED
OOXML_TYPES: Final = OOXML

LANGUAGES: Final = ["eng"]
HEADING_MAX_CHARS: Final = 200
DROPPED_KINDS: Final = frozenset({"PageBreak"})

_OLE_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# Name of the stream an encrypted OOXML file keeps inside its OLE container (UTF-16LE directory entry).
_OLE_ENCRYPTED_STREAM: Final = "EncryptedPackage".encode("utf-16-le")
_OLE_SCAN_BYTES: Final = 1024 * 1024
_BOMS: Final = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_META_CHARSET: Final = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_META_SCAN_BYTES: Final = 4096
_HORIZONTAL_SPACE: Final = re.compile(r"[ \t\u00a0\u200b\ufeff]+")
_BLANK_LINES: Final = re.compile(r"\n\s*\n\s*\n+")


def base_media_type(media_type: str) -> str:
    """``text/html; charset=utf-8`` → ``text/html``."""
    return media_type.split(";", 1)[0].strip().lower()


def partition_file(path: str, media_type: str) -> list[Element]:
    """Extract the text elements of ``path``; raise ``ProcessingError`` with the failure's code."""
    kind = base_media_type(media_type)
    if kind not in SUPPORTED_MEDIA_TYPES:
        raise ProcessingError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"media type {media_type!r} is not supported")
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ProcessingError(ErrorCode.INTERNAL_ERROR, f"the file to extract is not readable: {exc}") from exc
    if size == 0:
        raise ProcessingError(ErrorCode.EMPTY_FILE, "the file is empty (0 bytes)")

    if kind == PDF:
        elements = _partition_pdf(path)
    else:
        elements = _with_headings(_convert(_run_partitioner(path, kind, media_type)))
    if not elements:
        raise ProcessingError(ErrorCode.EMPTY_TEXT, "no extractable text in the document")
    return elements


def _run_partitioner(path: str, kind: str, media_type: str) -> list[Any]:
    if kind in OOXML_TYPES:
        _check_ooxml_container(path)
    try:
        return _partitioner_call(path, kind, media_type)
    except (ProcessingError, MemoryError):
        raise
    except Exception as exc:
        raise _classify(exc) from exc


def _partitioner_call(path: str, kind: str, media_type: str) -> list[Any]:
    # Imports are local: the module must stay importable (and cheap) without the extract extra.
    if kind == DOCX:
        from unstructured.partition.docx import partition_docx

        return list(partition_docx(filename=path, languages=LANGUAGES))
    if kind == PPTX:
        from unstructured.partition.pptx import partition_pptx

        return list(partition_pptx(filename=path, languages=LANGUAGES))
    if kind == XLSX:
        from unstructured.partition.xlsx import partition_xlsx

        return list(partition_xlsx(filename=path, languages=LANGUAGES))
    if kind == EML:
        from unstructured.partition.email import partition_email

        # Attachments would go through auto-partition, which knows more types than we allow.
        return list(partition_email(filename=path, process_attachments=False, languages=LANGUAGES))

    with open(path, "rb") as fh:
        text = decode_text(fh.read(), media_type=media_type)
    if not text.strip():
        return []
    if kind == CSV:
        from unstructured.partition.csv import partition_csv

        data = io.BytesIO(text.encode("utf-8"))
        return list(partition_csv(file=data, encoding="utf-8", languages=LANGUAGES))
    if kind == HTML:
        from unstructured.partition.html import partition_html

        return list(partition_html(text=text, languages=LANGUAGES))
    if kind == MARKDOWN:
        from unstructured.partition.md import partition_md

        return list(partition_md(text=text, languages=LANGUAGES))
    from unstructured.partition.text import partition_text

    return list(partition_text(text=text, languages=LANGUAGES))


def _check_ooxml_container(path: str) -> None:
    """DOCX/PPTX/XLSX are zips; an OLE container under that name is encrypted (or legacy binary Office)."""
    with open(path, "rb") as fh:
        head = fh.read(_OLE_SCAN_BYTES)
    if head.startswith(_OLE_MAGIC):
        if _OLE_ENCRYPTED_STREAM in head:
            raise ProcessingError(ErrorCode.PDF_ENCRYPTED, "the Office document is password-protected (encrypted)")
        raise ProcessingError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE, "legacy binary Office format; save it as DOCX/PPTX/XLSX"
        )
    if not zipfile.is_zipfile(path):
        raise ProcessingError(ErrorCode.CORRUPT_FILE, "the Office document is not a valid OOXML (zip) file")


def _classify(exc: Exception) -> ProcessingError:
    """Map a partitioner exception to a code: environment problems are retryable, the rest is the file."""
    message = f"{type(exc).__name__}: {exc}"[:500]
    lowered = str(exc).lower()
    if "password" in lowered and "protected" in lowered:
        return ProcessingError(ErrorCode.PDF_ENCRYPTED, f"the document is password-protected ({message})")
    environment = (ImportError, ConnectionError, TimeoutError, PermissionError, FileNotFoundError)
    if isinstance(exc, environment) or (isinstance(exc, RuntimeError) and "download" in lowered):
        return ProcessingError(ErrorCode.INTERNAL_ERROR, f"extractor environment problem: {message}")
    return ProcessingError(ErrorCode.CORRUPT_FILE, f"the document could not be parsed: {message}")


def _partition_pdf(path: str) -> list[Element]:
    """pdfminer via unstructured (fast), with pypdf text for pages where pdfminer found none."""
    page_count, damaged = _inspect_pdf(path)
    try:
        from unstructured.partition.pdf import partition_pdf

        raw = list(partition_pdf(filename=path, strategy="fast", languages=LANGUAGES))
    except (ProcessingError, MemoryError):
        raise
    except Exception as exc:
        raise _classify(exc) from exc
    elements = _convert(raw)
    pages_with_text = {e.page for e in elements}
    try:
        fallback = _pypdf_pages(path, skip=pages_with_text, page_count=page_count)
    except (ProcessingError, MemoryError):
        raise
    except Exception as exc:
        if elements:
            # pdfminer already gave text; a pypdf failure on the remaining pages only loses those pages.
            log.warning("pypdf fallback failed on %s: %s", path, exc)
            fallback = {}
        elif damaged:
            raise ProcessingError(ErrorCode.CORRUPT_FILE, f"the PDF is damaged and unreadable: {exc}") from exc
        else:
            raise _classify(exc) from exc
    if not elements and not fallback and damaged:
        raise ProcessingError(ErrorCode.CORRUPT_FILE, "the PDF is damaged and no text could be read from it")
    return _with_headings(_merge_pages(elements, fallback))


def _inspect_pdf(path: str) -> tuple[int | None, bool]:
    """Page count and whether qpdf finds it damaged; a PDF that needs a user password fails here."""
    import pikepdf

    try:
        with pikepdf.open(path) as pdf:
            return len(pdf.pages), False
    except pikepdf.PasswordError as exc:
        raise ProcessingError(ErrorCode.PDF_ENCRYPTED, "the PDF needs a password to open") from exc
    except pikepdf.PdfError as exc:
        log.warning("qpdf cannot open %s: %s", path, exc)
        return None, True


def _pypdf_pages(path: str, *, skip: set[int | None], page_count: int | None) -> dict[int, str]:
    """Text of the pages pdfminer gave nothing for (unstructured's 'too complex' heuristic skips whole PDFs)."""
    if page_count is not None and all(n in skip for n in range(1, page_count + 1)):
        return {}
    import pypdf

    reader = pypdf.PdfReader(path, strict=False)
    if reader.is_encrypted and not reader.decrypt(""):
        raise ProcessingError(ErrorCode.PDF_ENCRYPTED, "the PDF needs a password to open")
    texts: dict[int, str] = {}
    for number, page in enumerate(reader.pages, start=1):
        if number in skip:
            continue
        text = _clean(page.extract_text() or "")
        if text:
            texts[number] = text
    return texts


def _merge_pages(elements: list[Element], fallback: dict[int, str]) -> list[Element]:
    if not fallback:
        return elements
    merged: list[Element] = []
    pending = sorted(fallback.items())
    for element in elements:
        while pending and element.page is not None and pending[0][0] < element.page:
            number, text = pending.pop(0)
            merged.append(Element(text=text, kind="NarrativeText", page=number))
        merged.append(element)
    merged.extend(Element(text=text, kind="NarrativeText", page=number) for number, text in pending)
    return merged


def _convert(raw: Iterable[Any]) -> list[Element]:
    """unstructured elements → ours, dropping page breaks and empty text; tables become one row per line."""
    elements: list[Element] = []
    for item in raw:
        kind = str(getattr(item, "category", type(item).__name__))
        if kind in DROPPED_KINDS:
            continue
        metadata = getattr(item, "metadata", None)
        text = _table_text(item, metadata) if kind == "Table" else str(getattr(item, "text", "") or "")
        text = _clean(text)
        if not text:
            continue
        page = getattr(metadata, "page_number", None)
        elements.append(Element(text=text, kind=kind, page=int(page) if page is not None else None))
    return elements


def _table_text(item: Any, metadata: Any) -> str:
    """Rows on their own lines (cells joined by `` | ``) so long tables split at row boundaries."""
    plain = str(getattr(item, "text", "") or "")
    html = getattr(metadata, "text_as_html", None)
    if not html:
        return plain
    parser = _TableRows()
    parser.feed(str(html))
    parser.close()
    lines = (" | ".join(cell for cell in row if cell) for row in parser.rows)
    return "\n".join(line for line in lines if line) or plain


class _TableRows(HTMLParser):
    """Collects the cell texts of each ``<tr>`` of unstructured's ``text_as_html``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            if self._row is not None:
                self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def decode_text(data: bytes, *, media_type: str = TEXT) -> str:
    """Bytes of a text-based file → str: BOM, then declared charset, then UTF-8, then cp1252."""
    for bom, bom_codec in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(bom_codec, errors="replace")
    candidates = (_bomless_utf16(data), _declared_charset(data, media_type), "utf-8")
    for codec in candidates:
        if codec is None:
            continue
        try:
            return data.decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
    # Every byte decodes in cp1252 except five unassigned ones; Windows text is the common non-UTF-8 case.
    return data.decode("cp1252", errors="replace")


def _bomless_utf16(data: bytes) -> str | None:
    """UTF-16 without a BOM shows as NULs on every other byte of mostly-ASCII text."""
    sample = data[:4096]
    if len(sample) < 4 or sample.count(0) < len(sample) // 4:
        return None
    even_nuls, odd_nuls = sample[0::2].count(0), sample[1::2].count(0)
    if odd_nuls > even_nuls * 4:
        return "utf-16-le"
    if even_nuls > odd_nuls * 4:
        return "utf-16-be"
    return None


def _declared_charset(data: bytes, media_type: str) -> str | None:
    """``charset=`` from the media type, else from an HTML ``<meta>`` near the top."""
    for param in media_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return _known_codec(value.strip().strip("\"'"))
    if base_media_type(media_type) == HTML:
        match = _META_CHARSET.search(data[:_META_SCAN_BYTES])
        codec = _known_codec(match.group(1).decode("ascii")) if match else None
        # The meta tag was readable as ASCII, so the bytes can't be the UTF-16/32 it claims.
        if codec is not None and not codec.startswith(("utf-16", "utf-32")):
            return codec
    return None


def _known_codec(name: str) -> str | None:
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _clean(text: str) -> str:
    text = text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
    text = _HORIZONTAL_SPACE.sub(" ", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return "\n".join(line.strip() for line in text.split("\n")).strip()


def _with_headings(elements: list[Element]) -> list[Element]:
    """Attach the nearest preceding Title (a Title is the heading of its own section)."""
    heading: str | None = None
    result: list[Element] = []
    for element in elements:
        if element.kind == "Title":
            heading = " ".join(element.text.split())[:HEADING_MAX_CHARS]
        result.append(Element(text=element.text, kind=element.kind, page=element.page, heading=heading))
    return result


def warm_up_partitioners() -> None:
    """Import every partitioner and run tiny samples, so forked jobs start with everything loaded."""
    import pikepdf
    from unstructured.partition.csv import partition_csv
    from unstructured.partition.docx import partition_docx
    from unstructured.partition.email import partition_email
    from unstructured.partition.html import partition_html
    from unstructured.partition.md import partition_md
    from unstructured.partition.pdf import partition_pdf
    from unstructured.partition.pptx import partition_pptx
    from unstructured.partition.text import partition_text
    from unstructured.partition.xlsx import partition_xlsx

    loaded = (partition_csv, partition_docx, partition_email, partition_pptx, partition_xlsx)
    log.debug("partitioners loaded: %s", [fn.__name__ for fn in loaded])
    # Text classification loads the spaCy model on first use; a blank PDF loads pdfminer's machinery.
    partition_text(text="Warm-up sentence for the extractor. It has two sentences.", languages=LANGUAGES)
    partition_md(text="# Warm up\n\nA paragraph.", languages=LANGUAGES)
    partition_html(text="<html><body><h1>Warm up</h1><p>A paragraph.</p></body></html>", languages=LANGUAGES)
    blank = io.BytesIO()
    with pikepdf.new() as pdf:
        pdf.add_blank_page()
        pdf.save(blank)
    blank.seek(0)
    partition_pdf(file=blank, strategy="fast", languages=LANGUAGES)
