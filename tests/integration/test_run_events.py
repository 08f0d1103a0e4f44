"""Whole-engine runs with observability on: the events file and report land in the run
directory (also for stopped runs), `sluiceway report` rebuilds the report, and no prompt, row
value, completion or error message reaches an event, a log line or the report."""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from sluiceway.cli.app import app
from sluiceway.config.models import DatasetConfig
from sluiceway.engine.cancellation import RunCancellation
from sluiceway.engine.progress import ProgressSnapshot
from sluiceway.engine.run import RunOptions, RunOutcome, run_dataset
from sluiceway.errors import BadRequestError, RunCancelledError
from sluiceway.observability import (
    EVENTS_FILE_NAME,
    EventBus,
    EventKind,
    EventStream,
    MemoryEventSink,
    TaskEvent,
    read_events,
)
from sluiceway.providers.base import ModelRequest, ModelResponse

CANARY = "CANARY-7f3a9c-do-not-leak"
runner = CliRunner()


def _config(num_records: int = 12, buffer_size: int = 4, **run: Any) -> dict[str, Any]:
    return {
        "providers": [{"name": "p", "type": "simulated"}],
        "models": [{"alias": "m", "provider": "p", "model": "m-1", "max_parallel_requests": 4}],
        "columns": [
            {
                "name": "topic",
                "type": "sampler",
                "sampler": {"kind": "category", "values": [f"{CANARY}-a", f"{CANARY}-b"]},
            },
            {"name": "who", "type": "sampler", "sampler": {"kind": "uuid"}},
            {
                "name": "text",
                "type": "llm_text",
                "model": "m",
                "prompt": f"{CANARY} about {{{{ topic }}}} and {{{{ who }}}}",
            },
        ],
        "run": {
            "num_records": num_records,
            "seed": 5,
            "buffer_size": buffer_size,
            "retry": {"max_attempts": 2, "backoff_base_seconds": 0.0},
            "early_shutdown": {"enabled": False},
            **run,
        },
    }


class CanaryProvider:
    """Answers with the canary; refuses some prompts with the canary in the error message;
    after ``hang_after`` requests, waits until cancelled."""

    name = "p"

    def __init__(self, *, hang_after: int | None = None) -> None:
        self._hang_after = hang_after
        self.sent = 0

    async def send(self, request: ModelRequest) -> ModelResponse:
        self.sent += 1
        if self._hang_after is not None and self.sent > self._hang_after:
            await asyncio.Event().wait()
        content = request.messages[-1].content
        if zlib.crc32(content.encode()) % 4 == 0:
            raise BadRequestError(f"refused: {CANARY}")
        return ModelResponse(text=f"{CANARY} says hello")

    async def aclose(self) -> None:
        pass


def _run(out: Path, provider: CanaryProvider, **options: Any) -> RunOutcome:
    config = DatasetConfig.model_validate(options.pop("config", None) or _config())
    return asyncio.run(
        run_dataset(
            config,
            RunOptions(
                output_dir=out,
                overwrite=True,
                extra_providers={"p": provider},
                events_file=out / EVENTS_FILE_NAME,
                report=True,
                **options,
            ),
        )
    )


