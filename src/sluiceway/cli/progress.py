"""Progress display for ``sluiceway run``: a rich bar on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from sluiceway.engine.progress import ModelProgress, ProgressSnapshot


def _rate(snapshot: ProgressSnapshot) -> float:
    return snapshot.records_done / snapshot.elapsed_seconds if snapshot.elapsed_seconds else 0.0


def _model_state(model: ModelProgress) -> str:
    if model.breaker != "closed":
        return f"breaker {model.breaker}"
    if model.cooldown_seconds > 0:
        return f"cooling down {model.cooldown_seconds:.1f}s"
    return "ok"


class RichProgress:
    """A live view: the records bar (done/total, rows/s, requests, ETA), rows per column, and per
    model the requests in flight against the current limit and the cap, with rate limits."""

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
        )
        self._live = Live(console=console, refresh_per_second=4, transient=False)
        self._task: TaskID | None = None
        self._total = 1

    def on_start(self, snapshot: ProgressSnapshot) -> None:
        self._total = max(1, snapshot.records_total)
        self._task = self._progress.add_task(
            "run", total=snapshot.records_total, rate=0.0, requests=0, dropped=0
        )
        self._live.update(self._view(snapshot))
        self._live.start()

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
        self._live.update(self._view(snapshot))

    def on_finish(self, snapshot: ProgressSnapshot) -> None:
        self.on_progress(snapshot)
        self._live.stop()

    def _view(self, snapshot: ProgressSnapshot) -> RenderableType:
        parts: list[RenderableType] = [self._progress]
        if snapshot.columns:
            columns = Table(box=None, pad_edge=False, show_edge=False)
            columns.add_column("column")
            columns.add_column("rows done", justify="right")
            for column in snapshot.columns:
                share = 100.0 * column.rows_done / self._total
                columns.add_row(column.name, f"{column.rows_done} ({share:.0f}%)")
            parts.append(columns)
        if snapshot.models:
            models = Table(box=None, pad_edge=False, show_edge=False)
            for header in ("model", "in flight", "limit", "cap", "waiting", "requests"):
                models.add_column(header, justify="left" if header == "model" else "right")
            models.add_column("rate limited", justify="right")
            models.add_column("state")
            for model in snapshot.models:
                models.add_row(
                    model.label,
                    str(model.in_flight),
                    str(model.limit),
                    str(model.cap),
                    str(model.waiters),
                    str(model.requests),
                    str(model.rate_limited),
                    _model_state(model),
                )
            parts.append(models)
        return Group(*parts)


class LogProgress:
    """One line per update, for logs and pipes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr

    def _line(self, snapshot: ProgressSnapshot) -> None:
        total = snapshot.records_total
        done = snapshot.records_done
        rate = _rate(snapshot)
        eta = f"{(total - done) / rate:.0f}s" if rate else "unknown"
        models = "".join(
            f"; {model.label} {model.in_flight}/{model.limit}/{model.cap} in flight/limit/cap, "
            f"{model.rate_limited} rate limited"
            + (f", {_model_state(model)}" if _model_state(model) != "ok" else "")
            for model in snapshot.models
        )
        self._stream.write(
            f"progress: {done}/{total} records ({100.0 * done / total:.1f}%), "
            f"{rate:.1f} rows/s, {snapshot.model_requests} requests, "
            f"{snapshot.rows_dropped} dropped, eta {eta}{models}\n"
        )
        self._stream.flush()

    def on_start(self, snapshot: ProgressSnapshot) -> None:
        self._stream.write(f"run started: {snapshot.records_total} records\n")

    def on_progress(self, snapshot: ProgressSnapshot) -> None:
        self._line(snapshot)

    def on_finish(self, snapshot: ProgressSnapshot) -> None:
        self._line(snapshot)
