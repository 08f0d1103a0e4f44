"""Progress display for ``sluiceway run``: a rich bar on a terminal, plain log lines elsewhere.

Both show the time left in two units at most (``42s``, ``3m 05s``, ``2h 10m``, ``4d 3h``,
``135y 97d``), from the mean rate since the start: ``(total - done) / (done / elapsed)``.
"""

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
)
from rich.table import Table

from sluiceway.engine.progress import ModelProgress, ProgressSnapshot

_MINUTE = 60
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
_YEAR = 365 * _DAY
MAX_SHOWN_YEARS = 1000


def _rate(snapshot: ProgressSnapshot) -> float:
    return snapshot.records_done / snapshot.elapsed_seconds if snapshot.elapsed_seconds else 0.0


def format_duration(seconds: float) -> str:
    """``seconds`` in its two largest units, rounded down: ``59s``, ``1m 05s``, ``2h 00m``,
    ``3d 4h``, ``135y 97d``; ``> 1,000y`` beyond that (a year is 365 days)."""
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {seconds}")
    whole = int(seconds)
    if whole < _MINUTE:
        return f"{whole}s"
    if whole < _HOUR:
        return f"{whole // _MINUTE}m {whole % _MINUTE:02d}s"
    if whole < _DAY:
        return f"{whole // _HOUR}h {whole % _HOUR // _MINUTE:02d}m"
    if whole < _YEAR:
        return f"{whole // _DAY}d {whole % _DAY // _HOUR}h"
    if whole < MAX_SHOWN_YEARS * _YEAR:
        return f"{whole // _YEAR}y {whole % _YEAR // _DAY}d"
    return f"> {MAX_SHOWN_YEARS:,}y"


def eta(snapshot: ProgressSnapshot) -> str:
    """Time left at the mean rate so far: ``unknown`` before the first record is done."""
    rate = _rate(snapshot)
    if not rate:
        return "unknown"
    return format_duration(max(0, snapshot.records_total - snapshot.records_done) / rate)


def _stragglers(snapshot: ProgressSnapshot) -> str:
    """``, 3 abandoned stragglers, 1 hedged`` when there were any."""
    parts = []
    if snapshot.adaptive_timeouts:
        parts.append(f"{snapshot.adaptive_timeouts} abandoned stragglers")
    if snapshot.hedges:
        parts.append(f"{snapshot.hedges} hedged")
    return "".join(f", {part}" for part in parts)


def _model_state(model: ModelProgress) -> str:
    if model.breaker != "closed":
        return f"breaker {model.breaker}"
    if model.cooldown_seconds > 0:
        return f"cooling down {model.cooldown_seconds:.1f}s"
    if model.paced_seconds > 0:
        return f"paced by the provider's window {model.paced_seconds:.1f}s"
    return _PHASE_STATES.get(model.limit_phase or "", "ok")


# What an adaptive limit's phase means to a reader of the live view.
_PHASE_STATES = {
    "startup": "starting",
    "recovery": "recovering",
    "probe": "probing",
}


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
            TextColumn("{task.fields[dropped]} dropped{task.fields[stragglers]}"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=console,
        )
        self._live = Live(console=console, refresh_per_second=4, transient=False)
        self._task: TaskID | None = None
        self._total = 1

    def on_start(self, snapshot: ProgressSnapshot) -> None:
        self._total = max(1, snapshot.records_total)
        self._task = self._progress.add_task(
            "run",
            total=snapshot.records_total,
            rate=0.0,
            requests=0,
            dropped=0,
            stragglers="",
            eta="unknown",
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
            stragglers=_stragglers(snapshot),
            eta=eta(snapshot),
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
        models = "".join(
            f"; {model.label} {model.in_flight}/{model.limit}/{model.cap} in flight/limit/cap, "
            f"{model.rate_limited} rate limited"
            + (f", {_model_state(model)}" if _model_state(model) != "ok" else "")
            for model in snapshot.models
        )
        self._stream.write(
            f"progress: {done}/{total} records ({100.0 * done / total:.1f}%), "
            f"{rate:.1f} rows/s, {snapshot.model_requests} requests, "
            f"{snapshot.rows_dropped} dropped{_stragglers(snapshot)}, eta {eta(snapshot)}"
            f"{models}\n"
        )
        self._stream.flush()

    def on_start(self, snapshot: ProgressSnapshot) -> None:
        self._stream.write(f"run started: {snapshot.records_total} records\n")

    def on_progress(self, snapshot: ProgressSnapshot) -> None:
        self._line(snapshot)

    def on_finish(self, snapshot: ProgressSnapshot) -> None:
        self._line(snapshot)
