"""Progress display for ``sluiceway run``: a rich bar on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sluiceway.engine.progress import ProgressSnapshot


def _rate(snapshot: ProgressSnapshot) -> float:
    return snapshot.records_done / snapshot.elapsed_seconds if snapshot.elapsed_seconds else 0.0


class RichProgress:
    """A live bar: records done/total, rows/s, requests, elapsed and ETA."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]generating"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>8.1f} rows/s"),
            TextColumn("{task.fields[requests]} requests"),
            TextColumn("{task.fields[dropped]} dropped"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None

    def on_start(self, snapshot: ProgressSnapshot) -> None:
        self._progress.start()
        self._task = self._progress.add_task(
            "run", total=snapshot.records_total, rate=0.0, requests=0, dropped=0
        )

    def on_progress(self, snapshot: ProgressSnapshot) -> None:
        if self._task is None:
            return
        self._progress.update(
            self._task,
            completed=snapshot.records_done,
            rate=_rate(snapshot),
            requests=snapshot.model_requests,
            dropped=snapshot.rows_dropped,
        )

    def on_finish(self, snapshot: ProgressSnapshot) -> None:
        self.on_progress(snapshot)
        self._progress.stop()


class LogProgress:
    """One line per update, for logs and pipes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr

    def _line(self, snapshot: ProgressSnapshot) -> None:
        total = snapshot.records_total
        done = snapshot.records_done
        rate = _rate(snapshot)
        eta = (total - done) / rate if rate else float("nan")
        self._stream.write(
            f"progress: {done}/{total} records ({100.0 * done / total:.1f}%), "
            f"{rate:.1f} rows/s, {snapshot.model_requests} requests, "
            f"{snapshot.rows_dropped} dropped, eta {eta:.0f}s\n"
        )
        self._stream.flush()

    def on_start(self, snapshot: ProgressSnapshot) -> None:
        self._stream.write(f"run started: {snapshot.records_total} records\n")

    def on_progress(self, snapshot: ProgressSnapshot) -> None:
        self._line(snapshot)

    def on_finish(self, snapshot: ProgressSnapshot) -> None:
        self._line(snapshot)
