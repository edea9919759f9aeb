"""The knowledge-base web UI: ``/`` serves the page, ``/ui/…`` its static files; ``/docs`` is Swagger UI
from a package's files, never a CDN (open, no auth; works offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import fastapi_offline
from fastapi import APIRouter
from fastapi.responses import FileResponse

from services.api.security_headers import ALWAYS, CONTENT_SECURITY_POLICY
from shared.errors import ApiError

router = APIRouter(include_in_schema=False)

STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "ui" / "static"
SWAGGER_UI_DIR: Final = Path(fastapi_offline.__file__).resolve().parent / "static"
SWAGGER_UI_FILES: Final = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"})

# Only these file kinds are served; JS modules need a JavaScript type or browsers refuse them.
CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

# Also set by the SecurityHeaders middleware; here too so the files carry them wherever they are mounted.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    **ALWAYS,
    # Revalidate every time, so a new deploy is picked up without stale modules.
    "Cache-Control": "no-cache",
}


def _file_response(path: Path) -> FileResponse:
    return FileResponse(path, media_type=CONTENT_TYPES[path.suffix], headers=SECURITY_HEADERS)


@router.get("/")
async def index() -> FileResponse:
    return _file_response(STATIC_DIR / "index.html")


@router.get("/ui/{asset_path:path}")
async def asset(asset_path: str) -> FileResponse:
    """One static file; anything else (directories, unknown kinds, paths outside the folder) is 404."""
    path = (STATIC_DIR / asset_path).resolve()
    if not path.is_relative_to(STATIC_DIR) or not path.is_file() or path.suffix not in CONTENT_TYPES:
        raise ApiError(404, "not_found", "no such UI file")
    return _file_response(path)


@router.get("/docs")
async def docs() -> FileResponse:
    """Swagger UI over /openapi.json; its script starts from a file since the CSP allows no inline script."""
    return _file_response(STATIC_DIR / "docs" / "index.html")


@router.get("/docs/assets/{name}")
async def docs_asset(name: str) -> FileResponse:
    if name not in SWAGGER_UI_FILES:
        raise ApiError(404, "not_found", "no such docs file")
    return _file_response(SWAGGER_UI_DIR / name)
