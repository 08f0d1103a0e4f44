"""The run report renders from an events file; attribution shares are exact and sum to 100%."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from observability_samples import EXPECTED_TEXT, EXPECTED_TOPIC, synthetic_run
from typer.testing import CliRunner

from sluiceway.cli.app import app
from sluiceway.errors import StorageError
from sluiceway.observability import (
    EVENTS_FILE_NAME,
    CorrelatedRuntimeView,
    EventBus,
    JsonlEventSink,
)
from sluiceway.observability.report import Layer, attribute, build_report
from sluiceway.storage.capacity_plan import (
    CapacityPlan,
    CapacitySource,
    CapacityValue,
    write_capacity_plan,
)


def _write_run(run_dir: Path) -> None:
    bus = EventBus([JsonlEventSink(run_dir / EVENTS_FILE_NAME)])
    for event in synthetic_run():
        bus.emit(event)
    bus.close()
    plan = CapacityPlan(
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
