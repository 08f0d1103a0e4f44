"""Builds a run's ``report.md`` and its PNG plots from the events file (and the capacity plan).

``build_report(run_dir)`` reads ``events.jsonl`` (and ``capacity_plan.json`` when present) from
``run_dir`` and writes ``report.md`` plus ``report-*.png`` beside them. Blocks on file I/O and
plotting: from the event loop, call it via ``asyncio.to_thread``. The report shows ids, counts,
durations and configured capacity values; events carry nothing else.

A file written with trace sampling (its header's ``trace_sample_rate`` below 1) holds the
detail events of a sample of task attempts: the report says so in its overview and in a
"Trace sampling" section, marks every estimated figure with "≈" (counts scaled by
``1 / rate``), and takes what it can from events that are always recorded (rows and row
groups, rate limits, limits and caps, health snapshots) or from the capacity plan (maximum in
flight per provider/model).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sluiceway.errors import StorageError
from sluiceway.observability.events import Event
from sluiceway.observability.jsonl_sink import EVENTS_FILE_NAME, read_events, read_events_header
from sluiceway.observability.report.attribution import Attribution, AttributionRow, Layer, attribute
from sluiceway.observability.report.plots import (
    plot_queue_depth,
    plot_resources,
    plot_throughput,
)
from sluiceway.observability.report.series import ResourceSeries, RunSeries, build_series
from sluiceway.observability.timeline import CorrelatedRuntimeView
from sluiceway.storage.atomic import write_bytes_atomically
from sluiceway.storage.capacity_plan import (
    CAPACITY_PLAN_FILE_NAME,
    AsyncCapacityPlan,
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
    rate = read_events_header(events_file)["trace_sample_rate"]
    return render_report(
        list(read_events(events_file)), output_dir or run_dir, plan=plan, trace_sample_rate=rate
    )


def _read_plan(path: Path) -> AsyncCapacityPlan | None:
    if not path.is_file():
        return None
    try:
        return capacity_plan_from_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc


def render_report(
    events: Sequence[Event],
    output_dir: Path,
    *,
    plan: AsyncCapacityPlan | None = None,
    trace_sample_rate: float = 1.0,
) -> ReportArtifacts:
    """Writes ``report.md`` and the plots for ``events`` into ``output_dir``.

    ``trace_sample_rate``: the rate the events were recorded at (1: every task attempt)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    series = build_series(events, trace_sample_rate=trace_sample_rate)
    view = CorrelatedRuntimeView.from_events(events)
    attribution = attribute(view.timelines(), cooldown_requests=view.unattributed_requests())
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


def rate_label(rate: float) -> str:
    """A sample rate as people read it: ``1/16`` for 0.0625, else its decimal form."""
    if rate <= 0:
        return "0"
    inverse = 1 / rate
    if abs(inverse - round(inverse)) < 1e-9:
        return f"1/{round(inverse)}"
    return f"{rate:g}"


def _counts(series: RunSeries, counts: Mapping[str, int]) -> str:
    """Outcome counts; with sampling, scaled to the run (``≈``) with the traced total."""
    if not counts:
        return "0"
    if not series.sampled:
        return ", ".join(f"{n:,} {k}" for k, n in sorted(counts.items()))
    scaled = ", ".join(f"≈{series.scaled(n):,.0f} {k}" for k, n in sorted(counts.items()))
    return f"{scaled} (from {sum(counts.values()):,} traced)"


def _sampling_lines(series: RunSeries) -> list[str]:
    if not series.sampled:
        return []
    label = rate_label(series.trace_sample_rate)
    return [
        "## Trace sampling",
        "",
        f"The events file holds the full timeline of {label} of the task attempts (chosen by "
        "a stable hash of task id and attempt, `run.events.trace_sample_rate` = "
        f"{series.trace_sample_rate:g}) and every aggregate event. So in this report:",
        "",
        f"- **sampled, scaled by {1 / series.trace_sample_rate:g} (marked ≈)**: task attempts "
        "and model requests by outcome, attempts per model, model requests/s and tasks/s;"
        if series.trace_sample_rate > 0
        else "- **not recorded (rate 0)**: task attempts and model requests by outcome, "
        "attempts per model, model requests/s and tasks/s;",
        "- **from the traced attempts only**: wait and latency percentiles, the in-flight line "
        "of the model plots (exact values at the traced requests' lease events), the "
        "bottleneck attribution (its shares estimate the run's; its attempt counts and seconds "
        "are the sample's);",
        "- **exact (always recorded)**: rows and row groups, rows checkpointed/s, rate limits, "
        "limits and caps, maximum in flight (from the capacity plan); queue depth at the "
        "traced enqueues, the health snapshots and the queue drains, estimated in between "
        f"(each traced dispatch counts it down by {1 / series.trace_sample_rate:g}).",
        "",
    ]


