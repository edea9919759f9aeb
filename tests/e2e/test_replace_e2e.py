"""Replace in place on the real stack (issue 15): search never serves both versions, or neither.

A text document is indexed, then replaced while a thread searches the knowledge base without pause:
every answer must come from exactly one version (never zero hits, never both), and the answers switch
from the old version to the new one once. Then a replacement that cannot be processed (an encrypted
PDF) fails beside the served version: search keeps answering from it and the document shows the
failed replacement with its error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import user_stack

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group(user_stack.GROUP)]

# Long enough for a cold processor (model load, imports) on a busy 2-core machine.
DEADLINE_S = 240.0
QUERY = "When does the lighthouse keeper light the lamp?"
MARKERS = {"old": "quartzmorning", "new": "cobaltevening"}


def _version_text(marker: str) -> bytes:
    lines = [f"The lighthouse keeper lights the lamp at the {marker} bell, says the {marker} handbook."] * 4
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def stack() -> Iterator[user_stack.UserStack]:
    running = user_stack.acquire()
    yield running
    user_stack.release(running)


def _until(client: httpx.Client, document_id: str, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        document: dict[str, Any] = client.get(f"/v1/documents/{document_id}").json()
        if done(document):
            return document
        assert time.monotonic() < deadline, f"{what} not reached: {document}"
        time.sleep(0.3)


def _versions_in(response: httpx.Response) -> frozenset[str]:
    """Which versions' chunks one search answer holds."""
    assert response.status_code == 200, response.text
    texts = [item["text"] for item in response.json()["items"]]
    return frozenset(name for name, marker in MARKERS.items() if any(marker in t for t in texts))


@dataclass
class SearchPoller:
    """Searches the KB back to back in a thread and records which versions each answer held."""

    client: httpx.Client
    kb: str
    seen: list[frozenset[str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            response = self.client.post(f"/v1/knowledge-bases/{self.kb}/search", json={"query": QUERY, "limit": 10})
            self.seen.append(_versions_in(response))
            self.stop.wait(0.05)


def _until_polled(poller: SearchPoller, thread: threading.Thread, answers: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while len(poller.seen) < answers:
        assert thread.is_alive() and time.monotonic() < deadline, poller.seen
        time.sleep(0.1)


def test_replacement_switches_search_once_and_a_failed_one_keeps_serving(
    stack: user_stack.UserStack, corpus: Path
) -> None:
    with stack.client() as client, stack.client() as searcher:
        kb = client.post("/v1/knowledge-bases", json={"name": stack.name("replace-e2e")}).json()["id"]
        files = {"file": ("lighthouse.txt", _version_text(MARKERS["old"]), "text/plain")}
        created = client.post(f"/v1/knowledge-bases/{kb}/documents", files=files)
        assert created.status_code == 201, created.text
        document_id = created.json()["id"]
        _until(client, document_id, lambda d: d["status"] in ("ready", "failed"), "first version terminal")
        assert client.get(f"/v1/documents/{document_id}").json()["status"] == "ready", stack.log_tail()

        poller = SearchPoller(searcher, kb)
        thread = threading.Thread(target=poller.run, daemon=True)
        thread.start()
        try:
            # The old version answers before the replacement is sent, so the switch is seen.
            _until_polled(poller, thread, 3)
            replaced = client.put(
                f"/v1/documents/{document_id}/content",
                files={"file": ("lighthouse.txt", _version_text(MARKERS["new"]), "text/plain")},
            )
            assert replaced.status_code == 202, replaced.text
            assert replaced.json()["pending_version"]["version"] == 2
            done = _until(
                client,
                document_id,
                lambda d: d["content_version"] == 2 or (d["pending_version"] or {}).get("status") == "failed",
                "version 2 active",
            )
            assert done["content_version"] == 2 and done["pending_version"] is None, (done, stack.log_tail())
            # A few answers after the switch, so the poll saw the new version too.
            _until_polled(poller, thread, len(poller.seen) + 3)
        finally:
            poller.stop.set()
            thread.join(timeout=60)
        assert poller.seen, "the poller never got an answer"
        assert all(len(versions) == 1 for versions in poller.seen), poller.seen
        switches = [i for i in range(1, len(poller.seen)) if poller.seen[i] != poller.seen[i - 1]]
        assert poller.seen[0] == {"old"} and poller.seen[-1] == {"new"} and len(switches) == 1, poller.seen

        versions = client.get(f"/v1/documents/{document_id}/versions").json()["items"]
        assert [(v["version"], v["status"]) for v in versions] == [(2, "active"), (1, "retained")]
        old = client.get(f"/v1/documents/{document_id}/content", params={"version": 1})
        assert old.content == _version_text(MARKERS["old"])

        locked = (corpus / "encrypted/password-user-password.pdf").read_bytes()
        failing = client.put(f"/v1/documents/{document_id}/content", files={"file": ("lighthouse.pdf", locked)})
        assert failing.status_code == 202, failing.text
        failed = _until(
            client,
            document_id,
            lambda d: (d["pending_version"] or {}).get("status") == "failed" or d["content_version"] == 3,
            "replacement 3 failed",
        )
        assert failed["status"] == "ready" and failed["content_version"] == 2, failed
        pending = failed["pending_version"]
        assert pending["version"] == 3 and pending["error"]["code"] == "pdf_encrypted", pending
        search = client.post(f"/v1/knowledge-bases/{kb}/search", json={"query": QUERY, "limit": 10})
        assert _versions_in(search) == {"new"}
        versions = client.get(f"/v1/documents/{document_id}/versions").json()["items"]
        assert (versions[0]["version"], versions[0]["status"]) == (3, "failed")
        assert versions[0]["error"]["code"] == "pdf_encrypted"
