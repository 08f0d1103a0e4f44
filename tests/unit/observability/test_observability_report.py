"""The run report renders from an events file; attribution shares are exact and sum to 100%."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from observability_samples import EXPECTED_TEXT, EXPECTED_TOPIC, synthetic_run
from typer.testing import CliRunner

from sluiceway.cli.app import app
from sluiceway.context import TaskCorrelation
from sluiceway.errors import StorageError
from sluiceway.observability import (
    EVENTS_FILE_NAME,
    TRACED_KINDS,
    AttemptEvent,
    CorrelatedRuntimeView,
    Event,
    EventBus,
    EventKind,
    JsonlEventSink,
    TaskEvent,
)
from sluiceway.observability.codes import HedgeResultCode, RequestDomainCode
from sluiceway.observability.report import Layer, attribute, build_report
from sluiceway.observability.report.document import render_report
from sluiceway.observability.report.series import build_series
from sluiceway.observability.request_events import (
    RequestAdaptiveTimeout,
    RequestHedgeCompleted,
    RequestHedgeStarted,
    RequestRateLimited,
)
from sluiceway.observability.scheduler_events import ReadyEnqueued, WorkerSpawned
from sluiceway.storage.capacity_plan import (
    AsyncCapacityPlan,
    CapacitySource,
    CapacityValue,
    write_capacity_plan,
)


def _write_run(run_dir: Path) -> None:
    bus = EventBus([JsonlEventSink(run_dir / EVENTS_FILE_NAME)])
    for event in synthetic_run():
        bus.emit(event)
    bus.close()
    plan = AsyncCapacityPlan(
        configured={
            "run.max_in_flight_tasks": CapacityValue(value=64, source=CapacitySource.DEFAULT)
        },
        observed_maxima={"row_groups_in_flight": 1},
    )
    write_capacity_plan(run_dir, plan)


def test_attribution_charges_each_phase_to_its_layer() -> None:
    attribution = attribute(CorrelatedRuntimeView.from_events(synthetic_run()).timelines())
    rows = {row.name: row for row in attribution.by_column}
    for name, expected in (("text", EXPECTED_TEXT), ("topic", EXPECTED_TOPIC)):
        got = {layer.value: rows[name].seconds_by_layer[layer] for layer in Layer}
        assert got == pytest.approx(expected)
    (model,) = attribution.by_model
    assert model.name == "sim/sim-writer"
    assert model.attempts == 2
    assert model.limiting_layer is Layer.PROVIDER_EXECUTION
    for row in (*attribution.by_column, *attribution.by_model, attribution.overall):
        assert sum(row.share(layer) for layer in Layer) == pytest.approx(1.0)


def test_the_report_renders_from_an_events_file(tmp_path: Path) -> None:
    _write_run(tmp_path)
    artifacts = build_report(tmp_path)
    assert artifacts.report_path == tmp_path / "report.md"
    assert len(artifacts.plot_paths) == 3
    for plot in artifacts.plot_paths:
        assert plot.parent == tmp_path
        assert plot.read_bytes().startswith(b"\x89PNG")
        assert plot.stat().st_size > 1000
    text = artifacts.report_path.read_text(encoding="utf-8")
    for plot in artifacts.plot_paths:
        assert f"]({plot.name})" in text
    assert "run-1" in text
    assert "run.max_in_flight_tasks" in text
    # Every attribution row's shares sum to ~100%.
    section = text.split("## Bottleneck attribution", 1)[1].split("## Capacity plan", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == 4  # text, topic, all columns, sim/sim-writer
    for row in rows:
        shares = [float(value) for value in re.findall(r"([\d.]+)%", row)]
        assert len(shares) == len(Layer)
        assert sum(shares) == pytest.approx(100.0, abs=0.5)


def test_the_report_command_rebuilds_the_report(tmp_path: Path) -> None:
    _write_run(tmp_path)
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.md").is_file()
    assert (tmp_path / "report-models.png").stat().st_size > 0


def test_a_run_without_events_is_reported_clearly(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no events file"):
        build_report(tmp_path)
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1


def test_an_empty_events_file_still_renders(tmp_path: Path) -> None:
    JsonlEventSink(tmp_path / EVENTS_FILE_NAME).close()
    artifacts = build_report(tmp_path)
    assert "No task attempt made a model request." in artifacts.report_path.read_text()


# -- trace sampling ------------------------------------------------------------------------------


def _sampled(events: list[Event], traced: set[str]) -> list[Event]:
    """``events`` as a run tracing only the task ids in ``traced`` would have emitted them."""
    execution_of = {e.task_id: e.execution_id for e in events if isinstance(e, WorkerSpawned)}
    untraced = {execution_of[t] for t in execution_of if t not in traced}
    kept = []
    for event in events:
        if event.kind not in TRACED_KINDS:
            kept.append(event)
        elif isinstance(event, TaskEvent):
            if event.task_id in traced:
                kept.append(event)
        elif event.correlation is None or event.correlation.execution_id not in untraced:
            kept.append(event)
    return kept


def test_a_sampled_events_file_gives_a_report_that_says_so_and_scales_counts(
    tmp_path: Path,
) -> None:
    events = _sampled(synthetic_run(), traced={"topic/0/0", "text/0/1"})
    with JsonlEventSink(tmp_path / EVENTS_FILE_NAME, trace_sample_rate=0.5) as sink:
        for event in events:
            sink.handle(event)
    artifacts = build_report(tmp_path)
    text = artifacts.report_path.read_text(encoding="utf-8")
    assert "## Trace sampling" in text and "1/2 of the task attempts" in text
    # 2 traced successes stand for 4 task attempts; 1 traced request for 2.
    assert "| task attempts | ≈4 succeeded (from 2 traced) |" in text
    assert "| model requests | ≈2 success (from 1 traced) |" in text
    assert "traced task attempts" in text and "traced wait p50 / p95 (ms)" in text
    # The untraced attempt's rate limit is still counted and marked.
    row = next(line for line in text.splitlines() if line.startswith("| sim/sim-writer (chat)"))
    assert row.split("|")[2:4] == [" ≈2 ", " 1 "]
    # Rows checkpointed are exact; tasks per second are scaled back to the run.
    series = build_series(events, trace_sample_rate=0.5)
    throughput = series.throughput()
    assert sum(throughput.rows_per_second) * throughput.bucket_seconds == pytest.approx(2)
    assert sum(throughput.tasks_per_second) * throughput.bucket_seconds == pytest.approx(4)
    full = build_report(tmp_path, events_path=_full_file(tmp_path)).report_path.read_text()
    assert "## Trace sampling" not in full and "| task attempts | 4 succeeded |" in full


def _full_file(tmp_path: Path) -> Path:
    path = tmp_path / "full" / EVENTS_FILE_NAME
    path.parent.mkdir()
    with JsonlEventSink(path) as sink:
        for event in synthetic_run():
            sink.handle(event)
    return path


def test_a_sampled_dispatch_counts_the_queue_down_for_the_dispatches_it_stands_for() -> None:
    common = {"column": "text", "row_group": 0, "group": "g", "correlation": None}
    events: list[Event] = [
        ReadyEnqueued(captured_at=1.0, task_id="a", group_depth=9, queued_total=9, **common),
        WorkerSpawned(captured_at=2.0, task_id="a", lease_id=1, execution_id=1, **common),
        WorkerSpawned(captured_at=3.0, task_id="b", lease_id=2, execution_id=2, **common),
        WorkerSpawned(captured_at=4.0, task_id="c", lease_id=3, execution_id=3, **common),
    ]
    assert build_series(events).queue_depth["g"].values == [9, 8, 7, 6]
    # At 1/4 each traced spawn stands for 4 dispatches; never below 0.
    assert build_series(events, trace_sample_rate=0.25).queue_depth["g"].values == [9, 5, 1, 0]


def test_the_cooldown_of_an_untraced_attempt_still_counts_for_traced_waits() -> None:
    untraced = TaskCorrelation(
        run_id="run-1",
        task_id="text/0/0",
        column="text",
        row_group=0,
        row_index=0,
        task_kind="cell",
        group_key="model:sim:sim-writer:text",
        group_weight=1,
        execution_id=9,
        traced=False,
    )
    limited = RequestRateLimited(
        captured_at=100.3,
        correlation=untraced,
        provider="sim",
        model="sim-writer",
        domain=RequestDomainCode.CHAT,
        attempt_id=1,
        retry_after_seconds=0.5,
        cooldown_seconds=0.5,
    )
    events = _sampled(synthetic_run(), traced={"topic/0/0", "topic/0/1", "text/0/1"})
    # text/0/1 waits from 100.45 to 100.8 while the untraced attempt's cooldown runs to 100.8.
    events = [e for e in events if not isinstance(e, RequestRateLimited)] + [limited]
    events = [_later_wait(e) for e in events]
    view = CorrelatedRuntimeView.from_events(events)
    assert len(view.unattributed_requests()) == 1
    with_cooldown = attribute(view.timelines(), cooldown_requests=view.unattributed_requests())
    without = attribute(view.timelines())
    text = next(row for row in with_cooldown.by_column if row.name == "text")
    assert text.seconds_by_layer[Layer.COOLDOWN] == pytest.approx(0.35)
    text = next(row for row in without.by_column if row.name == "text")
    assert text.seconds_by_layer[Layer.COOLDOWN] == 0.0


def _later_wait(event: Event) -> Event:
    """text/0/1's request (attempt 3) waits 100.45 -> 100.8 and runs 100.8 -> 100.9."""
    if not isinstance(event, AttemptEvent) or event.attempt_id != 3:
        return event
    times = {
        EventKind.REQUEST_WAIT_STARTED: 100.45,
        EventKind.REQUEST_WAIT_COMPLETED: 100.8,
        EventKind.REQUEST_LEASE_ACQUIRED: 100.8,
        EventKind.MODEL_REQUEST_STARTED: 100.8,
        EventKind.MODEL_REQUEST_COMPLETED: 100.9,
        EventKind.REQUEST_LEASE_RELEASED: 100.9,
    }
    return dataclasses.replace(event, captured_at=times[event.kind])


