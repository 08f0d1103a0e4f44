"""Builds a run's ``report.md`` and its PNG plots from the events file (and the capacity plan).

``build_report(run_dir)`` reads ``events.jsonl`` (and ``capacity_plan.json`` when present) from
``run_dir`` and writes ``report.md`` plus ``report-*.png`` beside them. Blocks on file I/O and
plotting: from the event loop, call it via ``asyncio.to_thread``. The report shows ids, counts,
durations and configured capacity values; events carry nothing else.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sluiceway.errors import StorageError
from sluiceway.observability.events import Event
from sluiceway.observability.jsonl_sink import EVENTS_FILE_NAME, read_events
from sluiceway.observability.report.attribution import Attribution, AttributionRow, Layer, attribute
from sluiceway.observability.report.plots import (
    plot_queue_depth,
    plot_resources,
    plot_throughput,
)
from sluiceway.observability.report.series import RunSeries, build_series
from sluiceway.observability.timeline import CorrelatedRuntimeView
from sluiceway.storage.atomic import write_bytes_atomically
from sluiceway.storage.capacity_plan import (
    CAPACITY_PLAN_FILE_NAME,
    CapacityPlan,
    capacity_plan_from_json,
)

REPORT_FILE_NAME = "report.md"
THROUGHPUT_PLOT = "report-throughput.png"
MODELS_PLOT = "report-models.png"
QUEUE_PLOT = "report-queue-depth.png"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportArtifacts:
    """The files a report build wrote, and the attribution it computed."""

    report_path: Path
    plot_paths: tuple[Path, ...]
    attribution: Attribution


def build_report(
    run_dir: Path,
    *,
    events_path: Path | None = None,
    output_dir: Path | None = None,
) -> ReportArtifacts:
    """Writes the report of the run in ``run_dir``.

    ``events_path`` defaults to ``run_dir/events.jsonl``; ``output_dir`` (default ``run_dir``)
    receives ``report.md`` and the PNGs. Raises ``StorageError`` when the events file is
    missing or damaged, or the capacity plan cannot be read."""
    run_dir = Path(run_dir)
    events_file = Path(events_path) if events_path is not None else run_dir / EVENTS_FILE_NAME
    if not events_file.is_file():
        raise StorageError(
            f"no events file at {events_file}; run with an events sink writing "
            f"{EVENTS_FILE_NAME} into the run directory, or pass the file's path"
        )
    plan = _read_plan(run_dir / CAPACITY_PLAN_FILE_NAME)
    return render_report(list(read_events(events_file)), output_dir or run_dir, plan=plan)


def _read_plan(path: Path) -> CapacityPlan | None:
    if not path.is_file():
        return None
    try:
        return capacity_plan_from_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc


def render_report(
    events: Sequence[Event], output_dir: Path, *, plan: CapacityPlan | None = None
) -> ReportArtifacts:
    """Writes ``report.md`` and the plots for ``events`` into ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    series = build_series(events)
    attribution = attribute(CorrelatedRuntimeView.from_events(events).timelines())
    plots = (
        plot_throughput(series, output_dir / THROUGHPUT_PLOT),
        plot_resources(series, output_dir / MODELS_PLOT),
        plot_queue_depth(series, output_dir / QUEUE_PLOT),
    )
    text = render_markdown(series, attribution, plan)
    report_path = output_dir / REPORT_FILE_NAME
    write_bytes_atomically(report_path, text.encode("utf-8"))
    return ReportArtifacts(report_path=report_path, plot_paths=plots, attribution=attribution)


# -- markdown ---------------------------------------------------------------------------------


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines.extend("| " + " | ".join(_cell(value) for value in row) + " |" for row in rows)
    return lines


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


def _attribution_rows(rows: Sequence[AttributionRow]) -> list[list[str]]:
    table = []
    for row in rows:
        limiting = row.limiting_layer
        cells = [row.name, f"{row.attempts:,}", f"{row.total_seconds:,.2f}"]
        for layer in Layer:
            share = _percent(row.share(layer))
            cells.append(f"**{share}**" if layer is limiting else share)
        cells.append(limiting.heading if limiting is not None else "–")
        table.append(cells)
    return table


def _seconds_summary(values: Sequence[float]) -> str:
    finite = sorted(v for v in values if v == v)
    if not finite:
        return "–"
    p95 = finite[min(len(finite) - 1, int(0.95 * len(finite)))]
    return f"{statistics.median(finite) * 1000:.1f} / {p95 * 1000:.1f}"


