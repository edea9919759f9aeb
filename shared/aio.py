"""asyncio helpers that keep cancellation intact."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """``asyncio.wait_for`` without its Python 3.11 flaw: there, a cancellation that arrives just as
    ``aw`` completes is swallowed (the result is returned and the cancelled task runs on), so a loop
    awaiting it could survive shutdown forever. ``asyncio.timeout`` always lets cancellation through.
    On timeout, ``aw`` is cancelled and ``TimeoutError`` raised, as with ``asyncio.wait_for``.
    """
    async with asyncio.timeout(timeout):
        return await aw
