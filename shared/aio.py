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


async def finish_then_cancel(aw: Awaitable[T]) -> T:
    """Run ``aw`` to its end even if the caller is cancelled meanwhile; then let the cancellation through.

    For a short step that must not be cut in half (taking back a write made under a lost lease): a
    cancellation arriving during it waits for it instead of abandoning it.
    """
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise
