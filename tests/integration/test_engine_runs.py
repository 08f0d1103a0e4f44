"""Whole-engine runs on the simulated provider: output, determinism, accounting, leases."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from integration_configs import base_config

from sluiceway.columns.base import GenerationContext
from sluiceway.config.models import DatasetConfig
from sluiceway.engine.run import RunOptions, RunOutcome, run_dataset
from sluiceway.storage.dataset import load_dataset


def _run(config: dict[str, Any], output: Path | None) -> RunOutcome:
    cfg = DatasetConfig.model_validate(config)
    return asyncio.run(run_dataset(cfg, RunOptions(output_dir=output, overwrite=True)))


def _assert_no_leaks(outcome: RunOutcome) -> None:
    runtime = outcome.capacity_plan.runtime_snapshot
    tasks = runtime["task_admission"]
    assert tasks["active_leases"] == 0
    assert tasks["acquired_total"] == tasks["released_total"] > 0
    assert tasks["release_diagnostics"] == 0
    requests = runtime["request_admission"]
    assert requests["live_leases"] == 0
    assert requests["waiters"] == 0
    assert requests["granted_total"] == requests["released_total"]


def test_run_writes_every_record_with_manifest_and_capacity_plan(tmp_path: Path) -> None:
    outcome = _run(base_config(num_records=12, buffer_size=5), tmp_path / "out")
    frame = load_dataset(tmp_path / "out")
    assert len(frame) == 12
    assert list(frame["_row_index"]) == list(range(12))
    assert {"topic", "n", "who", "title", "text", "facts", "score", "vec"} <= set(frame.columns)
    assert frame["title"].iloc[0] == f"{frame['who'].iloc[0]} on {frame['topic'].iloc[0]}"
    assert all(fact["tone"] in {"warm", "cold"} for fact in frame["facts"])
    assert all(1 <= s["clarity"]["score"] <= 5 for s in frame["score"])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rows_written"] == 12
    assert len(manifest["files"]) == 3  # 5 + 5 + 2 rows
    plan = json.loads((tmp_path / "out" / "capacity_plan.json").read_text())
    assert plan["configured"]["run.buffer_size"]["source"] == "run_config"
    assert plan["configured"]["run.max_in_flight_tasks"]["source"] == "default"
    assert plan["observed_maxima"]["row_groups_in_flight"] >= 1
    # 4 model calls per row (text, facts, score, vec), one request lease each.
    assert outcome.info.model_requests == 48
    _assert_no_leaks(outcome)


def _frame(outcome: RunOutcome) -> pd.DataFrame:
    assert outcome.rows is not None
    return pd.DataFrame(outcome.rows)


def test_same_seed_same_content_for_any_buffer_size() -> None:
    small = _frame(_run(base_config(num_records=17, buffer_size=3), None))
    large = _frame(_run(base_config(num_records=17, buffer_size=10), None))
    again = _frame(_run(base_config(num_records=17, buffer_size=3), None))
    pd.testing.assert_frame_equal(small, again)
    pd.testing.assert_frame_equal(small, large)


def test_a_different_seed_changes_content() -> None:
    config = base_config(num_records=6)
    other = base_config(num_records=6)
    other["run"]["seed"] = 12
    assert not _frame(_run(config, None)).equals(_frame(_run(other, None)))


CALLS: list[int] = []


async def variable_calls(row: Mapping[str, Any], ctx: GenerationContext) -> int:
    count = int(row["n"])
    for i in range(count):
        await ctx.models.generate_text("writer", f"call {i} for {row['topic']}")
    CALLS.append(count)
    return count


def test_custom_column_gets_one_request_lease_per_call() -> None:
    CALLS.clear()
    config = base_config(num_records=20, buffer_size=6)
    config["columns"] = config["columns"][:2] + [
        {
            "name": "calls",
            "type": "custom",
            "function": f"{__name__}:variable_calls",
            "models": ["writer"],
            "depends_on": ["n", "topic"],
        }
    ]
    outcome = _run(config, None)
    rows = _frame(outcome)
    assert sorted(CALLS) == sorted(rows["calls"])
    assert 0 in CALLS and max(CALLS) > 1  # zero, one and many calls all happened
    granted = outcome.capacity_plan.runtime_snapshot["request_admission"]["granted_total"]
    assert granted == sum(CALLS) == outcome.info.model_requests
    _assert_no_leaks(outcome)


def test_rate_limited_simulated_endpoint_still_completes() -> None:
    config = base_config(num_records=30, buffer_size=10)
    config["providers"][0]["simulation"] = {
        "latency_seconds": 0.002,
        "capacity": 2,
        "retry_after_seconds": 0.001,
    }
    outcome = _run(config, None)
    assert outcome.info.rows_written == 30
    assert outcome.info.rate_limited > 0
    _assert_no_leaks(outcome)


def failing_column(row: Mapping[str, Any], ctx: GenerationContext) -> str:
    if row["n"] == 0:
        raise ValueError("cannot handle zero")
    return "ok"


def test_user_error_drops_the_row_and_records_why(tmp_path: Path) -> None:
    config = base_config(num_records=20, buffer_size=7)
    config["columns"] = config["columns"][:2] + [
        {"name": "checked", "type": "custom", "function": f"{__name__}:failing_column"},
        {"name": "after", "type": "expression", "template": "{{ checked }}!"},
    ]
    outcome = _run(config, tmp_path / "out")
    frame = load_dataset(tmp_path / "out")
    assert (frame["n"] != 0).all()
    assert outcome.info.rows_dropped == 20 - len(frame) > 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rows_dropped"] == outcome.info.rows_dropped
    reasons = {entry["reason"] for entry in manifest["dropped_rows"]}
    assert any("cannot handle zero" in reason for reason in reasons)
    _assert_no_leaks(outcome)


def test_dropped_column_is_not_written() -> None:
    config = base_config(num_records=4)
    config["columns"][3]["drop"] = True
    rows = _frame(_run(config, None))
    assert "title" not in rows.columns
    assert "text" in rows.columns


@pytest.mark.parametrize("records", [1, 7])
def test_small_runs(records: int) -> None:
    assert _run(base_config(num_records=records, buffer_size=3), None).info.rows_written == records


class RecordingProgress:
    def __init__(self) -> None:
        self.snapshots: list[Any] = []

    def on_start(self, snapshot: Any) -> None:
        self.snapshots.append(snapshot)

    def on_progress(self, snapshot: Any) -> None:
        self.snapshots.append(snapshot)

    def on_finish(self, snapshot: Any) -> None:
        self.snapshots.append(snapshot)


def test_progress_reports_rows_per_column_and_requests_per_model() -> None:
    listener = RecordingProgress()
    cfg = DatasetConfig.model_validate(base_config(num_records=12, buffer_size=5))
    outcome = asyncio.run(
        run_dataset(
            cfg, RunOptions(output_dir=None, progress=listener, progress_interval_seconds=0)
        )
    )
    first, last = listener.snapshots[0], listener.snapshots[-1]
    assert all(column.rows_done == 0 for column in first.columns)
    assert all(column.rows_done == 12 for column in last.columns)
    assert {"title", "text", "facts", "score", "vec"} <= {c.name for c in last.columns}
    assert sum(model.requests for model in last.models) == outcome.info.model_requests == 48
    for model in last.models:
        assert model.in_flight == 0 and model.waiters == 0
        assert 1 <= model.limit <= model.cap
        assert model.breaker == "closed"
    assert [s.records_done for s in listener.snapshots] == sorted(
        s.records_done for s in listener.snapshots
    )
