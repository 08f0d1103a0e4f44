"""Whole-engine runs with injected faults: each ends with no live lease or waiter and a manifest
that accounts for every row of every row group it recorded."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sluiceway.config.models import DatasetConfig
from sluiceway.engine.cancellation import RunCancellation
from sluiceway.engine.progress import ProgressSnapshot
from sluiceway.engine.run import RunInfo, RunOptions, RunOutcome, run_dataset
from sluiceway.errors import (
    BadRequestError,
    EarlyShutdownError,
    ProviderCircuitOpenError,
    ProviderUnavailableError,
    RateLimitedError,
    RunCancelledError,
)
from sluiceway.providers.base import ModelRequest, ModelResponse


def _config(num_records: int, buffer_size: int, **run: Any) -> DatasetConfig:
    return DatasetConfig.model_validate(
        {
            "providers": [{"name": "p", "type": "simulated"}],
            "models": [{"alias": "m", "provider": "p", "model": "m-1", "max_parallel_requests": 4}],
            "columns": [
                {"name": "who", "type": "sampler", "sampler": {"kind": "uuid"}},
                {"name": "text", "type": "llm_text", "model": "m", "prompt": "About {{ who }}"},
            ],
            "run": {
                "num_records": num_records,
                "seed": 3,
                "buffer_size": buffer_size,
                "retry": {"max_attempts": 3, "backoff_base_seconds": 0.0},
                **run,
            },
        }
    )


def _content(request: ModelRequest) -> str:
    return request.messages[-1].content


class FaultyProvider:
    """A provider client whose answer depends on the request: ``decide`` returns a reply or an
    exception; requests matching ``hang`` wait until cancelled."""

    name = "p"

    def __init__(self, decide: Any, *, hang_after: int | None = None) -> None:
        self._decide = decide
        self._hang_after = hang_after
        self.sent = 0
        self.never = asyncio.Event()

    async def send(self, request: ModelRequest) -> ModelResponse:
        self.sent += 1
        if self._hang_after is not None and self.sent > self._hang_after:
            await self.never.wait()
        result = self._decide(request)
        if isinstance(result, BaseException):
            raise result
        return ModelResponse(text=str(result))

    async def aclose(self) -> None:
        pass


def _run(config: DatasetConfig, out: Path, provider: FaultyProvider, **options: Any) -> RunOutcome:
    return asyncio.run(
        run_dataset(
            config,
            RunOptions(output_dir=out, overwrite=True, extra_providers={"p": provider}, **options),
        )
    )


def _assert_accounted(out: Path, config: DatasetConfig, status: str) -> dict[str, Any]:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == status
    run = config.run
    for group in manifest["row_groups"]:
        size = min(run.buffer_size, run.num_records - group["index"] * run.buffer_size)
        assert group["rows_written"] + group["rows_dropped"] == size, group
    assert manifest["rows_dropped"] == len(manifest["dropped_rows"])
    plan = json.loads((out / "capacity_plan.json").read_text())["runtime_snapshot"]
    tasks = plan["task_admission"]
    assert tasks["active_leases"] == 0
    assert tasks["acquired_total"] == tasks["released_total"]
    assert tasks["release_diagnostics"] == 0
    requests = plan["request_admission"]
    assert requests["live_leases"] == 0 and requests["waiters"] == 0
    assert requests["granted_total"] == requests["released_total"]
    return manifest


def test_success_writes_every_row(tmp_path: Path) -> None:
    config = _config(10, 3)
    _run(config, tmp_path, FaultyProvider(lambda request: "ok"))
    manifest = _assert_accounted(tmp_path, config, "completed")
    assert manifest["rows_written"] == 10


def test_retryable_failures_are_retried_and_every_row_is_written(tmp_path: Path) -> None:
    seen: Counter[str] = Counter()

    def flaky(request: ModelRequest) -> object:
        seen[_content(request)] += 1
        if seen[_content(request)] == 1:
            return ProviderUnavailableError("503 from the test provider")
        return "ok"

    config = _config(8, 4)
    _run(config, tmp_path, FaultyProvider(flaky))
    manifest = _assert_accounted(tmp_path, config, "completed")
    assert manifest["rows_written"] == 8
    assert set(seen.values()) == {2}


def test_non_retryable_failures_drop_their_rows_with_the_reason(tmp_path: Path) -> None:
    def picky(request: ModelRequest) -> object:
        if zlib.crc32(_content(request).encode()) % 3 == 0:
            return BadRequestError("the test provider refuses this prompt")
        return "ok"

    config = _config(12, 4, early_shutdown={"enabled": False})
    outcome = _run(config, tmp_path, FaultyProvider(picky))
    manifest = _assert_accounted(tmp_path, config, "completed")
    assert manifest["rows_written"] + manifest["rows_dropped"] == 12
    assert manifest["rows_dropped"] == outcome.info.rows_dropped
    assert all(
        row["column"] == "text" and "refuses this prompt" in row["reason"]
        for row in manifest["dropped_rows"]
    )


def test_early_shutdown_salvages_row_groups_in_flight_and_reports(tmp_path: Path) -> None:
    config = _config(
        40,
        4,
        max_concurrent_row_groups=2,
        early_shutdown={"window": 8, "min_outcomes": 4, "max_error_rate": 0.5},
    )
    provider = FaultyProvider(lambda request: BadRequestError("always refused"))
    with pytest.raises(EarlyShutdownError, match="stopped early") as caught:
        _run(config, tmp_path, provider)
    manifest = _assert_accounted(tmp_path, config, "failed")
    assert 1 <= len(manifest["row_groups"]) < 10
    assert isinstance(caught.value.partial, RunInfo)


def test_an_open_circuit_ends_the_run_with_an_error_naming_the_provider(tmp_path: Path) -> None:
    config = _config(
        8,
        4,
        circuit_breaker_seconds=0.005,
        retry={
            "max_attempts": 100_000,
            "backoff_base_seconds": 0.001,
            "backoff_max_seconds": 0.001,
        },
    )
    provider = FaultyProvider(lambda request: RateLimitedError("slow down", retry_after_seconds=0))
    with pytest.raises(ProviderCircuitOpenError, match="'p' model 'm-1' is unavailable"):
        _run(config, tmp_path, provider)
    _assert_accounted(tmp_path, config, "failed")


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


def test_cancel_keeps_written_row_groups_and_releases_every_lease(tmp_path: Path) -> None:
    config = _config(12, 3, max_concurrent_row_groups=1)
    cancellation = RunCancellation()
    # The first row group's three requests succeed; every later request hangs until cancelled.
    provider = FaultyProvider(lambda request: "ok", hang_after=3)
    with pytest.raises(RunCancelledError) as caught:
        _run(
            config,
            tmp_path,
            provider,
            cancellation=cancellation,
            progress=CancelAfterFirstCheckpoint(cancellation),
            progress_interval_seconds=0.0,
        )
    manifest = _assert_accounted(tmp_path, config, "cancelled")
    assert [group["index"] for group in manifest["row_groups"]] == [0]
    assert manifest["rows_written"] == 3
    partial = caught.value.partial
    assert isinstance(partial, RunInfo) and partial.rows_written == 3
