"""A cap on the event streams one API key holds open in this process."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from shared.errors import ApiError

# A client told "too many" tries again after this long, when one of its streams may have ended.
RETRY_AFTER_S = 30


class StreamLimiter:
    """Counts open streams per key; each admitted stream releases its place exactly once."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._open: Counter[uuid.UUID] = Counter()

    def acquire(self, key_id: uuid.UUID) -> Callable[[], None]:
        """A place for one more stream of ``key_id`` (its release function), or 429 ``too_many_streams``."""
        if self._open[key_id] >= self.per_key:
            raise ApiError(
                429,
                "too_many_streams",
                f"this API key already has {self.per_key} event streams open; close one first",
                {"limit": self.per_key},
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self._open[key_id] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._open[key_id] -= 1
                if self._open[key_id] <= 0:
                    del self._open[key_id]

        return release


class HeldEventSourceResponse(EventSourceResponse):
    """Releases its stream's place however the response ends, even before the first event."""

    def __init__(
        self,
        events: AsyncIterator[ServerSentEvent],
        *,
        release: Callable[[], None],
        ping_s: float,
        send_timeout_s: float,
        headers: dict[str, str],
    ) -> None:
        super().__init__(events, ping=ping_s, send_timeout=send_timeout_s, headers=headers)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
