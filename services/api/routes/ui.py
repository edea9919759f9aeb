"""The knowledge-base web UI: ``/`` serves the page, ``/ui/…`` its static files (open, no auth)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter
from fastapi.responses import FileResponse

from shared.errors import ApiError

router = APIRouter(include_in_schema=False)

STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "ui" / "static"

# Only these file kinds are served; JS modules need a JavaScript type or browsers refuse them.
CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

# The page talks only to its own origin; no inline script, no framing.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
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
