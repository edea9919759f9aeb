"""The UI routes: the page at /, static files under /ui/ with the right types, nothing else."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from services.api.errors import install_error_handlers
from services.api.routes import ui


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(ui.router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ui.test") as http:
        yield http


async def test_index_is_the_app_shell(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="/ui/app.js">' in response.text
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/views/kb-page.js", "text/javascript; charset=utf-8"),
        ("/ui/styles.css", "text/css; charset=utf-8"),
    ],
)
async def test_static_files_have_their_types(client: httpx.AsyncClient, path: str, content_type: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/",
        "/ui/views",
        "/ui/views/",
        "/ui/missing.js",
        "/ui/../routes/ui.py",
        "/ui/%2e%2e/%2e%2e/app.py",
        "/ui/..%2fui.py",
    ],
)
async def test_no_listing_no_escape_no_unknown_files(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_every_module_the_page_imports_exists(client: httpx.AsyncClient) -> None:
    """Catch a renamed view before a browser does: every relative import resolves to a served file."""
    pending, seen = ["/ui/app.js"], set()
    while pending:
        path = pending.pop()
        seen.add(path)
        source = await client.get(path)
        assert source.status_code == 200, path
        base = path.rsplit("/", 1)[0]
        for target in re.findall(r"from '(\.{1,2}/[^']+)'", source.text):
            resolved = _join(base, target)
            if resolved not in seen:
                pending.append(resolved)
    assert len(seen) >= 10


def _join(base: str, relative: str) -> str:
    parts = base.split("/")
    for piece in relative.split("/"):
        if piece == "..":
            parts.pop()
        elif piece != ".":
            parts.append(piece)
    return "/".join(parts)