def _assert_no_canary(out: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in (EVENTS_FILE_NAME, "report.md", "capacity_plan.json"):
        assert CANARY not in (out / name).read_text(), name
    assert all(CANARY not in record.getMessage() for record in caplog.records)


def test_a_run_writes_events_and_a_report_without_leaking_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    memory = MemoryEventSink()
    outcome = _run(tmp_path, CanaryProvider(), events=EventBus([memory]))
    assert outcome.info.rows_dropped > 0  # some rows were refused
    assert (tmp_path / "report.md").is_file()
    assert sorted(path.name for path in tmp_path.glob("report*.png"))
    _assert_no_canary(tmp_path, caplog)
    # The file holds what the caller's sink saw, in stream order.
    from_file = list(read_events(tmp_path / EVENTS_FILE_NAME))
    assert [(e.kind, e.sequence) for e in from_file] == [
        (e.kind, e.sequence) for e in memory.events
    ]
    for stream in EventStream:
        sequences = [e.sequence for e in from_file if e.stream is stream]
        assert sequences == list(range(len(sequences)))
    kinds = {e.kind for e in from_file}
    assert {
        EventKind.SCHEDULER_JOB_STARTED,
        EventKind.WORKER_SPAWNED,
        EventKind.NON_RETRYABLE_DROPPED,
        EventKind.ROW_GROUP_CHECKPOINTED,
        EventKind.SCHEDULER_JOB_COMPLETED,
    } <= kinds
    acquired: set[tuple[str, int]] = set()
    for event in from_file:
        if isinstance(event, TaskEvent):
            if event.kind is EventKind.TASK_LEASE_ACQUIRED:
                acquired.add((event.task_id, event.attempt))
            elif event.kind is EventKind.WORKER_SPAWNED:
                assert (event.task_id, event.attempt) in acquired


class CancelAfterFirstCheckpoint:
    def __init__(self, cancellation: RunCancellation) -> None:
        self._cancellation = cancellation

    def on_start(self, snapshot: ProgressSnapshot) -> None:
        pass

    def on_progress(self, snapshot: ProgressSnapshot) -> None:
        if snapshot.row_groups_done >= 1:
            self._cancellation.cancel()

    def on_finish(self, snapshot: ProgressSnapshot) -> None:
        pass


def test_a_cancelled_run_still_writes_its_events_and_report(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cancellation = RunCancellation()
    with pytest.raises(RunCancelledError):
        _run(
            tmp_path,
            CanaryProvider(hang_after=4),
            config=_config(max_concurrent_row_groups=1),
            cancellation=cancellation,
            progress=CancelAfterFirstCheckpoint(cancellation),
            progress_interval_seconds=0.0,
        )
    events = list(read_events(tmp_path / EVENTS_FILE_NAME))
    assert EventKind.CANCELLED in {e.kind for e in events}
    assert events[-1].kind is EventKind.SCHEDULER_JOB_COMPLETED
    assert "cancelled" in (tmp_path / "report.md").read_text()
    _assert_no_canary(tmp_path, caplog)


def test_an_unwritable_events_file_never_fails_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "events-dir"
    blocked.mkdir()  # a directory where the file should be: writing it fails
    out = tmp_path / "out"
    config = DatasetConfig.model_validate(_config())
    outcome = asyncio.run(
        run_dataset(
            config,
            RunOptions(
                output_dir=out,
                extra_providers={"p": CanaryProvider()},
                events_file=blocked,
                report=True,
            ),
        )
    )
    assert outcome.info.rows_written + outcome.info.rows_dropped == 12
    assert not (out / "report.md").exists()
    assert any(record.levelno >= logging.ERROR for record in caplog.records)


def _write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _sim_config(num_records: int) -> dict[str, Any]:
    config = _config(num_records)
    config["providers"] = [{"name": "p", "type": "simulated"}]
    return config


def test_cli_run_writes_events_and_report_and_report_rebuilds_it(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    result = runner.invoke(app, ["run", str(_write(tmp_path, _sim_config(9))), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / EVENTS_FILE_NAME).is_file() and (out / "report.md").is_file()
    first = (out / "report.md").read_text()
    assert CANARY not in first and CANARY not in (out / EVENTS_FILE_NAME).read_text()
    (out / "report.md").unlink()
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.md").read_text() == first


def test_cli_run_flags_move_or_turn_off_events_and_report(tmp_path: Path) -> None:
    config = str(_write(tmp_path, _sim_config(6)))
    quiet = tmp_path / "quiet"
    result = runner.invoke(app, ["run", config, "-o", str(quiet), "-q", "--no-events"])
    assert result.exit_code == 0, result.output
    assert not (quiet / EVENTS_FILE_NAME).exists() and not (quiet / "report.md").exists()

    elsewhere = tmp_path / "logs" / "run-events.jsonl"
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["run", config, "-o", str(out), "-q", "--events", str(elsewhere), "--no-report"]
    )
    assert result.exit_code == 0, result.output
    assert elsewhere.is_file() and not (out / EVENTS_FILE_NAME).exists()
    assert not (out / "report.md").exists()
    header = json.loads(elsewhere.read_text().splitlines()[0])
    assert header["format"] == "sluiceway-events"

    result = runner.invoke(app, ["run", config, "-o", str(out), "--events", "x", "--no-events"])
    assert result.exit_code == 2