def _limit_changes(resource: ResourceSeries) -> str:
    """Limit changes by reason, and the holds of reported windows (``probe 12, recovery 3``)."""
    counts = Counter(reason for _, reason in resource.limit_changes)
    if resource.paced_at:
        counts["window holds"] = len(resource.paced_at)
    return ", ".join(f"{reason} {count:,}" for reason, count in sorted(counts.items())) or "–"


def _max_in_flight(
    series: RunSeries, resource: ResourceSeries, plan: AsyncCapacityPlan | None
) -> str:
    """The capacity plan's exact maximum when it has one, else the events' (a lower bound when
    sampled)."""
    if plan is not None:
        by_resource = plan.observed_maxima.get("requests_in_flight_by_resource")
        key = f"{resource.provider}/{resource.model}[{resource.domain}]"
        if isinstance(by_resource, Mapping) and key in by_resource:
            return f"{by_resource[key]:g}"
    text = f"{resource.in_flight.maximum:g}"
    return f"≥{text}" if series.sampled else text


def render_markdown(
    series: RunSeries, attribution: Attribution, plan: AsyncCapacityPlan | None
) -> str:
    lines = ["# Run report", ""]
    overview = [
        ("run id", series.run_id or "–"),
        ("status", series.status or "unknown (no scheduler_job_completed event)"),
        ("wall time", f"{series.wall_seconds:,.2f} s"),
        ("records", "–" if series.records_total is None else f"{series.records_total:,}"),
        ("rows checkpointed", f"{series.rows_written:,} written, {series.rows_dropped:,} dropped"),
        ("task attempts", _counts(series, series.tasks_by_outcome)),
        ("model requests", _counts(series, series.requests_by_outcome)),
        (
            "events",
            ", ".join(f"{n:,} {k}" for k, n in sorted(series.events_by_stream.items())),
        ),
        (
            "trace sample",
            f"{rate_label(series.trace_sample_rate)} of the task attempts (see below)"
            if series.sampled
            else "every task attempt",
        ),
    ]
    lines += _table(["", ""], overview)
    lines += ["", *_sampling_lines(series)]
    lines += ["## Throughput", "", f"![throughput over time]({THROUGHPUT_PLOT})", ""]
    if series.sampled:
        lines += [
            "Model requests/s and tasks/s are estimated from the traced sample; rows "
            "checkpointed/s is exact.",
            "",
        ]
    lines += [
        "## Models",
        "",
        "In flight, current limit and cap per provider/model and domain; red crosses mark "
        "rate-limited attempts; along the bottom, brown marks attempts abandoned at their "
        "adaptive timeout and cyan ones hedged attempts."
        + (" In flight is drawn at the traced requests' lease events." if series.sampled else ""),
        "",
        f"![per-model in flight, limit and cap]({MODELS_PLOT})",
        "",
    ]

    def attempts_of(count: int) -> str:
        return f"≈{series.scaled(count):,.0f}" if series.sampled else f"{count:,}"

    traced = "traced " if series.sampled else ""
    resource_rows = [
        (
            resource.label,
            attempts_of(resource.completed),
            f"{len(resource.rate_limited_at):,}",
            _max_in_flight(series, resource, plan),
            "–" if resource.limit.last is None else f"{resource.limit.last:g}",
            "–" if resource.cap.last is None else f"{resource.cap.last:g}",
            _limit_changes(resource),
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
                "limit changes",
                f"{traced}wait p50 / p95 (ms)",
                f"{traced}latency p50 / p95 (ms)",
            ],
            resource_rows,
        )
        lines.append("")
    lines += _straggler_lines(series, plan)
    lines += [
        "## Ready queue",
        "",
        f"![ready queue depth per task group]({QUEUE_PLOT})",
        "",
        *(
            [
                "Depths are exact at the traced enqueues, the health snapshots and the queue "
                "drains; in between, each traced dispatch counts the queue down by "
                f"{series.scaled(1.0):g} (an estimate).",
                "",
            ]
            if series.sampled
            else []
        ),
        "## Bottleneck attribution",
        "",
        "Share of wall time each layer was limiting: each instant is split among layers in "
        "proportion to the outstanding task attempts in each, which equals each layer's share "
        "of the attempts' summed time. The largest share of a row is in bold. See "
        "`docs/observability.md` for the phases charged to each layer.",
        "",
    ]
    if series.sampled:
        lines += [
            "Computed over the traced task attempts "
            f"({rate_label(series.trace_sample_rate)} of them): the shares estimate the whole "
            "run's, the attempt counts and seconds are the sample's.",
            "",
        ]
    header = ["", f"{traced}task attempts", f"{traced}task seconds"]
    header += [layer.heading for layer in Layer]
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


