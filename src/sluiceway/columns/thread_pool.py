"""``DaemonThreadPool``: the worker threads that run one column's sync custom function in a run.

Unlike ``concurrent.futures.ThreadPoolExecutor`` its threads are daemons, and ``close()`` never
waits for a call still running: Python cannot stop a thread, so a function that never returns
keeps its thread until it does, but neither the run nor the interpreter's exit waits for it
(``ThreadPoolExecutor`` joins every thread at exit, which turns one stuck call into a process
that never ends).
"""

from __future__ import annotations

import collections
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sluiceway.errors import EngineError


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadPoolStatistics:
    threads: int  # threads alive, busy or idle
    busy_threads: int  # threads inside a call
    queued_calls: int  # calls waiting for a thread
    abandoned_threads: int  # threads still inside a call when the pool closed


@dataclass(slots=True, kw_only=True)
class _Call:
    future: Future[Any]
    function: Callable[[], Any]


class _Shared:
    """What the threads share with the pool, guarded by ``ready``'s lock. Never refers to the
    pool, so an unclosed pool can be collected (and then stops its threads)."""

    __slots__ = ("abandoned", "busy", "calls", "closed", "ready", "threads", "waiting")

    def __init__(self) -> None:
        self.ready = threading.Condition()
        self.calls: collections.deque[_Call] = collections.deque()
        self.threads: list[threading.Thread] = []
        self.busy: set[threading.Thread] = set()
        self.waiting = 0  # threads waiting for a call
        self.closed = False
        self.abandoned = 0

    def stop(self) -> list[threading.Thread]:
        """Close: cancel queued calls and wake every thread to exit; return the idle threads
        (they exit at once). A busy thread exits after its call."""
        with self.ready:
            if self.closed:
                return []
            self.closed = True
            for call in self.calls:
                call.future.cancel()
            self.calls.clear()
            self.abandoned = len(self.busy)
            self.ready.notify_all()
            return [thread for thread in self.threads if thread not in self.busy]


def _serve(shared: _Shared) -> None:
    me = threading.current_thread()
    ready = shared.ready
    try:
        while True:
            with ready:
                shared.waiting += 1
                while not shared.calls and not shared.closed:
                    ready.wait()
                shared.waiting -= 1
                if shared.closed:
                    return
                call = shared.calls.popleft()
                if not call.future.set_running_or_notify_cancel():
                    continue  # its caller stopped waiting before it started
                shared.busy.add(me)
            result: Any = None
            error: BaseException | None = None
            try:
                result = call.function()
            except BaseException as exc:  # handed to the caller, as ThreadPoolExecutor does
                error = exc
            # Idle before the caller learns the result: a pool closed as soon as the caller
            # has it joins this thread instead of leaving it behind.
            with ready:
                shared.busy.discard(me)
            if error is None:
                call.future.set_result(result)
            else:
                call.future.set_exception(error)
                del error
            del call
    finally:
        with ready:
            shared.threads.remove(me)


class DaemonThreadPool:
    """Runs blocking calls on at most ``max_threads`` daemon threads, started on demand.

    ``submit`` returns a ``concurrent.futures.Future`` (wrap it with ``asyncio.wrap_future``);
    calls beyond ``max_threads`` wait in FIFO order, and cancelling the future of a call that
    has not started removes it. ``close()`` cancels waiting calls, stops idle threads and joins
    them (at once: they are waiting for work), and leaves a thread still inside a call to exit
    when its call returns. Thread-safe. A pool that is garbage-collected stops its threads too.
    """

    def __init__(self, *, max_threads: int, name: str) -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be at least 1, got {max_threads}")
        self._max_threads = max_threads
        self._name = name
        self._shared = _Shared()
        self._finalizer = weakref.finalize(self, self._shared.stop)

    def submit(self, function: Callable[[], Any]) -> Future[Any]:
        """Queue ``function()``; raises ``EngineError`` once the pool is closed."""
        shared = self._shared
        future: Future[Any] = Future()
        with shared.ready:
            if shared.closed:
                raise EngineError(
                    f"thread pool {self._name!r} is closed: its run has ended; "
                    "start a new run to call the function again"
                )
            shared.calls.append(_Call(future=future, function=function))
            if len(shared.calls) <= shared.waiting or len(shared.threads) >= self._max_threads:
                shared.ready.notify()
                return future
            thread = threading.Thread(
                target=_serve,
                args=(shared,),
                name=f"{self._name}-{len(shared.threads)}",
                daemon=True,
            )
            shared.threads.append(thread)
            thread.start()
        return future

    def close(self) -> None:
        """Stop the pool; blocks only to join idle threads. Idempotent."""
        for thread in self._finalizer() or ():
            thread.join()

    def statistics(self) -> ThreadPoolStatistics:
        shared = self._shared
        with shared.ready:
            return ThreadPoolStatistics(
                threads=len(shared.threads),
                busy_threads=len(shared.busy),
                queued_calls=len(shared.calls),
                abandoned_threads=shared.abandoned,
            )
