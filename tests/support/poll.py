"""The tests' one way to wait: poll a condition until it holds, with a generous deadline (2 shared cores).

``eventually`` in async tests (``check`` may be a coroutine function or a plain one), ``until`` in sync ones;
both return the first truthy answer and fail with the last one, so a timeout says what was seen.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _timed_out(what: str, timeout_s: float, last: object) -> AssertionError:
    return AssertionError(f"timed out after {timeout_s:g}s waiting for {what} (last: {last!r})")


async def eventually(
    check: Callable[[], Awaitable[T | None] | T | None],
    *,
    timeout_s: float = 60.0,
    every_s: float = 0.2,
    what: str = "condition",
) -> T:
    """Call (and await, when it is a coroutine) ``check`` until it answers something truthy; that answer is returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = check()
        found = await answer if inspect.isawaitable(answer) else answer
        if found:
            return found
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout_s, found)
        await asyncio.sleep(every_s)


def until(
    check: Callable[[], T | None],
    *,
    timeout_s: float = 60.0,
    every_s: float = 0.2,
    what: str = "condition",
    give_up: Callable[[], str | None] | None = None,
) -> T:
    """Call ``check`` until it answers something truthy; that answer is returned.

    ``give_up`` (asked before each check) ends the wait at once with the reason it returns, e.g. a process
    that exited: waiting out the deadline for it would only delay the failure.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        reason = give_up() if give_up is not None else None
        if reason:
            raise AssertionError(f"gave up waiting for {what}: {reason}")
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout_s, found)
        time.sleep(every_s)
