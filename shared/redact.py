"""Credentials never reach logs or stored errors: URLs lose their userinfo and query string."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit, urlunsplit

HIDDEN: Final = "***"
# A URL inside free text (an error message, a response snippet), up to whitespace or a quote.
_URL_IN_TEXT: Final = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")


def redact_url(url: str) -> str:
    """``https://user:pass@host/p?token=x`` → ``https://***@host/p?***``; anything unparsable is hidden."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return HIDDEN
    netloc = (f"{HIDDEN}@" if parts.username or parts.password else "") + host + port
    return urlunsplit((parts.scheme, netloc, parts.path, HIDDEN if parts.query else "", ""))


def redact_text(text: str) -> str:
    """Every URL inside ``text`` redacted (error messages quote the URL they failed on)."""
    return _URL_IN_TEXT.sub(_redact_match, text)


def _redact_match(match: re.Match[str]) -> str:
    # Punctuation that ends a sentence ("…/v1/events: refused") belongs to the text, not the URL.
    url = match.group(0)
    stripped = url.rstrip(".,;:)")
    return redact_url(stripped) + url[len(stripped) :]
