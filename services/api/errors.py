"""Exception handlers: every error leaves as ``{"error": {"code", "message", ...}}``."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.db import DatabaseUnavailable
from shared.errors import ApiError
from shared.storage import StorageUnavailable

log = structlog.get_logger("kbingest.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "file_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "service_unavailable",
}


def _json(
    status: int, code: str, message: str, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, **(extra or {})}}, status_code=status, headers=headers
    )


def error_response(exc: ApiError | DatabaseUnavailable | StorageUnavailable) -> JSONResponse:
    """The answer to an expected failure, for the handlers below and for middleware outside them."""
    if isinstance(exc, ApiError):
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)
    if isinstance(exc, DatabaseUnavailable):
        log.warning("api.database_unavailable", error=str(exc))
        return _json(
            503, "database_unavailable", "the database is unavailable; retry shortly", headers={"Retry-After": "2"}
        )
    log.warning("api.storage_unavailable", error=str(exc))
    return _json(
        503, "storage_unavailable", "the object store is unavailable; retry shortly", headers={"Retry-After": "2"}
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": [str(p) for p in err.get("loc", ())], "message": err.get("msg", "")} for err in exc.errors()]
        message = "; ".join(f"{'.'.join(d['loc'])}: {d['message']}" for d in details) or "invalid request"
        return _json(422, "validation_error", message, {"details": details})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return _json(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(DatabaseUnavailable)
    async def _db(_: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StorageUnavailable)
    async def _storage(_: Request, exc: StorageUnavailable) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("api.internal_error", error=str(exc))
        return _json(500, "internal_error", "unexpected server error; it has been logged")
