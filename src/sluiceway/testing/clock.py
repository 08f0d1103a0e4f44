"""A fake monotonic clock that also schedules timers, for request admission and limiter tests.

``FakeClock()`` is callable (returns the current time) and implements the ``Timers`` protocol of
``sluiceway.requests.admission``; ``advance(seconds)`` moves time and runs every due timer in
deadline order, synchronously. Nothing sleeps.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class FakeTimerHandle:
    """A scheduled callback; ``cancel()`` stops it from running."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Time that moves only when told to; timers fire inside ``advance``."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._timers: list[tuple[float, int, FakeTimerHandle]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeTimerHandle:
        handle = FakeTimerHandle(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), handle))
        return handle

    @property
    def pending_timers(self) -> int:
        return sum(1 for _, _, handle in self._timers if not handle.cancelled)

    def next_deadline(self) -> float | None:
        for when, _, handle in sorted(self._timers):
            if not handle.cancelled:
                return when
        return None

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0), running due timers in deadline order."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back; got advance({seconds})")
        target = self.now + seconds
        timers = self._timers
        while timers and timers[0][0] <= target:
            when, _, handle = heapq.heappop(timers)
            if handle.cancelled:
                continue
            self.now = max(self.now, when)
            handle.callback()
        self.now = target
