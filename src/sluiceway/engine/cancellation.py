"""``RunCancellation``: a thread-safe switch that cancels one run in order (SPEC §5.5).

Whoever holds it (the API's generation handle, the CLI's Ctrl-C handler) calls ``cancel()`` from
any thread; the engine binds it to the running scheduler, so the run stops admission, cancels its
tasks, releases every lease, keeps the row groups already written and raises
``RunCancelledError``. Cancelling before the run starts cancels it as soon as it starts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable


class RunCancellation:
    """Cancel a run from any thread; idempotent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requested = False
        self._target: tuple[asyncio.AbstractEventLoop, Callable[[], None]] | None = None

    @property
    def requested(self) -> bool:
        return self._requested

    def cancel(self) -> None:
        with self._lock:
            self._requested = True
            target = self._target
        if target is not None:
            loop, callback = target
            if not loop.is_closed():
                loop.call_soon_threadsafe(callback)

    def bind(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        """Route ``cancel()`` to ``callback`` on ``loop`` (the engine calls this)."""
        with self._lock:
            self._target = (loop, callback)
            requested = self._requested
        if requested:
            loop.call_soon_threadsafe(callback)

    def unbind(self) -> None:
        with self._lock:
            self._target = None
