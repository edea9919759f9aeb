"""Elements → size-bounded, overlapping chunks that follow the document's sections (deterministic)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from services.processor.extraction.elements import Element
from shared.generations import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE

# multilingual-e5-small reads 512 tokens; ~1,500 characters of prose is ~350-450 tokens, leaving room
# for the "passage: " prefix and for denser scripts without silent truncation of most chunks.
# A KB's index generation may set its own (shared/generations.py, where the defaults live).
DEFAULT_MAX_CHARS: Final = DEFAULT_CHUNK_SIZE
DEFAULT_OVERLAP_CHARS: Final = DEFAULT_CHUNK_OVERLAP
ELEMENT_SEPARATOR: Final = "\n\n"
# Split points, strongest first: paragraphs, lines, sentence ends (Latin and CJK), words.
_SEPARATORS: Final = (
    re.compile(r"\n\s*\n"),
    re.compile(r"\n"),
    re.compile(r"(?<=[.!?;。！？；])\s+|(?<=[。！？；])"),
    re.compile(r"\s+"),
)

_JOINERS: Final = ("\n\n", "\n", " ", " ")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One unit to embed and index; ``page``/``heading`` come from its first element with new text."""

    chunk_no: int
    text: str
    page: int | None
    heading: str | None


@dataclass(slots=True)
class _Open:
    parts: list[str]
    length: int
    page: int | None
    heading: str | None
    fresh: int  # characters added after the overlap carried in from the previous chunk


def chunk_elements(
    elements: Iterable[Element],
    *,
    max_chars: int = DEFAULT_MAX_CHARS,
    overlap_chars: int = DEFAULT_OVERLAP_CHARS,
    combine_under_chars: int | None = None,
) -> list[Chunk]:
    """Pack elements into chunks of at most ``max_chars``, starting a new chunk at each Title.

    A section too small to stand alone (under ``combine_under_chars``, default ``max_chars // 3``)
    is merged with the next one instead of becoming a tiny chunk. Elements longer than a chunk are
    split at paragraph, line, sentence or word boundaries. A chunk cut for size starts with the
    last ``overlap_chars`` of the previous one; a new section starts without overlap.
    """
    if max_chars < 100:
        raise ValueError("max_chars must be at least 100")
    if not 0 <= overlap_chars <= max_chars // 3:
        raise ValueError("overlap_chars must be between 0 and max_chars // 3")
    combine = max_chars // 3 if combine_under_chars is None else combine_under_chars
    # A piece must fit after a carried-over overlap and a separator.
    piece_limit = max_chars - overlap_chars - len(ELEMENT_SEPARATOR)

    chunks: list[Chunk] = []
    current: _Open | None = None

    def close(carry: bool) -> _Open | None:
        """Emit the open chunk; return a new one seeded with its tail when ``carry``."""
        nonlocal current
        if current is None or current.fresh == 0:
            return None
        text = ELEMENT_SEPARATOR.join(current.parts)
        chunks.append(Chunk(chunk_no=len(chunks), text=text, page=current.page, heading=current.heading))
        tail = _tail(text, overlap_chars) if carry else ""
        if not tail:
            return None
        return _Open(parts=[tail], length=len(tail), page=current.page, heading=current.heading, fresh=0)

    for element in elements:
        text = element.text.strip()
        if not text:
            continue
        if element.kind == "Title" and current is not None:
            # Overlap never crosses into a new section; a section too small to stand alone is merged.
            if current.fresh == 0:
                current = None
            elif current.fresh >= combine:
                current = close(carry=False)
        for piece in split_text(text, piece_limit):
            added = len(piece) + (len(ELEMENT_SEPARATOR) if current is not None and current.parts else 0)
            if current is not None and current.length + added > max_chars:
                current = close(carry=True)
            if current is None:
                current = _Open(parts=[], length=0, page=element.page, heading=element.heading, fresh=0)
            elif current.fresh == 0:
                # The chunk so far is only carried-over overlap: it belongs to where the new text comes from.
                current.page, current.heading = element.page, element.heading
            if current.parts:
                current.length += len(ELEMENT_SEPARATOR)
            current.parts.append(piece)
            current.length += len(piece)
            current.fresh += len(piece)
    close(carry=False)
    return chunks


def split_text(text: str, limit: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` characters at the strongest boundary available."""
    if limit < 1:
        raise ValueError("limit must be positive")
    return [piece for piece in _split(text.strip(), limit, 0) if piece]


def _split(text: str, limit: int, level: int) -> list[str]:
    if len(text) <= limit:
        return [text]
    if level >= len(_SEPARATORS):
        return [text[i : i + limit].strip() for i in range(0, len(text), limit)]
    parts = [p.strip() for p in _SEPARATORS[level].split(text)]
    parts = [p for p in parts if p]
    if len(parts) <= 1:
        return _split(text, limit, level + 1)
    return _pack([sub for part in parts for sub in _split(part, limit, level + 1)], limit, _JOINERS[level])


def _pack(parts: Sequence[str], limit: int, joiner: str) -> list[str]:
    """Greedily rejoin small neighbouring parts so pieces are as large as the limit allows."""
    pieces: list[str] = []
    buffer = ""
    for part in parts:
        candidate = f"{buffer}{joiner}{part}" if buffer else part
        if len(candidate) <= limit:
            buffer = candidate
            continue
        if buffer:
            pieces.append(buffer)
        buffer = part
    if buffer:
        pieces.append(buffer)
    return pieces


def _tail(text: str, size: int) -> str:
    """The last ``size`` characters, starting at a line start, else a word start, when there is one."""
    if size <= 0:
        return ""
    if len(text) <= size:
        return text
    tail = text[-size:]
    for boundary in (r"\n", r"\s"):
        cut = re.search(boundary, tail)
        if cut is not None and tail[cut.end() :].strip():
            return tail[cut.end() :].strip()
    return tail.strip()
