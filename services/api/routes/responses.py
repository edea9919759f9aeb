"""OpenAPI error responses shared by the routers."""

from __future__ import annotations

from typing import Any

from services.api.schemas import ErrorResponse


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: 401/403/404 always, plus ``status_codes``."""
    return {code: {"model": ErrorResponse} for code in (401, 403, 404, *status_codes)}
