"""Error codes in plain words, from the server's catalogue (GET /v1/errors): the CLI keeps no copy.

``Client`` registers its connection with ``use_server``; the catalogue is fetched once, the first
time a message is needed. Without it (a server that cannot be reached) the server's own text is shown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import httpx
import pydantic
import structlog

from shared.errors import ErrorCatalogue

CATALOGUE_PATH: Final = "/v1/errors"
FETCH_TIMEOUT: Final = httpx.Timeout(10.0, connect=5.0)
# What the CLI adds to a catalogue message: how to fix it from a shell.
CLI_HINTS: Final = {"unauthorized": "pass --api-key or set KBINGEST_API_KEY"}
# "refused" is the CLI's own: an upload the server answered with an error.
STATUS_COLOURS: Final = {"ready": "green", "failed": "red", "refused": "red", "processing": "cyan"}

log = structlog.get_logger("kbingest.cli")

_fetch: Callable[[], ErrorCatalogue] | None = None
_catalogue: ErrorCatalogue | None = None


def use_server(base_url: str, *, transport: httpx.BaseTransport | None = None) -> None:
    """Fetch the catalogue from this server when first needed (on its own connection: a message is
    often needed after the command's client has closed, on the way out)."""
    global _fetch, _catalogue

    def fetch() -> ErrorCatalogue:
        with httpx.Client(base_url=base_url, timeout=FETCH_TIMEOUT, transport=transport) as http:
            response = http.get(CATALOGUE_PATH)
        response.raise_for_status()
        return ErrorCatalogue.model_validate_json(response.content)

    _fetch, _catalogue = fetch, None


def catalogue() -> ErrorCatalogue | None:
    global _catalogue
    if _catalogue is None and _fetch is not None:
        try:
            _catalogue = _fetch()
        except (httpx.HTTPError, pydantic.ValidationError) as exc:  # the server's own message is shown instead
            log.debug("cli.error_catalogue_unavailable", error=str(exc))
    return _catalogue


def status_markup(status: str) -> str:
    """A document's status in the colour that says how it went (rich markup); the others plain."""
    colour = STATUS_COLOURS.get(status)
    return f"[{colour}]{status}[/]" if colour else status


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" or size >= 10 else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def plain_words(code: str, message: str, extra: dict[str, Any] | None = None) -> str:
    """One API error as a sentence a user understands; an unknown code keeps the server's message."""
    known = catalogue()
    meaning = known.request.get(code) if known else None
    if meaning is None:
        return message or code
    extra = extra or {}
    max_bytes = extra.get("max_bytes")
    words = meaning.message.format(
        message=message,
        status=extra.get("status", "existing"),
        max_size=human_size(max_bytes) if isinstance(max_bytes, int) else "its limit",
    )
    hint = CLI_HINTS.get(code)
    return f"{words}: {hint}" if hint else words


def failure_words(code: str) -> str:
    """Why a document failed, in words; empty when unknown."""
    known = catalogue()
    meaning = known.document.get(code) if known else None
    return meaning.message if meaning else ""
