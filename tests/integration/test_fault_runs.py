"""Whole-engine runs with faults injected at every point: success, retryable failures (at the
provider and at the task), non-retryable failures (cell and batch), early shutdown, the circuit
breaker, cancellation (``RunCancellation`` and the API's ``cancel()``), a failed worker spawn and
a stalled row group. Faults come from the simulated provider (server errors, unparseable
structured answers, latency) and from custom columns. Every run ends with no task lease, no
request lease and no request waiter left, and a manifest (and Parquet files) that account for
every row of every row group it recorded."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from sluiceway.api import start_generation
from sluiceway.columns.base import GenerationContext
from sluiceway.config.models import DatasetConfig
from sluiceway.engine.cancellation import RunCancellation
from sluiceway.engine.progress import ProgressSnapshot
from sluiceway.engine.run import RunInfo, RunOptions, RunOutcome, run_dataset
from sluiceway.errors import (
    EarlyShutdownError,
    NonRetryableGenerationError,
    ProviderCircuitOpenError,
    RetryableGenerationError,
    RunCancelledError,
)
from sluiceway.providers.behaviour import SimulationSettings
from sluiceway.providers.simulated import SimulatedProvider

WHO = {"name": "who", "type": "sampler", "sampler": {"kind": "uuid"}}
TEXT = {"name": "text", "type": "llm_text", "model": "m", "prompt": "About {{ who }}"}
FACTS = {
    "name": "facts",
    "type": "llm_structured",
    "model": "m",
    "prompt": "Facts about {{ who }}",
    "output_schema": {
        "type": "object",
        "properties": {"fact": {"type": "string"}},
        "required": ["fact"],
    },
    "max_reasks": 0,
}


def _config(
    num_records: int,
    buffer_size: int,
    *,
    columns: Sequence[dict[str, Any]] = (WHO, TEXT),
    simulation: dict[str, Any] | None = None,
    **run: Any,
) -> DatasetConfig:
    retry = {"max_attempts": 3, "backoff_base_seconds": 0.0, "backoff_max_seconds": 0.0}
    retry.update(run.pop("retry", {}))
    return DatasetConfig.model_validate(
        {
            "providers": [{"name": "p", "type": "simulated", "simulation": simulation or {}}],
            "models": [{"alias": "m", "provider": "p", "model": "m-1", "max_parallel_requests": 4}],
            "columns": list(columns),
            "run": {
                "num_records": num_records,
                "seed": 3,
                "buffer_size": buffer_size,
                "retry": retry,
                **run,
            },
        }
    )


def _simulated(**settings: Any) -> SimulatedProvider:
    """The simulated provider with settings a config cannot set (unparseable answers)."""
    return SimulatedProvider("p", SimulationSettings(**settings), seed=3)


def _run(config: DatasetConfig, out: Path, **options: Any) -> RunOutcome:
    return asyncio.run(run_dataset(config, RunOptions(output_dir=out, overwrite=True, **options)))


def _assert_accounted(out: Path, config: DatasetConfig, status: str) -> dict[str, Any]:
    """The manifest has ``status`` and accounts for every row of every row group it records
    (written rows are in that group's Parquet file, dropped rows are listed with a reason); a
    completed run records every row group. No lease or waiter is left."""
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == status
    run = config.run
    groups = manifest["row_groups"]
    if status == "completed":
        expected = -(-run.num_records // run.buffer_size)
        assert [group["index"] for group in groups] == list(range(expected))
        assert manifest["rows_written"] + manifest["rows_dropped"] == run.num_records
    assert manifest["dropped_rows_omitted"] == 0
    dropped_at = [row["row_index"] for row in manifest["dropped_rows"]]
    assert len(dropped_at) == len(set(dropped_at)) == manifest["rows_dropped"]
    assert all(row["reason"] for row in manifest["dropped_rows"])
    for group in groups:
        first = group["index"] * run.buffer_size
        size = min(run.buffer_size, run.num_records - first)
        if group["status"] != "partial":
            assert group["rows_written"] + group["rows_dropped"] == size, group
        in_group = [index for index in dropped_at if first <= index < first + size]
        assert len(in_group) == group["rows_dropped"], group
        if group["file"] is None:
            assert group["rows_written"] == 0, group
        else:
            assert pq.read_metadata(out / group["file"]).num_rows == group["rows_written"]
    assert sum(group["rows_written"] for group in groups) == manifest["rows_written"]
    plan = json.loads((out / "capacity_plan.json").read_text())["runtime_snapshot"]
    tasks = plan["task_admission"]
    assert tasks["active_leases"] == 0
    assert tasks["acquired_total"] == tasks["released_total"]
    assert tasks["release_diagnostics"] == 0
    assert tasks["leased"] == dict.fromkeys(tasks["leased"], 0)
    requests = plan["request_admission"]
    assert requests["live_leases"] == 0 and requests["in_flight"] == 0
    assert requests["waiters"] == 0
    assert requests["granted_total"] == requests["released_total"]
    assert requests["release_diagnostics"] == 0
    return manifest


def _runtime(out: Path) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads((out / "capacity_plan.json").read_text())
    return plan["runtime_snapshot"]  # type: ignore[no-any-return]


def test_success_writes_every_row(tmp_path: Path) -> None:
    config = _config(10, 3)
    outcome = _run(config, tmp_path)
    manifest = _assert_accounted(tmp_path, config, "completed")
    assert manifest["rows_written"] == 10 == outcome.info.rows_written


def test_provider_failures_are_retried_and_every_row_is_written(tmp_path: Path) -> None:
    # Half of all attempts get a 503 from the simulated provider; each is a new admitted attempt.
    config = _config(12, 4, simulation={"failure_rate": 0.5}, retry={"max_attempts": 30})
    outcome = _run(config, tmp_path)
    manifest = _assert_accounted(tmp_path, config, "completed")
    assert manifest["rows_written"] == 12
    assert outcome.info.model_requests > outcome.info.model_calls_succeeded == 12
    (model,) = _runtime(tmp_path)["request_admission"]["by_provider_model"].values()
    assert model["outcomes"]["chat"]["provider_failure"] > 0


def test_a_task_that_fails_retryably_re_enters_through_the_tracker(tmp_path: Path) -> None:
    tried: set[int] = set()

    async def flaky(row: dict[str, Any], ctx: GenerationContext) -> str:
        (index,) = ctx.row_indices
        if index not in tried:
            tried.add(index)
            raise RetryableGenerationError(f"row {index}: the first attempt is refused")
        return f"ok {index}"

    custom = {"name": "flaky", "type": "custom", "function": flaky}
    config = _config(8, 4, columns=(WHO, custom))
    _run(config, tmp_path)
    manifest = _assert_accounted(tmp_path, config, "completed")
    assert manifest["rows_written"] == 8
    assert _runtime(tmp_path)["scheduler"]["tasks_retried"] == 8


def test_non_retryable_failures_drop_their_rows_with_the_reason(tmp_path: Path) -> None:
    # About half of the structured answers do not parse; no re-ask is allowed: those rows drop.
    config = _config(24, 4, columns=(WHO, FACTS), early_shutdown={"enabled": False})
    outcome = _run(config, tmp_path, extra_providers={"p": _simulated(invalid_json_rate=0.5)})
    manifest = _assert_accounted(tmp_path, config, "completed")
    assert 0 < manifest["rows_dropped"] < 24
    assert manifest["rows_dropped"] == outcome.info.rows_dropped
    assert all(row["column"] == "facts" for row in manifest["dropped_rows"])
    assert all("NonRetryableGenerationError" in row["reason"] for row in manifest["dropped_rows"])


def test_a_failing_batch_task_drops_the_live_rows_of_its_row_group(tmp_path: Path) -> None:
    async def summarize(rows: list[dict[str, Any]], ctx: GenerationContext) -> list[str]:
        if ctx.row_group == 1:
            raise NonRetryableGenerationError("the summary service refuses row group 1")
        return [f"summary of {row['who']}" for row in rows]

    custom = {"name": "summary", "type": "custom", "function": summarize, "strategy": "batch"}
    config = _config(10, 4, columns=(WHO, custom))
    _run(config, tmp_path)
    manifest = _assert_accounted(tmp_path, config, "completed")
    assert [row["row_index"] for row in manifest["dropped_rows"]] == [4, 5, 6, 7]
    assert all("refuses row group 1" in row["reason"] for row in manifest["dropped_rows"])
    assert manifest["rows_written"] == 6


def test_early_shutdown_salvages_row_groups_in_flight_and_reports(tmp_path: Path) -> None:
    config = _config(
        40,
        4,
        columns=(WHO, FACTS),
        max_concurrent_row_groups=2,
        early_shutdown={"window": 8, "min_outcomes": 4, "max_error_rate": 0.5},
    )
    with pytest.raises(EarlyShutdownError, match="stopped early") as caught:
        _run(config, tmp_path, extra_providers={"p": _simulated(invalid_json_rate=1.0)})
    manifest = _assert_accounted(tmp_path, config, "failed")
    assert 1 <= len(manifest["row_groups"]) < 10
    assert isinstance(caught.value.partial, RunInfo)
    assert _runtime(tmp_path)["scheduler"]["stop_reason"] == "early_shutdown"


def test_an_open_circuit_ends_the_run_with_an_error_naming_the_provider(tmp_path: Path) -> None:
    # Every attempt fails with a 503: with no success for 50 ms the circuit opens; the retry
    # budget alone would let the run spin for a long time.
    config = _config(
        8,
        4,
        simulation={"failure_rate": 1.0},
        circuit_breaker_seconds=0.05,
        retry={
            "max_attempts": 100_000,
            "backoff_base_seconds": 0.001,
            "backoff_max_seconds": 0.001,
        },
    )
    with pytest.raises(ProviderCircuitOpenError, match="'p' model 'm-1' is unavailable"):
        _run(config, tmp_path)
    _assert_accounted(tmp_path, config, "failed")


class Listener:
    """A progress listener that reacts to checkpoints (``on_progress``) and nothing else."""

    def on_start(self, snapshot: ProgressSnapshot) -> None:
        pass

    def on_progress(self, snapshot: ProgressSnapshot) -> None:
        pass

    def on_finish(self, snapshot: ProgressSnapshot) -> None:
        pass


class CancelAfterFirstCheckpoint(Listener):
    def __init__(self, cancellation: RunCancellation) -> None:
        self._cancellation = cancellation

    def on_progress(self, snapshot: ProgressSnapshot) -> None:
        if snapshot.row_groups_done >= 1:
            self._cancellation.cancel()


def test_cancel_keeps_written_row_groups_and_releases_every_lease(tmp_path: Path) -> None:
    # 50 ms per request, 4 at a time: when the first row group is written, the second one's
    # requests are still waiting or in flight; cancelling releases every one of them.
    config = _config(30, 3, simulation={"latency_seconds": 0.05}, max_concurrent_row_groups=2)
    cancellation = RunCancellation()
    with pytest.raises(RunCancelledError) as caught:
        _run(
            config,
            tmp_path,
            cancellation=cancellation,
            progress=CancelAfterFirstCheckpoint(cancellation),
            progress_interval_seconds=0.0,
        )
    manifest = _assert_accounted(tmp_path, config, "cancelled")
    assert 1 <= len(manifest["row_groups"]) < 10
    partial = caught.value.partial
    assert isinstance(partial, RunInfo) and partial.rows_written == manifest["rows_written"]
    assert _runtime(tmp_path)["scheduler"]["tasks_cancelled"] >= 1


def test_the_api_cancel_stops_a_background_generation_in_order(tmp_path: Path) -> None:
    config = _config(60, 3, simulation={"latency_seconds": 0.02})
    first_written = threading.Event()

    class Watcher(Listener):
        def on_progress(self, snapshot: ProgressSnapshot) -> None:
            if snapshot.row_groups_done >= 1:
                first_written.set()

    out = tmp_path / "out"
    handle = start_generation(config, output=out, overwrite=True, progress=Watcher())
    assert first_written.wait(timeout=60), "no row group was written"
    handle.cancel()
    with pytest.raises(RunCancelledError) as caught:
        handle.result(timeout=60)
    assert handle.done()
    manifest = _assert_accounted(out, config, "cancelled")
    assert manifest["rows_written"] >= 3
    assert isinstance(caught.value.partial, RunInfo)


def test_a_failed_worker_spawn_fails_the_run_and_releases_every_lease(tmp_path: Path) -> None:
    config = _config(12, 3)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        spawned = 0

        def factory(
            loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
        ) -> asyncio.Task[Any]:
            nonlocal spawned
            if getattr(coro, "__name__", "") == "_work":  # a task worker of the scheduler
                spawned += 1
                if spawned == 2:
                    coro.close()
                    raise RuntimeError("the loop refuses another task")
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(factory)  # type: ignore[arg-type]
        try:
            await run_dataset(config, RunOptions(output_dir=tmp_path, overwrite=True))
        finally:
            loop.set_task_factory(None)

    with pytest.raises(RuntimeError, match="refuses another task"):
        asyncio.run(main())
    _assert_accounted(tmp_path, config, "failed")


def test_a_stalled_row_group_does_not_stop_others_from_being_written(tmp_path: Path) -> None:
    """No global drain barrier: row 0 waits until three later row groups are on disk."""
    on_disk = asyncio.Event()
    seen_on_disk: list[int] = []

    async def gate(row: dict[str, Any], ctx: GenerationContext) -> str:
        if tuple(ctx.row_indices) == (0,):
            await on_disk.wait()
        return "ok"

    class Watcher(Listener):
        def on_progress(self, snapshot: ProgressSnapshot) -> None:
            if snapshot.row_groups_done >= 3 and not on_disk.is_set():
                written = json.loads((tmp_path / "manifest.json").read_text())["row_groups"]
                seen_on_disk.extend(group["index"] for group in written)
                on_disk.set()

    custom = {"name": "gate", "type": "custom", "function": gate}
    config = _config(8, 2, columns=(WHO, custom), max_concurrent_row_groups=2)
    _run(config, tmp_path, progress=Watcher(), progress_interval_seconds=0.0)
    _assert_accounted(tmp_path, config, "completed")
    assert seen_on_disk == [1, 2, 3]  # written (file and manifest) while row group 0 waited
