"""The report's PNG plots, drawn with matplotlib's Agg backend (no display needed).

matplotlib is imported when a plot is drawn, not when this module is imported, so commands
that never draw do not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sluiceway.observability.report.series import ResourceSeries, RunSeries, StepSeries

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_RESOURCE_PLOTS = 8
MAX_QUEUE_GROUPS = 8


def _figure(rows: int = 1, height: float = 3.2) -> Figure:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    return Figure(figsize=(9.0, max(2.6, height * rows)), dpi=100, layout="constrained")


def _step(axes: Axes, series: StepSeries, end: float, **style: object) -> None:
    if not series.times:
        return
    times = [*series.times, max(end, series.times[-1])]
    values = [*series.values, series.values[-1]]
    axes.step(times, values, where="post", **style)  # type: ignore[arg-type]


def plot_throughput(series: RunSeries, path: Path) -> Path:
    """Model requests, task attempts and rows completed per second over the run (the first two
    estimated from the traced sample when the run was trace-sampled)."""
    throughput = series.throughput()
    figure = _figure()
    axes = figure.add_subplot()
    starts = list(throughput.bucket_starts)
    estimated = " (≈, from the traced sample)" if series.sampled else ""
    axes.step(
        starts, throughput.requests_per_second, where="post", label=f"model requests/s{estimated}"
    )
    axes.step(starts, throughput.tasks_per_second, where="post", label=f"tasks/s{estimated}")
    axes.step(starts, throughput.rows_per_second, where="post", label="rows checkpointed/s")
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("per second")
    axes.set_title(f"Throughput ({throughput.bucket_seconds:.3g} s buckets)")
    axes.legend(loc="upper right", fontsize="small")
    axes.grid(alpha=0.3)
    figure.savefig(path)
    return path


# How the limit's changes are marked on the limit line, by reason (others are not marked).
_CHANGE_MARKERS = {
    "probe": ("^", "tab:green", "probe"),
    "recovery": ("o", "tab:blue", "recovery"),
    "probe_refused": ("v", "tab:orange", "probe refused"),
    "rate_limited": ("v", "tab:red", "decrease"),
}


def plot_resources(series: RunSeries, path: Path) -> Path:
    """Per provider/model and domain: in flight, limit and cap, with rate-limit marks, the
    limit's changes marked by reason, where reported windows held grants back, and the
    attempts abandoned at their adaptive timeout and the hedged attempts."""
    resources: list[ResourceSeries] = sorted(
        series.resources.values(), key=lambda r: (-r.completed, r.label)
    )[:MAX_RESOURCE_PLOTS]
    figure = _figure(rows=max(1, len(resources)), height=2.4)
    if not resources:
        axes = figure.add_subplot()
        axes.text(0.5, 0.5, "no model requests", ha="center", va="center")
        axes.set_axis_off()
        figure.savefig(path)
        return path
    end = series.wall_seconds
    for index, resource in enumerate(resources, start=1):
        axes = figure.add_subplot(len(resources), 1, index)
        _step(
            axes,
            resource.in_flight,
            end,
            label="in flight (traced requests)" if series.sampled else "in flight",
        )
        _step(axes, resource.limit, end, label="current limit", linestyle="--")
        _step(axes, resource.cap, end, label="cap", linestyle=":", color="black")
        if resource.rate_limited_at:
            top = max(resource.cap.maximum, resource.limit.maximum, resource.in_flight.maximum, 1)
            axes.plot(
                resource.rate_limited_at,
                [top] * len(resource.rate_limited_at),
                linestyle="none",
                marker="x",
                color="red",
                label="rate limited",
            )
        limit_at = dict(zip(resource.limit.times, resource.limit.values, strict=True))
        for reason, (marker, color, label) in _CHANGE_MARKERS.items():
            times = [at for at, why in resource.limit_changes if why == reason]
            if times:
                axes.plot(
                    times,
                    [limit_at.get(at, resource.limit.last or 0) for at in times],
                    linestyle="none",
                    marker=marker,
                    markersize=4,
                    color=color,
                    label=label,
                )
        if resource.paced_at:
            axes.plot(
                resource.paced_at,
                [0] * len(resource.paced_at),
                linestyle="none",
                marker="|",
                color="tab:purple",
                label="held by reported window",
            )
        if resource.adaptive_timeouts:
            axes.plot(
                [at for at, _ in resource.adaptive_timeouts],
                [0] * len(resource.adaptive_timeouts),
                linestyle="none",
                marker="1",
                color="tab:brown",
                label="adaptive timeout",
            )
        if resource.hedges_started_at:
            axes.plot(
                resource.hedges_started_at,
                [0] * len(resource.hedges_started_at),
                linestyle="none",
                marker="P",
                markersize=4,
                color="tab:cyan",
                label="hedge started",
            )
        axes.set_title(resource.label, fontsize="medium")
        axes.set_ylabel("requests")
        axes.grid(alpha=0.3)
        axes.legend(loc="upper right", fontsize="x-small")
    axes.set_xlabel("seconds since start")
    figure.savefig(path)
    return path


def plot_queue_depth(series: RunSeries, path: Path) -> Path:
    """Ready-queue depth per task group (the deepest groups)."""
    groups = sorted(series.queue_depth.items(), key=lambda item: (-item[1].maximum, item[0]))
    figure = _figure()
    axes = figure.add_subplot()
    if not groups:
        axes.text(0.5, 0.5, "no queue events", ha="center", va="center")
        axes.set_axis_off()
    else:
        for group, depth in groups[:MAX_QUEUE_GROUPS]:
            _step(axes, depth, series.wall_seconds, label=group)
        axes.set_xlabel("seconds since start")
        axes.set_ylabel("queued tasks")
        axes.set_title(
            "Ready queue depth per task group"
            + (" (≈ between exact points)" if series.sampled else "")
        )
        axes.grid(alpha=0.3)
        axes.legend(loc="upper right", fontsize="x-small")
    figure.savefig(path)
    return path
