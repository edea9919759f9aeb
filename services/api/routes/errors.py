"""``GET /v1/errors``: every error code in plain words, the one catalogue the CLI and the UI show.

Open like /healthz (auth_first.OPEN_PATHS): the sign-in page and a CLI without a key need the words
for ``unauthorized`` and ``invalid_api_key``, and the catalogue is the same public text as docs/api.md.
"""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, Response

from shared.errors import ErrorCatalogue, error_catalogue

router = APIRouter(tags=["errors"])

CATALOGUE: Final = error_catalogue()
# The text changes only with a release; clients may keep it for a while.
CACHE_CONTROL: Final = "public, max-age=300"


@router.get("/v1/errors", response_model=ErrorCatalogue)
async def errors(response: Response) -> ErrorCatalogue:
    response.headers["Cache-Control"] = CACHE_CONTROL
    return CATALOGUE
