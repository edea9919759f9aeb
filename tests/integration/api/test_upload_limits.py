"""Upload resource exhaustion against the real API app: form-field floods, ZIP bombs, oversized batches.

Bodies are async generators, so each test also sees how much of the body the API actually read:
a refusal must come while most of the attacker's body is still unsent.
"""

from __future__ import annotations

import asyncio
import io
import threading
import zipfile
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from services.api.app import create_app
from services.api.uploads import media
from services.api.uploads.receive import MAX_FORM_FIELDS
from services.api.uploads.zipsniff import MAX_ENTRIES
from shared.settings import Settings
from tests.conftest import _client_for
from tests.support.api_helpers import assert_error_shape, create_kb, fetch_all, object_keys
from tests.support.poll import eventually

BOUNDARY = "kbingest-test-boundary"
TEXT = b"An honest text file.\n" * 10


class CountingBody:
    """A multipart body sent part by part, remembering how many parts the server pulled."""

    def __init__(self, parts: Iterable[bytes]) -> None:
        self._parts = parts
        self.sent = 0
        self.exhausted = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self._parts:
            self.sent += 1
            yield part
        yield f"--{BOUNDARY}--\r\n".encode()
        self.exhausted = True


def _file_head(filename: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def _file_part(filename: str, content: bytes) -> bytes:
    return _file_head(filename) + content + b"\r\n"


def _field_part(name: str, value: str) -> bytes:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()


async def _post(api: httpx.AsyncClient, path: str, body: CountingBody) -> httpx.Response:
    return await api.post(
        path, content=body.__aiter__(), headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    )


async def _nothing_stored(settings: Settings) -> None:
    assert await fetch_all(settings, "SELECT id FROM documents") == []
    assert await fetch_all(settings, "SELECT id FROM batches") == []
    assert await object_keys(settings) == []


async def test_twenty_thousand_extra_fields_are_refused_early(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)

    def parts() -> Iterator[bytes]:
        yield _file_part("notes.txt", TEXT)
        for n in range(20_000):
            yield _field_part(f"x{n}", "v" * 100)

    body = CountingBody(parts())
    response = await _post(api, f"/v1/knowledge-bases/{kb}/documents", body)
    error = assert_error_shape(response, 413, "body_too_large")
    assert error["max_fields"] == MAX_FORM_FIELDS
    assert not body.exhausted and body.sent < 100, f"the API read {body.sent} parts of 20,001"
    await _nothing_stored(settings)


async def test_form_fields_are_capped_in_total_bytes(api: httpx.AsyncClient, settings: Settings) -> None:
    kb = await create_kb(api)
    body = CountingBody([_file_part("notes.txt", TEXT), *(_field_part(f"f{n}", "v" * 30_000) for n in range(10))])
    error = assert_error_shape(await _post(api, f"/v1/knowledge-bases/{kb}/documents", body), 413, "body_too_large")
    assert error["max_field_bytes"] == 64 * 1024
    assert not body.exhausted
    await _nothing_stored(settings)


async def test_huge_part_headers_are_refused(api: httpx.AsyncClient, settings: Settings) -> None:
    """python-multipart caps each part at 8 headers of 4 KiB: malformed, and nothing more is read."""
    kb = await create_kb(api)
    flood = f"--{BOUNDARY}\r\n".encode() + b"X-Junk: " + b"a" * 100_000 + b"\r\n\r\nv\r\n"
    body = CountingBody([flood, _file_part("notes.txt", TEXT)])
    assert_error_shape(await _post(api, f"/v1/knowledge-bases/{kb}/documents", body), 422, "validation_error")
    assert not body.exhausted
    await _nothing_stored(settings)


def _many_entries_zip(entries: int) -> bytes:
    """A docx-looking archive with ``entries`` empty parts (the shape of a ZIP bomb's directory)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document/>")
        for n in range(entries):
            archive.writestr(f"w/{n}", b"")
    return buffer.getvalue()


async def test_a_zip_with_many_entries_is_sniffed_off_the_event_loop_and_refused(
    api: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    kb = await create_kb(api)
    archive = _many_entries_zip(MAX_ENTRIES + 2_000)
    order: list[str] = []
    sniffing, release = threading.Event(), threading.Event()
    real_list_zip = media.list_zip

    def held_list_zip(*args: Any, **kwargs: Any) -> Any:
        # Held until /healthz has answered: on the event loop this would hold /healthz too.
        sniffing.set()
        release.wait(timeout=60)
        try:
            return real_list_zip(*args, **kwargs)
        finally:
            order.append("sniffed")

    monkeypatch.setattr(media, "list_zip", held_list_zip)
    upload = asyncio.create_task(
        api.post(f"/v1/knowledge-bases/{kb}/documents", files={"file": ("bomb.docx", archive, "application/zip")})
    )
    await eventually(sniffing.is_set, every_s=0.01, what="the sniffing to start")
    health = await api.get("/healthz")
    order.append("healthz")
    release.set()
    response = await upload

    assert health.status_code == 200
    assert order == ["healthz", "sniffed"], "the ZIP sniff blocked the event loop"
    error = assert_error_shape(response, 415, "unsupported_media_type")
    assert f"more than {MAX_ENTRIES} entries" in error["message"]
    await _nothing_stored(settings)


@dataclass(frozen=True)
class SmallBatches:
    """An API app that takes batches of at most 3 files and 256 KiB, and a knowledge base on it."""

    api: httpx.AsyncClient
    settings: Settings
    kb: str

    async def post(self, body: CountingBody) -> httpx.Response:
        return await _post(self.api, f"/v1/knowledge-bases/{self.kb}/batches", body)


@pytest.fixture
async def small_batches(settings: Settings, api_key: str) -> AsyncIterator[SmallBatches]:
    tuned = settings.model_copy(update={"max_batch_files": 3, "max_batch_bytes": 256 * 1024})
    async for client in _client_for(create_app(tuned), api_key):
        yield SmallBatches(client, tuned, await create_kb(client))


async def test_a_batch_over_its_file_count_stops_with_413(small_batches: SmallBatches) -> None:
    body = CountingBody(_file_part(f"f{n}.txt", TEXT + str(n).encode()) for n in range(50))
    assert_error_shape(await small_batches.post(body), 413, "too_many_files")
    assert not body.exhausted and body.sent <= 5
    await _nothing_stored(small_batches.settings)


async def test_a_batch_over_its_total_bytes_stops_with_413(small_batches: SmallBatches) -> None:
    def three_files() -> Iterator[bytes]:
        """Each file is far under MAX_UPLOAD_BYTES; together they pass MAX_BATCH_BYTES in the third."""
        for n in range(3):
            yield _file_head(f"f{n}.txt")
            for _ in range(8):
                yield (b"%d " % n) * (16 * 1024 // 2)
            yield b"\r\n"

    body = CountingBody(three_files())
    error = assert_error_shape(await small_batches.post(body), 413, "body_too_large")
    assert error["max_bytes"] == small_batches.settings.max_batch_bytes
    assert not body.exhausted
    await _nothing_stored(small_batches.settings)


async def test_an_oversized_file_in_a_batch_does_not_keep_the_batch_reading(small_batches: SmallBatches) -> None:
    """A file over MAX_UPLOAD_BYTES in a batch used to be read to its end, however long."""

    def endless() -> Iterator[bytes]:
        yield _file_part("a.txt", TEXT)
        yield _file_head("endless.txt")
        while True:
            yield b"z" * 64 * 1024

    body = CountingBody(endless())
    assert_error_shape(await small_batches.post(body), 413, "body_too_large")
    assert body.sent < 10
    await _nothing_stored(small_batches.settings)
