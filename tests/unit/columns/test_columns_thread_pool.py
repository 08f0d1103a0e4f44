"""DaemonThreadPool: results and errors, the thread bound, cancellation, and closing without
waiting for a call that never returns."""

from __future__ import annotations

import gc
import threading
from concurrent.futures import CancelledError

import pytest

from sluiceway.columns.thread_pool import DaemonThreadPool
from sluiceway.errors import EngineError

pytestmark = pytest.mark.timeout(30)  # a thread that is never released fails, not hangs


def _threads(prefix: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith(prefix)]


def test_calls_return_results_and_errors_including_base_exceptions() -> None:
    pool = DaemonThreadPool(max_threads=2, name="pool-results")
    try:
        assert pool.submit(lambda: 41 + 1).result() == 42

        def interrupt() -> None:
            raise KeyboardInterrupt

        future = pool.submit(interrupt)
        with pytest.raises(KeyboardInterrupt):
            future.result()
        assert all(thread.daemon for thread in _threads("pool-results"))
    finally:
        pool.close()


def test_at_most_max_threads_run_and_the_rest_wait_in_order() -> None:
    pool = DaemonThreadPool(max_threads=2, name="pool-bound")
    release = threading.Event()
    started: list[int] = []
    two_started = threading.Barrier(3)

    def call(index: int) -> int:
        started.append(index)
        if index < 2:
            two_started.wait()
            release.wait()
        return index

    try:
        futures = [pool.submit(lambda i=i: call(i)) for i in range(5)]  # type: ignore[misc]
        two_started.wait()  # both threads are busy with calls 0 and 1
        stats = pool.statistics()
        assert (stats.threads, stats.busy_threads, stats.queued_calls) == (2, 2, 3)
        release.set()
        assert [future.result() for future in futures] == [0, 1, 2, 3, 4]
        assert started[2:] == [2, 3, 4]
        assert len(_threads("pool-bound")) == 2
    finally:
        release.set()
        pool.close()


def test_a_call_cancelled_while_it_waits_never_runs() -> None:
    pool = DaemonThreadPool(max_threads=1, name="pool-cancel")
    release = threading.Event()
    ran: list[str] = []
    try:
        busy = pool.submit(release.wait)
        waiting = pool.submit(lambda: ran.append("waiting"))
        assert waiting.cancel()
        release.set()
        assert busy.result() is True
        assert pool.submit(lambda: "after").result() == "after"
        assert ran == []
    finally:
        release.set()
        pool.close()


def test_close_joins_idle_threads_and_leaves_a_stuck_call_behind() -> None:
    pool = DaemonThreadPool(max_threads=3, name="pool-close")
    stuck = threading.Event()
    entered = threading.Event()

    def never_returns() -> str:
        entered.set()
        stuck.wait()
        return "late"

    try:
        hanging = pool.submit(never_returns)
        entered.wait()
        done = [pool.submit(lambda: 1), pool.submit(lambda: 2)]
        assert [future.result() for future in done] == [1, 2]
        pool.close()  # returns although one call is still running
        assert not hanging.done()
        assert pool.statistics().abandoned_threads == 1
        [left] = _threads("pool-close")  # only the stuck call's (daemon) thread
        assert left.daemon
        with pytest.raises(EngineError, match="closed"):
            pool.submit(lambda: 3)
        pool.close()  # idempotent
    finally:
        stuck.set()
    assert hanging.result() == "late"  # nobody waits for it any more, but it completes
    for thread in _threads("pool-close"):
        thread.join()  # and its thread exits after it


def test_close_cancels_calls_that_wait_for_a_thread() -> None:
    pool = DaemonThreadPool(max_threads=1, name="pool-queue")
    release = threading.Event()
    entered = threading.Event()

    def block() -> None:
        entered.set()
        release.wait()

    try:
        pool.submit(block)
        entered.wait()
        queued = pool.submit(lambda: "never")
        pool.close()
        with pytest.raises(CancelledError):
            queued.result()
    finally:
        release.set()
    for thread in _threads("pool-queue"):
        thread.join()


def test_a_pool_that_is_collected_stops_its_threads() -> None:
    pool = DaemonThreadPool(max_threads=2, name="pool-collected")
    assert pool.submit(lambda: 1).result() == 1
    threads = _threads("pool-collected")
    assert threads
    del pool
    gc.collect()
    for thread in threads:
        thread.join()
