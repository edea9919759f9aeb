"""Cross-tenant reads and key lifecycle: KB-scoped keys see no pipeline-wide data; a revoked bootstrap
key neither crashes the next start nor works."""

from __future__ import annotations

import httpx
import pytest
from structlog.testing import capture_logs

from shared.settings import Settings
from tests.security.conftest import in_process, new_key, revoke
from tests.support.api_helpers import assert_error_shape, create_kb

PIPELINE_WIDE = [
    ("GET", "/v1/pipeline"),
    ("GET", "/v1/pipeline/history"),
    ("GET", "/v1/outbox/dead"),
    # A fixed id: pytest-xdist workers must collect the same parameters.
    ("POST", "/v1/outbox/00000000-0000-4000-8000-000000000000/replay"),
]


@pytest.mark.parametrize(("method", "path"), PIPELINE_WIDE)
async def test_a_kb_scoped_key_gets_403_forbidden_scope(
    api: httpx.AsyncClient, settings: Settings, method: str, path: str
) -> None:
    """Pipeline health names every tenant's counts and the processors' hosts and pids."""
    scoped = await new_key(settings, [await create_kb(api)])
    response = await api.request(method, path, headers={"Authorization": f"Bearer {scoped}"})
    assert_error_shape(response, 403, "forbidden_scope")
    unscoped = await api.request(method, path)
    assert unscoped.status_code in (200, 404), unscoped.text  # 404: the replayed event does not exist


async def test_a_revoked_bootstrap_key_is_logged_and_the_api_starts(settings: Settings, api_key: str) -> None:
    async with in_process(settings, api_key) as (_, client):
        assert (await client.get("/v1/knowledge-bases")).status_code == 200
    other = await new_key(settings)
    await revoke(settings, api_key)
    with capture_logs() as logs:
        async with in_process(settings, api_key) as (_, client):
            assert_error_shape(await client.get("/v1/knowledge-bases"), 401, "invalid_api_key")
            listed = await client.get("/v1/knowledge-bases", headers={"Authorization": f"Bearer {other}"})
            assert listed.status_code == 200
    assert [entry for entry in logs if entry["event"] == "api.bootstrap_key_revoked"], logs
