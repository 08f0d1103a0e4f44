"""Keeps the garbage collector off the objects that exist before a run starts.

A run allocates many short-lived containers (tasks, requests, rows), so the collector runs
often, and each full collection walks every tracked object in the process: imported modules
(pydantic, pyarrow, pandas; about 100,000 objects once the engine is imported), the config and
the generators, all of which live as long as the run. ``gc.freeze`` moves them out of the
collector's generations, so full collections only walk what the run itself created; at the
end ``gc.unfreeze`` puts them back. Full collections are bound by memory reads, not
instructions: on the overhead benchmark (docs/benchmarks.md) freezing made the engine 1.1 to
1.2 times as fast in paired runs.

If something else in the process has frozen objects (a server that freezes before forking, to
share pages with its workers), runs leave the collector alone: unfreezing would undo that.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_active_runs = 0
_frozen_by_runs = False


@contextlib.contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """Freezes the objects alive on entry for as long as any run is inside this context."""
    global _active_runs, _frozen_by_runs
    with _lock:
        if _active_runs == 0 and gc.get_freeze_count() == 0 and gc.isenabled():
            gc.freeze()
            _frozen_by_runs = True
        _active_runs += 1
    try:
        yield
    finally:
        with _lock:
            _active_runs -= 1
            if _active_runs == 0 and _frozen_by_runs:
                gc.unfreeze()
                _frozen_by_runs = False
