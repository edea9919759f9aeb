"""A replacement is never half-written: the upload path's failure handling holds for PUT …/content too."""

from __future__ import annotations

import uuid

from services.api.app import create_app
from shared.settings import Settings
from tests.conftest import _client_for
from tests.integration.api.test_versions import NEW, builds_of, put_content, ready_document
from tests.support.api_helpers import assert_error_shape, create_kb, fetch_all, object_keys
from tests.support.lost_commit import AmbiguousCommit


class _FailAfterStore:
    """The ``after_store`` seam, armed for one request: fails inside the commit transaction."""

    def __init__(self) -> None:
        self.armed = False

    async def __call__(self, document_id: uuid.UUID) -> None:
        if self.armed:
            raise RuntimeError(f"injected failure after storing the new content of {document_id}")


async def test_failure_between_object_write_and_commit_leaves_the_document_as_it_was(
    settings: Settings, api_key: str
) -> None:
    hook = _FailAfterStore()
    async for client in _client_for(create_app(settings, after_store=hook), api_key):
        kb = await create_kb(client)
        doc = await ready_document(client, settings, kb)
        keys = await object_keys(settings)
        hook.armed = True
        assert_error_shape(await put_content(client, doc["id"], NEW), 500, "internal_error")
        hook.armed = False
        assert await object_keys(settings) == keys
        assert await builds_of(settings, doc["id"]) == []
        after = (await client.get(f"/v1/documents/{doc['id']}")).json()
        assert after["content_version"] == 1 and after["pending_version"] is None
        versions = await fetch_all(settings, "SELECT version FROM document_versions")
        assert versions == [{"version": 1}]
        assert [e["type"] for e in await fetch_all(settings, "SELECT type FROM outbox")] == ["document.uploaded"]


async def test_an_ambiguous_commit_keeps_the_new_object_only_if_the_version_exists(
    settings: Settings, ambiguous_commit: AmbiguousCommit
) -> None:
    client = ambiguous_commit.client
    kb = await create_kb(client)
    doc = await ready_document(client, settings, kb)
    response = await ambiguous_commit.lose_commit_of(lambda: put_content(client, doc["id"], NEW))
    builds = await builds_of(settings, doc["id"])
    if ambiguous_commit.server_commits:
        assert response.status_code == 202, response.text
        assert response.json()["pending_version"]["version"] == 2
        assert sorted(await object_keys(settings)) == sorted([f"kb/{kb}/{doc['id']}", builds[0]["object_key"]])
        assert (await client.get(f"/v1/documents/{doc['id']}/content?version=2")).content == NEW
    else:
        assert_error_shape(response, 503, "database_unavailable")
        assert builds == []
        assert await object_keys(settings) == [f"kb/{kb}/{doc['id']}"]
