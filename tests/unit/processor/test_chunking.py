"""chunk_elements: bounds, overlap, sections, pages/headings, determinism, splitting of huge elements."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from services.processor.chunking import Chunk, chunk_elements, split_text
from services.processor.extraction.elements import Element

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpus"

PARAGRAPHS = [
    "Norwich City Football Club is an English professional football club based in Norwich, Norfolk. "
    "The club competes in the EFL Championship, the second tier of English football. "
    "It was founded in 1902 and has played its home games at Carrow Road since 1935.",
    "Norwich have won the League Cup twice, in 1962 and 1985. The club has competed in the top division "
    "of English football on several occasions, finishing third in the inaugural Premier League season.",
    "The club has a long-standing rivalry with Ipswich Town, with whom it contests the East Anglian derby. "
    "The derby has been played more than 150 times since the first meeting in 1902.",
    "The club's nickname, the Canaries, comes from the long history of canary breeding in Norwich, "
    "brought to the city by Flemish weavers in the 16th century. The team plays in yellow and green.",
]


def _section(title: str, page: int, paragraphs: list[str]) -> list[Element]:
    elements = [Element(text=title, kind="Title", page=page, heading=title)]
    elements += [Element(text=p, kind="NarrativeText", page=page, heading=title) for p in paragraphs]
    return elements


def _document() -> list[Element]:
    return (
        _section("History", 1, PARAGRAPHS * 3)
        + _section("Honours", 2, [PARAGRAPHS[1]])
        + [
            Element(text=f"Item {i}: a list entry about the club.", kind="ListItem", page=2, heading="Honours")
            for i in range(5)
        ]
        + _section("Stadium", 3, PARAGRAPHS[::-1] * 2)
    )


def _table(rows: int = 400) -> str:
    lines = ["Team | City | Founded | Titles | Stadium | Capacity"]
    lines += [
        f"Club number {i} | Town {i} | {1880 + i % 120} | {i % 17} | Ground {i} | {10_000 + i * 37}"
        for i in range(rows)
    ]
    return "\n".join(lines)


def _words(text: str) -> list[str]:
    return text.split()


def test_chunks_respect_the_size_bound() -> None:
    elements = [*_document(), Element(text=_table(), kind="Table", page=4, heading="Stadium")]
    for max_chars, overlap in [(1500, 150), (500, 50), (200, 0), (800, 266)]:
        chunks = chunk_elements(elements, max_chars=max_chars, overlap_chars=overlap)
        assert chunks, (max_chars, overlap)
        assert all(0 < len(c.text) <= max_chars for c in chunks), (max_chars, overlap)
        assert [c.chunk_no for c in chunks] == list(range(len(chunks)))


def test_every_word_of_the_document_is_kept_in_order() -> None:
    elements = _document()
    chunks = chunk_elements(elements, max_chars=600, overlap_chars=0)
    source = [w for e in elements for w in _words(e.text)]
    assert [w for c in chunks for w in _words(c.text)] == source


def test_chunks_cut_for_size_overlap_with_the_previous_one() -> None:
    elements = _section("History", 1, PARAGRAPHS * 4)
    chunks = chunk_elements(elements, max_chars=500, overlap_chars=100)
    assert len(chunks) > 3
    for previous, current in itertools.pairwise(chunks):
        overlap = _shared_boundary(previous.text, current.text)
        assert 0 < len(overlap) <= 100, (previous.text[-120:], current.text[:120])


def test_a_new_section_starts_without_overlap() -> None:
    elements = _document()
    chunks = chunk_elements(elements, max_chars=500, overlap_chars=100)
    for title in ("Honours", "Stadium"):
        first = next(c for c in chunks if c.heading == title)
        assert first.text.startswith(title)


def test_pages_and_headings_follow_the_elements() -> None:
    chunks = chunk_elements(_document(), max_chars=500, overlap_chars=50)
    assert {c.heading for c in chunks} == {"History", "Honours", "Stadium"}
    for chunk in chunks:
        expected_page = {"History": 1, "Honours": 2, "Stadium": 3}[chunk.heading or ""]
        assert chunk.page == expected_page
    assert chunks[0].page == 1
    assert chunks[-1].heading == "Stadium"


def test_tiny_sections_are_merged_instead_of_becoming_tiny_chunks() -> None:
    elements: list[Element] = []
    for i in range(30):
        elements += _section(f"Heading {i}", 1, [f"Short paragraph number {i}."])
    chunks = chunk_elements(elements, max_chars=1500, overlap_chars=150)
    assert len(chunks) < 10
    assert all(len(c.text) <= 1500 for c in chunks)
    assert chunks[0].heading == "Heading 0"


def test_chunking_is_deterministic() -> None:
    elements = [*_document(), Element(text=_table(), kind="Table", page=4, heading="Stadium")]
    first = chunk_elements(elements)
    second = chunk_elements(list(elements))
    assert first == second
    assert all(isinstance(c, Chunk) for c in first)


def test_a_huge_table_is_split_at_row_boundaries() -> None:
    table = _table(rows=900)
    assert len(table) > 50_000
    chunks = chunk_elements([Element(text=table, kind="Table", page=None, heading=None)])
    assert len(chunks) >= len(table) // 1500
    assert all(len(c.text) <= 1500 for c in chunks)
    rows = set(table.split("\n"))
    for chunk in chunks:
        lines = [line for line in chunk.text.split("\n") if line]
        assert all(line in rows for line in lines), chunk.text[:200]
    assert "Club number 899" in chunks[-1].text


def test_a_huge_element_without_line_breaks_is_split_at_words() -> None:
    text = " ".join(f"word{i}" for i in range(20_000))
    chunks = chunk_elements([Element(text=text, kind="NarrativeText", page=1, heading=None)], overlap_chars=0)
    assert all(len(c.text) <= 1500 for c in chunks)
    assert [w for c in chunks for w in c.text.split()] == text.split()


def test_text_without_spaces_is_split_at_sentence_ends_or_hard_cut() -> None:
    sentence = "人人生而自由，在尊严和权利上一律平等。他们赋有理性和良心，并应以兄弟关系的精神相对待。"
    chunks = chunk_elements([Element(text=sentence * 200, kind="NarrativeText", page=None, heading=None)])
    assert len(chunks) > 1
    assert all(len(c.text) <= 1500 for c in chunks)
    assert all(c.text.endswith("。") for c in chunks[:-1])
    unbroken = "字" * 5000
    pieces = split_text(unbroken, 1000)
    assert [len(p) for p in pieces] == [1000] * 5


def test_empty_and_whitespace_elements_give_no_chunks() -> None:
    assert chunk_elements([]) == []
    assert chunk_elements([Element(text="  \n ", kind="NarrativeText", page=1, heading=None)]) == []


@pytest.mark.parametrize(("max_chars", "overlap"), [(50, 0), (1500, 600), (1500, -1)])
def test_invalid_sizes_are_refused(max_chars: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_elements(_document(), max_chars=max_chars, overlap_chars=overlap)


def test_the_long_corpus_csv_becomes_many_bounded_chunks() -> None:
    path = CORPUS / "csv" / "csv-with-long-lines.csv"
    if not path.exists():
        pytest.skip(f"corpus file missing: {path}")
    rows = [" | ".join(line.split(",")) for line in path.read_text(encoding="utf-8").splitlines()]
    chunks = chunk_elements([Element(text="\n".join(rows), kind="Table", page=None, heading=None)])
    assert len(chunks) > 30
    assert all(len(c.text) <= 1500 for c in chunks)
    assert "SpearmanCorrelationCoefficient" in chunks[0].text


def _shared_boundary(previous: str, current: str) -> str:
    """The longest prefix of ``current`` that is a suffix of ``previous`` (modulo whitespace)."""
    prev = re.sub(r"\s+", " ", previous)
    cur = re.sub(r"\s+", " ", current)
    for size in range(min(len(prev), len(cur)), 0, -1):
        if prev.endswith(cur[:size]):
            return cur[:size]
    return ""
