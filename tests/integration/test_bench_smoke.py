"""The benchmark harness end to end in smoke mode: result files written, leak check passed.
No timing assertions: the figures depend on the machine."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sluiceway.bench.command import run_bench
from sluiceway.bench.runner import BenchSettings


@pytest.mark.parametrize("scenario", ["overhead", "heavy-root"])
def test_smoke_writes_results_and_passes_the_leak_check(tmp_path: Path, scenario: str) -> None:
    settings = BenchSettings(output_dir=tmp_path, smoke=True, command="test")
    written = run_bench(scenario, settings, echo=lambda line: None)
    assert (tmp_path / "summary.md") in written
    directory = tmp_path / scenario
    result = json.loads((directory / "results.json").read_text())
    assert result["leak_check"] == {"passed": True, "findings": []}
    assert result["measured_iterations"] == 1
    assert result["final_snapshots"]["task_admission"]["active_leases"] == 0
    assert result["final_snapshots"]["request_admission"]["waiters"] == 0
    assert len(result["output_hashes"]) == 1
    assert result["metrics"]["rows_written"]["mean"] > 0
    assert result["machine"]["cpu_count"] >= 1
    with (directory / "iterations.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["metric"] for row in rows} >= {"wall_seconds", "model_calls_per_second"}
    assert (
        "| metric | mean | p50 | p95 | min | max | stdev |"
        in (directory / "summary.md").read_text()
    )
    if scenario == "heavy-root":
        assert result["metrics"]["hidden_scheduler_waiters"]["max"] == 0
