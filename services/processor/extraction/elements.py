"""The unit extraction hands to chunking: one piece of text with its kind, page and section heading."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Element:
    """A text element; ``kind`` is unstructured's category (Title, NarrativeText, Table, ListItem, ...)."""

    text: str
    kind: str
    page: int | None = None
    heading: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "kind": self.kind, "page": self.page, "heading": self.heading}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Element:
        page = data.get("page")
        heading = data.get("heading")
        return cls(
            text=str(data["text"]),
            kind=str(data["kind"]),
            page=int(page) if page is not None else None,
            heading=str(heading) if heading is not None else None,
        )
