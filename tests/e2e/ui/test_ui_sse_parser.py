"""The UI's event-stream parser (services/api/ui/static/sse.js), run in Chromium on WHATWG's rules.

No server: the static files are served to the page by Playwright from the source folder.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import browser as b

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CASES: list[tuple[str, list[str], list[dict[str, str]]]] = [
    (
        "one event",
        ['event: document\ndata: {"status":"ready"}\nid: 7\n\n'],
        [{"type": "document", "data": '{"status":"ready"}', "id": "7"}],
    ),
    ("no space after colon, default type", ["data:plain\n\n"], [{"type": "message", "data": "plain", "id": ""}]),
    ("comments are ignored", [": ping\n\n: ping\ndata: x\n\n"], [{"type": "message", "data": "x", "id": ""}]),
    ("data lines join with newline", ["data: a\ndata: b\n\n"], [{"type": "message", "data": "a\nb", "id": ""}]),
    ("CRLF line ends", ["data: a\r\n\r\n"], [{"type": "message", "data": "a", "id": ""}]),
    ("CRLF split across chunks", ["data: a\r", "\n", "\r", "\n"], [{"type": "message", "data": "a", "id": ""}]),
    ("CR-only line ends", ["data: a\rdata: b\r\r"], [{"type": "message", "data": "a\nb", "id": ""}]),
    ("event without data is not dispatched", ["event: document\n\n"], []),
    ("incomplete event waits", ["data: half"], []),
    (
        "id persists across events",
        ["id: 5\ndata: a\n\ndata: b\n\n"],
        [{"type": "message", "data": "a", "id": "5"}, {"type": "message", "data": "b", "id": "5"}],
    ),
    (
        "id with NUL is ignored",
        ["id: 1\ndata: a\n\nid: x\0y\ndata: b\n\n"],
        [
            {"type": "message", "data": "a", "id": "1"},
            {"type": "message", "data": "b", "id": "1"},
        ],
    ),
    ("field without colon", ["data\n\n"], [{"type": "message", "data": "", "id": ""}]),
    ("unknown fields are ignored", ["foo: bar\ndata: z\n\n"], [{"type": "message", "data": "z", "id": ""}]),
]


@pytest.fixture
def parser_page(page: Any) -> Any:
    return b.serve_ui_files(page)


RUN = """async ([chunks, byChar]) => {
    const { SseParser } = await import('/ui/sse.js');
    const events = [];
    const parser = new SseParser((e) => events.push(e));
    for (const chunk of chunks) {
        if (byChar) for (const ch of chunk) parser.feed(ch);
        else parser.feed(chunk);
    }
    return { events, lastEventId: parser.lastEventId, retryMs: parser.retryMs };
}"""


@pytest.mark.parametrize("by_char", [False, True], ids=["chunks", "one-char-at-a-time"])
def test_parser_cases(parser_page: Any, by_char: bool) -> None:
    for name, chunks, expected in CASES:
        got = parser_page.evaluate(RUN, [chunks, by_char])
        assert got["events"] == expected, name


def test_retry_and_last_event_id(parser_page: Any) -> None:
    got = parser_page.evaluate(RUN, [["retry: 2500\nid: 42\n\n", "retry: soon\n\n"], False])
    assert got == {"events": [], "lastEventId": "42", "retryMs": 2500}