def render_markdown(series: RunSeries, attribution: Attribution, plan: CapacityPlan | None) -> str:
    lines = ["# Run report", ""]
    overview = [
        ("run id", series.run_id or "–"),
        ("status", series.status or "unknown (no scheduler_job_completed event)"),
        ("wall time", f"{series.wall_seconds:,.2f} s"),
        ("records", "–" if series.records_total is None else f"{series.records_total:,}"),
        ("rows checkpointed", f"{series.rows_written:,} written, {series.rows_dropped:,} dropped"),
        (
            "task attempts",
            ", ".join(f"{n:,} {k}" for k, n in sorted(series.tasks_by_outcome.items())) or "0",
        ),
        (
            "model requests",
            ", ".join(f"{n:,} {k}" for k, n in sorted(series.requests_by_outcome.items())) or "0",
        ),
        (
            "events",
            ", ".join(f"{n:,} {k}" for k, n in sorted(series.events_by_stream.items())),
        ),
    ]
    lines += _table(["", ""], overview)
    lines += ["", "## Throughput", "", f"![throughput over time]({THROUGHPUT_PLOT})", ""]
    lines += [
        "## Models",
        "",
        "In flight, current limit and cap per provider/model and domain; red crosses mark "
        "rate-limited attempts.",
        "",
        f"![per-model in flight, limit and cap]({MODELS_PLOT})",
        "",
    ]
    resource_rows = [
        (
            resource.label,
            f"{resource.completed:,}",
            f"{len(resource.rate_limited_at):,}",
            f"{resource.in_flight.maximum:g}",
            "–" if resource.limit.last is None else f"{resource.limit.last:g}",
            "–" if resource.cap.last is None else f"{resource.cap.last:g}",
            _seconds_summary(resource.wait_seconds),
            _seconds_summary(resource.latency_seconds),
        )
        for resource in sorted(series.resources.values(), key=lambda r: r.label)
    ]
    if resource_rows:
        lines += _table(
            [
                "provider/model (domain)",
                "attempts",
                "rate limited",
                "max in flight",
                "final limit",
                "cap",
                "wait p50 / p95 (ms)",
                "latency p50 / p95 (ms)",
            ],
            resource_rows,
        )
        lines.append("")
    lines += [
        "## Ready queue",
        "",
        f"![ready queue depth per task group]({QUEUE_PLOT})",
        "",
        "## Bottleneck attribution",
        "",
        "Share of wall time each layer was limiting: each instant is split among layers in "
        "proportion to the outstanding task attempts in each, which equals each layer's share "
        "of the attempts' summed time. The largest share of a row is in bold. See "
        "`docs/observability.md` for the phases charged to each layer.",
        "",
    ]
    header = ["", "task attempts", "task seconds", *(layer.heading for layer in Layer)]
    header.append("limiting layer")
    lines += ["### Per column", ""]
    lines += _table(
        ["column", *header[1:]], _attribution_rows([*attribution.by_column, attribution.overall])
    )
    lines += ["", "### Per model", ""]
    if attribution.by_model:
        lines += _table(["provider/model", *header[1:]], _attribution_rows(attribution.by_model))
    else:
        lines.append("No task attempt made a model request.")
    if attribution.incomplete_attempts:
        lines += [
            "",
            f"{attribution.incomplete_attempts:,} task attempt(s) without every timestamp "
            "(cancelled, failed to spawn, or from a partial events file) are left out.",
        ]
    lines += ["", *_plan_section(plan)]
    return "\n".join(lines).rstrip() + "\n"


def _plan_section(plan: CapacityPlan | None) -> list[str]:
    lines = ["## Capacity plan", ""]
    if plan is None:
        return [*lines, f"No {CAPACITY_PLAN_FILE_NAME} in the run directory."]
    rows = [
        (name, value.value, value.source.value, value.fallback_from or "")
        for name, value in sorted(plan.configured.items())
    ]
    lines += _table(["configured value", "value", "source", "fallback from"], rows)
    scalars = [
        (name, value)
        for name, value in sorted(plan.observed_maxima.items())
        if isinstance(value, int | float | str) and not isinstance(value, bool)
    ]
    if scalars:
        lines += ["", *_table(["observed maximum", "value"], scalars)]
    return lines