def _straggler_lines(series: RunSeries, plan: AsyncCapacityPlan | None) -> list[str]:
    """Adaptive timeouts and hedges per provider/model (exact: always recorded), and the
    adaptive timeout in force at the end per column (from the capacity plan)."""
    resources = sorted(series.resources.values(), key=lambda r: r.label)
    expired = sum(len(r.adaptive_timeouts) for r in resources)
    hedges = sum(len(r.hedges_started_at) for r in resources)
    results: Counter[str] = Counter()
    for resource in resources:
        results.update(resource.hedge_results)
    lines = [
        "## Stragglers",
        "",
        f"{expired:,} adaptive timeout(s): attempts abandoned at a deadline that follows the "
        "latency of their provider/model and column (released as `provider_timeout` and "
        f"retried). {hedges:,} hedged attempt(s): {results['won']:,} won, "
        f"{results['lost']:,} lost, {results['failed']:,} failed "
        "(`run.stragglers`, see `docs/config-reference.md`).",
        "",
    ]
    rows = [
        (
            resource.label,
            f"{len(resource.adaptive_timeouts):,}",
            _deadline_range(resource),
            f"{len(resource.hedges_started_at):,}",
            f"{resource.hedge_results['won']:,}",
            f"{resource.hedge_results['lost']:,}",
            f"{resource.hedge_results['failed']:,}",
        )
        for resource in resources
        if resource.adaptive_timeouts or resource.hedges_started_at
    ]
    if rows:
        header = ["provider/model (domain)", "adaptive timeouts", "deadlines (s)", "hedges"]
        lines += [*_table([*header, "won", "lost", "failed"], rows), ""]
    windows = _latency_windows(plan)
    if windows:
        lines += [
            "Adaptive timeout and hedge delay in force at the end (before the model's "
            "`timeout_seconds` cap; a column with too few successes of its own uses its "
            "provider/model's):",
            "",
            *_table(
                [
                    "provider/model [domain]",
                    "column",
                    "successes kept",
                    "timeout (s)",
                    "hedge after (s)",
                    "expiries",
                ],
                windows,
            ),
            "",
        ]
    return lines


def _deadline_range(resource: ResourceSeries) -> str:
    deadlines = [deadline for _, deadline in resource.adaptive_timeouts]
    if not deadlines:
        return "–"
    low, high = min(deadlines), max(deadlines)
    return f"{low:.3g}" if low == high else f"{low:.3g} – {high:.3g}"


def _latency_windows(plan: AsyncCapacityPlan | None) -> list[tuple[str, ...]]:
    executor = plan.runtime_snapshot.get("model_request_executor") if plan else None
    windows = executor.get("latency_windows") if isinstance(executor, Mapping) else None
    if not isinstance(windows, list):
        return []

    def seconds(value: object) -> str:
        return f"{value:.3g}" if isinstance(value, int | float) else "–"

    hedging = plan.configured.get("run.stragglers.hedging") if plan else None
    hedges = hedging is None or bool(hedging.value)

    return [
        (
            str(window.get("resource")),
            str(window.get("column") or "(all)"),
            f"{window.get('samples', 0):,}",
            seconds(window.get("timeout_seconds")),
            seconds(window.get("hedge_after_seconds")) if hedges else "– (off)",
            f"{window.get('expiries', 0):,}",
        )
        for window in windows
        if isinstance(window, Mapping)
    ]


def _plan_section(plan: AsyncCapacityPlan | None) -> list[str]:
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
