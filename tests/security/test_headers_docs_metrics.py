"""Hygiene: security headers on every answer, /docs without a CDN, /metrics behind auth on public binds."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from pydantic import SecretStr

from services.api.security_headers import CONTENT_SECURITY_POLICY
from shared.settings import Settings
from tests.security.conftest import in_process, new_key
from tests.support.api_helpers import create_kb


async def test_every_answer_carries_nosniff_and_referrer_policy(api: httpx.AsyncClient) -> None:
    kb = await create_kb(api)
    answers = [
        await api.get("/healthz"),
        await api.get("/metrics"),
        await api.get("/openapi.json"),
        await api.get(f"/v1/knowledge-bases/{kb}"),
        await api.get("/v1/knowledge-bases", headers={"Authorization": ""}),
        await api.get("/v1/no-such-route"),
        await api.post("/v1/knowledge-bases", content=b"x" * (2 * 1024 * 1024)),
        await api.get("/ui/missing.js"),
    ]
    for response in answers:
        assert response.headers["x-content-type-options"] == "nosniff", response.url
        assert response.headers["referrer-policy"] == "no-referrer", response.url
        assert response.headers["x-request-id"], response.url  # refusals are logged and counted too


@pytest.mark.parametrize("path", ["/", "/docs"])
async def test_html_pages_have_a_self_only_csp(api: httpx.AsyncClient, path: str) -> None:
    response = await api.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY


async def test_docs_load_only_local_files(api: httpx.AsyncClient) -> None:
    """Swagger UI comes from an installed package: works offline, inside the CSP."""
    page = (await api.get("/docs")).text
    assert "<script>" not in page  # no inline script: the CSP would block it
    urls = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert urls and all(url.startswith("/") for url in urls), urls
    for url in urls:
        asset = await api.get(url)
        assert asset.status_code == 200, url
    bundle = await api.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].startswith("text/javascript") and len(bundle.content) > 100_000
    assert (await api.get("/docs/assets/../../app.py")).status_code == 404
    assert (await api.get("/redoc")).status_code in (401, 404)


async def test_metrics_are_open_on_loopback(api: httpx.AsyncClient) -> None:
    assert (await api.get("/metrics", headers={"Authorization": ""})).status_code == 200


async def test_metrics_need_a_token_or_an_unscoped_key_on_a_public_bind(settings: Settings, api_key: str) -> None:
    public = settings.model_copy(
        update={"api_host": "0.0.0.0", "metrics_token": SecretStr("m" * 32), "internal_secret": SecretStr("i" * 32)}
    )
    async with in_process(public) as (_, client):
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        assert (await client.get("/metrics", headers={"Authorization": "Bearer " + "m" * 32})).status_code == 200
        assert (await client.get("/metrics", headers={"Authorization": f"Bearer {api_key}"})).status_code == 200
        scoped = await new_key(settings, [str(uuid.uuid4())])
        response = await client.get("/metrics", headers={"Authorization": f"Bearer {scoped}"})
        assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden_scope"
