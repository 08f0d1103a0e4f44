"""Deadlines of in-flight attempts on one timer: the executor's adaptive timeouts and hedges.

``schedule(when, token)`` files an integer token under the tick that ends at or after
``when`` (ticks are ``tick_seconds`` long on the clock's time line); one timer runs at the
earliest tick that holds tokens, calls ``fire(token)`` for every token of the ticks due by
then that is still in the owner's ``pending`` mapping, and re-arms for the next. The owner
cancels a deadline by removing its token from ``pending``: no timer handle and no object per
attempt, no heap removal, so scheduling costs a division, a dict lookup and a list append on a
path that runs thousands of times a second. The price is precision: a token fires up to one
tick after its time (never before).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import Callable, Container
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """Schedules a callback at a clock time (``sluiceway.testing.FakeClock`` is one)."""

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle | None: ...


class DeadlineWheel:
    """Tokens due at clock times, fired within one tick after their time.

    ``fire`` runs in the timer's callback (synchronously, in an empty context), for tokens
    still in ``pending`` when their tick is swept, and must not raise. ``clock`` is the time
    line of ``when``; ``timers`` default to the running event loop (converted from ``clock``,
    which must then advance with the loop's time). Not thread-safe: schedule from the loop's
    thread."""

    def __init__(
        self,
        *,
        tick_seconds: float,
        clock: Callable[[], float],
        fire: Callable[[int], None],
        pending: Container[int],
        timers: Timers | None = None,
    ) -> None:
        if not tick_seconds > 0:
            raise ValueError(f"DeadlineWheel.tick_seconds must be > 0, got {tick_seconds}")
        self._tick_seconds = tick_seconds
        self._clock = clock
        self._fire = fire
        self._pending = pending
        self._timers = timers
        self._buckets: dict[int, list[int]] = {}
        self._armed_tick: int | None = None
        self._handle: TimerHandle | asyncio.TimerHandle | None = None

    @property
    def filed(self) -> int:
        """Tokens filed and not yet swept (removed ones included until their tick passes)."""
        return sum(len(bucket) for bucket in self._buckets.values())

    def schedule(self, when: float, token: int) -> None:
        tick = math.ceil(when / self._tick_seconds)
        bucket = self._buckets.get(tick)
        if bucket is not None:
            bucket.append(token)
            return
        self._buckets[tick] = [token]
        armed = self._armed_tick
        if armed is None or tick < armed:
            self._arm(tick)

    def _arm(self, tick: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_tick = tick
        when = tick * self._tick_seconds
        if self._timers is not None:
            self._handle = self._timers.call_at(when, self._sweep)
        else:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_later(
                max(0.0, when - self._clock()), self._sweep, context=contextvars.Context()
            )

    def _sweep(self) -> None:
        self._handle = None
        self._armed_tick = None
        # A timer may run a hair before its time on the clock's reading: allow for it.
        current = math.floor((self._clock() + 1e-9) / self._tick_seconds)
        buckets = self._buckets
        fire = self._fire
        pending = self._pending
        for tick in sorted(tick for tick in buckets if tick <= current):
            for token in buckets.pop(tick):
                if token in pending:
                    fire(token)
        if buckets:
            self._arm(min(buckets))
