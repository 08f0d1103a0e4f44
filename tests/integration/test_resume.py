"""Resume in process: a stopped run continues with only what is missing, journaled model results
are reused (no completed request is sent twice, counted by content hash at the provider), the
dataset equals an uninterrupted run, and bad input is refused without touching what is written."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from integration_configs import base_config

from sluiceway import generate_async
from sluiceway.config.models import DatasetConfig
from sluiceway.context import current_task
from sluiceway.engine.cancellation import RunCancellation
from sluiceway.engine.run import RunOptions, RunOutcome, run_dataset
from sluiceway.errors import RunCancelledError, RunStoppedError, StorageError
from sluiceway.observability import EventBus
from sluiceway.observability.events import Event
from sluiceway.observability.kinds import EventKind
from sluiceway.providers.base import ModelRequest, ModelResponse
from sluiceway.providers.behaviour import SimulationSettings
from sluiceway.providers.simulated import SimulatedProvider
from sluiceway.storage.dataset import load_dataset, read_manifest
from sluiceway.storage.journal import JOURNAL_FILE_NAME, read_journal_keys
from sluiceway.storage.manifest import RowGroupStatus, RunStatus

SEED = 11


class CountingProvider:
    """The simulated provider, counting completed requests by content hash and cell; sets
    ``reached`` once ``stop_after`` requests have completed."""

    def __init__(self, stop_after: int | None = None, latency_seconds: float = 0.0) -> None:
        settings = SimulationSettings(latency_seconds=latency_seconds)
        self.inner = SimulatedProvider("sim", settings, seed=SEED)
        self.name = "sim"
        self.completed: Counter[str] = Counter()
        self.cell_of: dict[str, tuple[str, int, int]] = {}
        self.stop_after = stop_after
        self.reached = asyncio.Event()

    async def send(self, request: ModelRequest) -> ModelResponse:
        response = await self.inner.send(request)
        key = self.inner.behaviour.request_key(request).hex()
        self.completed[key] += 1
        task = current_task.get()
        if task is not None and task.row_index is not None:
            self.cell_of[key] = (task.column, task.row_group, task.row_index)
        if self.stop_after is not None and sum(self.completed.values()) >= self.stop_after:
            self.reached.set()
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _config(num_records: int = 30, buffer_size: int = 5, **run: Any) -> DatasetConfig:
    return DatasetConfig.model_validate(
        base_config(num_records=num_records, buffer_size=buffer_size, **run)
    )


async def _run(
    config: DatasetConfig, out: Path, provider: CountingProvider, **options: Any
) -> RunOutcome:
    return await run_dataset(
        config, RunOptions(output_dir=out, extra_providers={"sim": provider}, **options)
    )


async def _run_until(config: DatasetConfig, out: Path, provider: CountingProvider) -> None:
    """Runs until the provider has completed ``stop_after`` requests, then cancels the run."""
    task = asyncio.create_task(_run(config, out, provider))
    reached = asyncio.create_task(provider.reached.wait())
    await asyncio.wait({task, reached}, return_when=asyncio.FIRST_COMPLETED)
    reached.cancel()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, RunStoppedError):
        pass  # the stop this helper asked for
    else:
        pytest.fail("the run finished before it could be stopped")


def _frame(out: Path) -> pd.DataFrame:
    return load_dataset(out)


def _snapshot(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.is_file()}


@pytest.fixture
def baseline(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("baseline") / "data"
    asyncio.run(run_dataset(_config(), RunOptions(output_dir=out)))
    return _frame(out)


@pytest.mark.parametrize("stop_after", [7, 40, 95])
async def test_a_cancelled_run_resumes_without_repeating_completed_requests(
    tmp_path: Path, baseline: pd.DataFrame, stop_after: int
) -> None:
    out = tmp_path / "data"
    # Latency keeps requests in flight, so the cancel lands inside unfinished row groups.
    first = CountingProvider(stop_after=stop_after, latency_seconds=0.002)
    await _run_until(_config(), out, first)
    manifest = read_manifest(out)
    assert manifest.status is RunStatus.CANCELLED
    journaled = read_journal_keys(out / JOURNAL_FILE_NAME)
    done_groups = {
        group.index for group in manifest.row_groups if group.status is RowGroupStatus.WRITTEN
    }
    pending = {key for key in journaled if key[0] not in done_groups}
    assert pending, "the cancel left no journaled cell of an unfinished row group"

    second = CountingProvider()
    outcome = await _run(_config(), out, second, resume=True)

    pd.testing.assert_frame_equal(_frame(out), baseline)
    assert outcome.info.row_groups_resumed == len(done_groups)
    repeated = set(first.completed) & set(second.completed)
    for key in repeated:
        column, row_group, row_index = first.cell_of[key]
        # A request may only be repeated if its cell was still unfinished when the run stopped.
        assert row_group not in done_groups, (key, column, row_group)
        assert (row_group, column, row_group * 5 + row_index) not in journaled, key
    assert outcome.info.cells_replayed == len(pending)
    # Four model columns per row and no failures: one request per cell that was neither in a
    # written row group nor journaled, and none for the others.
    assert sum(second.completed.values()) == 4 * (30 - 5 * len(done_groups)) - len(pending)
    assert not (out / JOURNAL_FILE_NAME).exists()  # a completed run needs no journal


async def test_resuming_a_complete_run_sends_nothing(
    tmp_path: Path, baseline: pd.DataFrame
) -> None:
    out = tmp_path / "data"
    await _run(_config(), out, CountingProvider())
    provider = CountingProvider()
    outcome = await _run(_config(), out, provider, resume=True)
    assert sum(provider.completed.values()) == 0
    assert outcome.info.rows_written == 30
    assert outcome.info.already_complete
    assert read_manifest(out).status is RunStatus.COMPLETED
    pd.testing.assert_frame_equal(_frame(out), baseline)


async def test_resume_without_a_dataset_starts_a_new_run(
    tmp_path: Path, baseline: pd.DataFrame
) -> None:
    out = tmp_path / "data"
    await _run(_config(), out, CountingProvider(), resume=True)
    pd.testing.assert_frame_equal(_frame(out), baseline)


async def test_a_deleted_part_file_is_generated_again(
    tmp_path: Path, baseline: pd.DataFrame
) -> None:
    out = tmp_path / "data"
    await _run(_config(), out, CountingProvider())
    (out / "part-000002.parquet").unlink()
    provider = CountingProvider()
    outcome = await _run(_config(), out, provider, resume=True)
    assert outcome.info.row_groups_resumed == 5
    assert sum(provider.completed.values()) > 0
    pd.testing.assert_frame_equal(_frame(out), baseline)


async def test_resume_keeps_the_row_groups_of_the_stopped_run_when_buffer_size_changes(
    tmp_path: Path, baseline: pd.DataFrame
) -> None:
    out = tmp_path / "data"
    await _run_until(_config(), out, CountingProvider(stop_after=60))
    await _run(_config(buffer_size=7), out, CountingProvider(), resume=True)
    assert read_manifest(out).buffer_size == 5
    pd.testing.assert_frame_equal(_frame(out), baseline)


async def test_a_changed_config_is_refused_with_what_changed(tmp_path: Path) -> None:
    out = tmp_path / "data"
    await _run_until(_config(), out, CountingProvider(stop_after=40))
    before = _snapshot(out)
    raw = base_config(num_records=30, buffer_size=5)
    raw["columns"][4]["prompt"] = "Rewrite {{ title }}"
    changed = DatasetConfig.model_validate(raw)
    with pytest.raises(StorageError) as caught:
        await _run(changed, out, CountingProvider(), resume=True)
    message = str(caught.value)
    assert "columns[text].prompt" in message
    assert "Write {{ title }}" in message and "Rewrite {{ title }}" in message
    assert _snapshot(out) == before


async def test_resume_and_overwrite_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="exclude each other"):
        await _run(_config(), tmp_path / "data", CountingProvider(), resume=True, overwrite=True)


async def test_a_truncated_part_file_is_reported_and_nothing_is_overwritten(
    tmp_path: Path,
) -> None:
    out = tmp_path / "data"
    await _run(_config(), out, CountingProvider())
    part = out / "part-000001.parquet"
    part.write_bytes(part.read_bytes()[:-40])
    before = _snapshot(out)
    with pytest.raises(StorageError, match="truncated or damaged") as caught:
        await _run(_config(), out, CountingProvider(), resume=True)
    assert str(part) in str(caught.value)
    assert "--resume" in str(caught.value)
    assert _snapshot(out) == before


async def test_a_journal_of_another_run_is_refused(tmp_path: Path) -> None:
    out, other = tmp_path / "data", tmp_path / "other"
    await _run_until(_config(), out, CountingProvider(stop_after=20))
    await _run_until(_config(), other, CountingProvider(stop_after=20))
    shutil.copyfile(other / JOURNAL_FILE_NAME, out / JOURNAL_FILE_NAME)
    before = _snapshot(out)
    with pytest.raises(StorageError, match="belongs to another run"):
        await _run(_config(), out, CountingProvider(), resume=True)
    assert _snapshot(out) == before


async def test_resuming_into_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.write_text("keep me")
    with pytest.raises(StorageError, match="is a file"):
        await _run(_config(), target, CountingProvider(), resume=True)
    assert target.read_text() == "keep me"


async def test_without_the_journal_resume_still_fills_only_missing_row_groups(
    tmp_path: Path, baseline: pd.DataFrame
) -> None:
    out = tmp_path / "data"
    await _run_until(_config(), out, CountingProvider(stop_after=80))
    assert (out / JOURNAL_FILE_NAME).exists()
    done = len(read_manifest(out).row_groups)
    outcome = await _run(_config(), out, CountingProvider(), resume=True, journal=False)
    assert outcome.info.cells_replayed == 0
    assert outcome.info.row_groups_resumed == done
    pd.testing.assert_frame_equal(_frame(out), baseline)


async def test_a_manifest_of_another_config_is_refused_and_nothing_is_overwritten(
    tmp_path: Path,
) -> None:
    out, other = tmp_path / "data", tmp_path / "other"
    await _run_until(_config(), out, CountingProvider(stop_after=40))
    raw = base_config(num_records=30, buffer_size=5)
    raw["columns"][4]["prompt"] = "Rewrite {{ title }}"
    await _run_until(DatasetConfig.model_validate(raw), other, CountingProvider(stop_after=40))
    shutil.copyfile(other / "manifest.json", out / "manifest.json")
    before = _snapshot(out)
    with pytest.raises(StorageError, match="cannot resume") as caught:
        await _run(_config(), out, CountingProvider(), resume=True)
    message = " ".join(str(caught.value).split())
    assert str(out / "manifest.json") in message
    # The saved config is this one, so it cannot explain the manifest: the message says so
    # instead of showing an empty diff.
    assert "written by a run of another config or copied from another dataset" in message
    assert _snapshot(out) == before


async def test_a_changed_config_is_reported_before_a_damaged_part_file(tmp_path: Path) -> None:
    out = tmp_path / "data"
    await _run_until(_config(), out, CountingProvider(stop_after=60))
    part = out / "part-000000.parquet"
    part.write_bytes(part.read_bytes()[:-40])
    before = _snapshot(out)
    changed = _config(num_records=31)
    with pytest.raises(StorageError, match="What changed") as caught:
        await _run(changed, out, CountingProvider(), resume=True)
    assert "run.num_records: 30 -> 31" in str(caught.value)
    assert _snapshot(out) == before


class _CancelAfterCheckpoints:
    """An event sink that cancels the run once ``count`` row groups are checkpointed."""

    def __init__(self, cancellation: RunCancellation, count: int) -> None:
        self.kinds = frozenset({EventKind.ROW_GROUP_CHECKPOINTED})
        self.cancellation = cancellation
        self.count = count
        self.seen = 0

    def handle(self, event: Event) -> None:
        self.seen += 1
        if self.seen == self.count:
            self.cancellation.cancel()

    def close(self) -> None:
        pass


async def test_the_public_api_resumes_a_cancelled_run(
    tmp_path: Path, baseline: pd.DataFrame
) -> None:
    # ``generate_async(resume=True)`` is the API form of ``sluiceway run --resume``.
    out = tmp_path / "data"
    # Simulated latency keeps cells in flight when the cancel lands (it is not in the
    # fingerprint: the data is the same).
    slow = _config().model_dump(mode="json")
    slow["providers"][0]["simulation"]["latency_seconds"] = 0.005
    cancellation = RunCancellation()
    bus = EventBus()
    bus.add_sink(_CancelAfterCheckpoints(cancellation, count=1))
    with pytest.raises(RunCancelledError):
        await generate_async(
            DatasetConfig.model_validate(slow), output=out, cancellation=cancellation, events=bus
        )
    manifest = read_manifest(out)
    assert manifest.status is RunStatus.CANCELLED
    done = {group.index for group in manifest.row_groups if group.status is RowGroupStatus.WRITTEN}
    assert 1 <= len(done) < 6
    journaled = read_journal_keys(out / JOURNAL_FILE_NAME)
    pending = {key for key in journaled if key[0] not in done}
    assert pending, "the cancel left no journaled cell of an unfinished row group"

    result = await generate_async(_config(), output=out, resume=True)

    pd.testing.assert_frame_equal(result.dataframe, baseline)
    assert result.info.row_groups_resumed == len(done)
    assert result.info.cells_replayed == len(pending)
    # Four model columns per row and no failures: every cell that was neither in a written
    # row group nor journaled is requested once, and nothing else is.
    assert result.info.model_requests == 4 * (30 - 5 * len(done)) - len(pending)
