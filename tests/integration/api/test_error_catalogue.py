"""GET /v1/errors: the one catalogue of plain words (shared/errors.py) the CLI and the UI show."""

from __future__ import annotations

import httpx

from shared.errors import DOCUMENT_MESSAGES, RETRYABLE, ErrorCode


async def test_catalogue_is_open_and_complete(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/errors", headers={"Authorization": ""})
    assert response.status_code == 200
    body = response.json()
    assert set(body["document"]) == {code.value for code in ErrorCode}
    for code in ErrorCode:
        assert body["document"][code.value] == {"message": DOCUMENT_MESSAGES[code], "retryable": code in RETRYABLE}
    assert body["request"]["invalid_api_key"]["retryable"] is False
    assert body["request"]["database_unavailable"]["retryable"] is True
    # Another /v1 path still needs a key: only the catalogue is open.
    assert (await api.get("/v1/knowledge-bases", headers={"Authorization": ""})).status_code == 401
