"""A body limit on every route but uploads, enforced as the body streams in (pure ASGI).

A declared ``Content-Length`` over the limit is answered 413 before a byte is read; a chunked or
understated body is counted as it arrives and cut off at the limit. Uploads stream to the object
store under their own limits (``MAX_UPLOAD_BYTES``, the batch limits), so they pass untouched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import error_response
from shared.errors import ApiError
from shared.vector_calls import INTERNAL_PREFIX, UpsertChunks
from shared.vector_remote import INTERNAL_UPSERT_MAX_BYTES

# (method, path) of the routes that take files; they bound their bodies themselves.
UPLOAD_ROUTES: Final = (
    ("POST", re.compile(r"/v1/knowledge-bases/[^/]+/(documents|batches)")),
    ("PUT", re.compile(r"/v1/documents/[^/]+/content")),
)
INTERNAL_UPSERT_PATH: Final = f"{INTERNAL_PREFIX}/{UpsertChunks.path}"


def body_limit_for(method: str, path: str, default: int) -> int | None:
    """The most bytes a request may send, or None for an upload route."""
    if any(method == m and pattern.fullmatch(path) for m, pattern in UPLOAD_ROUTES):
        return None
    return INTERNAL_UPSERT_MAX_BYTES if path == INTERNAL_UPSERT_PATH else default


class BodyTooLarge(ApiError):
    """Raised into the app from ``receive`` once the body passes its limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            "body_too_large",
            f"the request body is larger than this route accepts ({limit} bytes)",
            {"limit_bytes": limit},
            # The rest of the body is never read: close instead of draining it.
            headers={"Connection": "close"},
        )


class BodyLimit:
    """Counts request bytes; past the limit the app's ``receive`` raises and the client gets 413."""

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[str, str], int | None]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await error_response(BodyTooLarge(limit))(scope, receive, send)
            return
        received = 0
        refused: BodyTooLarge | None = None
        started = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = BodyTooLarge(limit)
                    raise refused
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            # Whatever the app made of the exception (FastAPI turns it into a 400), the answer is 413.
            if refused is not None:
                if not started and message["type"] == "http.response.start":
                    started = True
                    await error_response(refused)(scope, receive, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge as exc:
            if not started:
                await error_response(exc)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
