"""The media types kbingest extracts: one allow-list shared by the API (upload) and the processor."""

from __future__ import annotations

from typing import Final

PDF: Final = "application/pdf"
DOCX: Final = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PPTX: Final = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
XLSX: Final = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV: Final = "text/csv"
HTML: Final = "text/html"
MARKDOWN: Final = "text/markdown"
TEXT: Final = "text/plain"
EML: Final = "message/rfc822"

# Our own allow-list: unstructured's auto-partition would route e.g. audio to speech-to-text.
SUPPORTED: Final = frozenset({PDF, DOCX, PPTX, XLSX, CSV, HTML, MARKDOWN, TEXT, EML})
OOXML: Final = frozenset({DOCX, PPTX, XLSX})