def test_adaptive_timeouts_and_hedges_are_counted_per_model(tmp_path: Path) -> None:
    tags = {"provider": "sim", "model": "sim-writer", "domain": RequestDomainCode.CHAT}
    events: list[Event] = [
        *synthetic_run(),
        RequestAdaptiveTimeout(
            **tags,
            attempt_id=90,
            lease_id=90,
            timeout_seconds=1.0,
            configured_timeout_seconds=60.0,
            quantile_seconds=0.2,
            samples=40,
        ),
        RequestAdaptiveTimeout(
            **tags,
            attempt_id=91,
            lease_id=91,
            timeout_seconds=2.0,
            configured_timeout_seconds=60.0,
            quantile_seconds=0.2,
            samples=40,
        ),
        RequestHedgeStarted(
            **tags, attempt_id=92, lease_id=92, primary_attempt_id=93, hedge_after_seconds=0.4
        ),
        RequestHedgeCompleted(
            **tags, attempt_id=92, primary_attempt_id=93, result=HedgeResultCode.WON
        ),
    ]
    plan = AsyncCapacityPlan(
        configured={
            "run.stragglers.hedging": CapacityValue(value=True, source=CapacitySource.RUN_CONFIG)
        },
        runtime_snapshot={
            "model_request_executor": {
                "latency_windows": [
                    {
                        "resource": "sim/sim-writer[chat]",
                        "column": "text",
                        "samples": 40,
                        "timeout_seconds": 1.0,
                        "hedge_after_seconds": 0.4,
                        "expiries": 2,
                    }
                ]
            }
        },
    )
    text = render_report(events, tmp_path, plan=plan).report_path.read_text(encoding="utf-8")
    section = text.split("## Stragglers", 1)[1].split("## Ready queue", 1)[0]
    assert "2 adaptive timeout(s)" in section
    assert "1 hedged attempt(s): 1 won, 0 lost, 0 failed" in section
    assert "| sim/sim-writer (chat) | 2 | 1 – 2 | 1 | 1 | 0 | 0 |" in section
    assert "| sim/sim-writer[chat] | text | 40 | 1 | 0.4 | 2 |" in section
