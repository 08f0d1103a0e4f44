"""Progress reporting interface between a running engine and whoever displays it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressSnapshot:
    """Counts at one moment of a run; cheap to build, built only when a listener asks."""

    records_total: int
    records_done: int  # written or dropped
    rows_written: int
    rows_dropped: int
    row_groups_total: int
    row_groups_done: int
    model_requests: int
    elapsed_seconds: float


class ProgressListener(Protocol):
    def on_start(self, snapshot: ProgressSnapshot) -> None: ...

    def on_progress(self, snapshot: ProgressSnapshot) -> None: ...

    def on_finish(self, snapshot: ProgressSnapshot) -> None: ...
