"""When the relay loop must wake up for events it put back itself (busy re-offers, short retries)."""

from __future__ import annotations

import heapq
import math
from typing import Final

# Due times are rounded up to this grid: a burst of re-offers with jittered delays costs a few
# entries, not one per event, and the loop never wakes before the row is due.
RESOLUTION_S: Final = 0.05


class DueTimes:
    """Monotonic due times of events this relay put back, earlier than its next poll.

    Nobody NOTIFYs when a re-offered event becomes due, so without them a busy event due in 0.3 s
    would wait for the poll interval; keeping them here costs no query.
    """

    def __init__(self, horizon_s: float, *, resolution_s: float = RESOLUTION_S) -> None:
        self._horizon_s = horizon_s
        self._resolution_s = resolution_s
        self._heap: list[float] = []
        self._known: set[float] = set()

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, delay_s: float, now: float) -> None:
        """An event was put back ``delay_s`` from ``now`` (read after the write, so never early)."""
        if delay_s >= self._horizon_s:
            return  # the poll comes first anyway
        due = math.ceil((now + delay_s) / self._resolution_s) * self._resolution_s
        if due not in self._known:
            self._known.add(due)
            heapq.heappush(self._heap, due)

    def take_due(self, now: float) -> None:
        """Forget what is due by ``now``: the drain about to start claims it."""
        while self._heap and self._heap[0] <= now:
            self._known.discard(heapq.heappop(self._heap))

    def wait_s(self, now: float) -> float:
        """How long the loop may sleep: until the first put-back event is due, at most the horizon."""
        if not self._heap:
            return self._horizon_s
        return max(0.0, min(self._horizon_s, self._heap[0] - now))
