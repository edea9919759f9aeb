"""Every corpus file through the real stack (API → relay → processor → Qdrant) as processes.

Small files run in the default suite; the big ones (and the 600-page files) are ``slow``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.corpus import CORPUS, MANIFEST, corpus_missing
from tests.support.up_process import UpProcess, running_up

# One stack for the module: keep every corpus test on the same xdist worker (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("corpus")]

SLOW_TEXT_CHARS = 20_000
FILES: list[dict[str, Any]] = json.loads(MANIFEST.read_text())["files"] if MANIFEST.exists() else []


def _is_slow(entry: dict[str, Any]) -> bool:
    return int(entry.get("text_chars") or 0) >= SLOW_TEXT_CHARS


def _params(slow: bool) -> list[Any]:
    return [pytest.param(e, id=e["path"]) for e in FILES if _is_slow(e) == slow]


def _ingest(stack: UpProcess, entries: list[dict[str, Any]], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Upload every file to one KB and wait until each is ready or failed (or refused at upload)."""
    results: dict[str, dict[str, Any]] = {}
    with stack.client() as client:
        kb = client.post("/v1/knowledge-bases", json={"name": f"corpus-{time.time_ns()}"}).json()["id"]
        pending: dict[str, str] = {}
        for entry in entries:
            path = CORPUS / entry["path"]
            response = client.post(
                f"/v1/knowledge-bases/{kb}/documents", files={"file": (Path(entry["path"]).name, path.read_bytes())}
            )
            if response.status_code == 201:
                pending[entry["path"]] = response.json()["id"]
            else:
                results[entry["path"]] = {"refused": response.status_code, "body": response.json(), "kb": kb}
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for path, doc_id in list(pending.items()):
                doc = client.get(f"/v1/documents/{doc_id}").json()
                if doc["status"] in {"ready", "failed"}:
                    results[path] = {"document": doc, "kb": kb}
                    del pending[path]
            time.sleep(1)
        for path, doc_id in pending.items():
            results[path] = {"document": client.get(f"/v1/documents/{doc_id}").json(), "kb": kb, "timed_out": True}
    return results


@pytest.fixture(scope="module")
def corpus_stack() -> Iterator[UpProcess]:
    if not FILES:
        corpus_missing("corpus manifest")
    # The 619-page PDF's extraction can take longer than the default 120 s on 2 busy cores. Embedding
    # keeps its default: that timeout is per batch, so big documents finish under it.
    with running_up(KBINGEST_STAGE_TIMEOUTS='{"extracting": 900}') as stack:
        yield stack


@pytest.fixture(scope="module")
def fast_results(corpus_stack: UpProcess) -> dict[str, dict[str, Any]]:
    return _ingest(corpus_stack, [e for e in FILES if not _is_slow(e)], timeout_s=600)


@pytest.fixture(scope="module")
def slow_results(corpus_stack: UpProcess) -> dict[str, dict[str, Any]]:
    return _ingest(corpus_stack, [e for e in FILES if _is_slow(e)], timeout_s=3600)


def _check(stack: UpProcess, entry: dict[str, Any], result: dict[str, Any]) -> None:
    if "refused" in result:
        assert entry["expect"] == "failed", result
        assert result["body"]["error"]["code"] in entry["accept_error_codes"], result
        return
    doc = result["document"]
    assert not result.get("timed_out"), f"still {doc['status']}/{doc['stage']} at the deadline"
    assert doc["status"] == entry["expect"], doc["error"]
    if entry["expect"] == "failed":
        assert doc["error"]["code"] in entry["accept_error_codes"], doc["error"]
        return
    assert doc["chunk_count"] >= entry["min_chunks"]
    with stack.client() as client:
        hits = client.post(
            f"/v1/knowledge-bases/{result['kb']}/search", json={"query": entry["contains_phrase"], "limit": 5}
        ).json()["items"]
    ids = [h["document_id"] for h in hits]
    assert doc["id"] in ids[:3], (
        f"'{entry['contains_phrase']}' ranked {ids.index(doc['id']) if doc['id'] in ids else None}"
    )


@pytest.mark.parametrize("entry", _params(slow=False))
def test_corpus_file(entry: dict[str, Any], corpus_stack: UpProcess, fast_results: dict[str, Any]) -> None:
    _check(corpus_stack, entry, fast_results[entry["path"]])


# The first test pays for ingesting every big file (the module fixture): ~1,700 chunks at 2-4 chunks/s.
@pytest.mark.slow
@pytest.mark.timeout(3900)
@pytest.mark.parametrize("entry", _params(slow=True))
def test_big_corpus_file(entry: dict[str, Any], corpus_stack: UpProcess, slow_results: dict[str, Any]) -> None:
    _check(corpus_stack, entry, slow_results[entry["path"]])
