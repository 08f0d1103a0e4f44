"""Resume and permanent drops: a row dropped because the provider rejected its request as invalid
is journaled as a drop, and a resumed run drops it again, with the same reason, without sending
the request again. Drops for account reasons (credentials) are not journaled and are retried."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from integration_configs import base_config

from sluiceway.config.models import DatasetConfig
from sluiceway.context import current_task
from sluiceway.engine.resume import is_permanent_drop
from sluiceway.engine.run import RunOptions, RunOutcome, run_dataset
from sluiceway.errors import (
    AuthenticationError,
    BadRequestError,
    NonRetryableGenerationError,
    ProviderUnavailableError,
    RunStoppedError,
)
from sluiceway.providers.base import ModelRequest, ModelResponse
from sluiceway.providers.behaviour import SimulationSettings
from sluiceway.providers.simulated import SimulatedProvider
from sluiceway.storage.dataset import load_dataset, read_manifest
from sluiceway.storage.journal import JOURNAL_FILE_NAME, read_journal_keys
from sluiceway.storage.manifest import RunStatus

SEED = 11
NUM_RECORDS = 30
BUFFER_SIZE = 5


class RejectingProvider:
    """The simulated provider, rejecting about one request in thirteen as invalid (decided by the
    request's content, so the same request is always rejected). Counts every request it is
    sent by content hash, and the cell that sent it.

    With ``stop_after`` and ``journal``: once that many requests were sent, the first request
    from a row group that has a drop in the journal sets ``reached`` and, like every request
    after it, never gets an answer. So that row group cannot complete (completing it would
    move its drop from the journal to the manifest) and the stop finds the drop journaled."""

    def __init__(self, stop_after: int | None = None, journal: Path | None = None) -> None:
        self.inner = SimulatedProvider("sim", SimulationSettings(latency_seconds=0.01), seed=SEED)
        self.name = "sim"
        self.sent: Counter[str] = Counter()
        self.rejected: set[str] = set()
        self.cell_of: dict[str, tuple[str, int, int]] = {}
        self.stop_after = stop_after
        self.journal = journal
        self.reached = asyncio.Event()

    async def send(self, request: ModelRequest) -> ModelResponse:
        key = self.inner.behaviour.request_key(request).hex()
        self.sent[key] += 1
        task = current_task.get()
        if task is not None and task.row_index is not None:
            self.cell_of[key] = (task.column, task.row_group, task.row_index)
        if self.reached.is_set() or (
            self.stop_after is not None
            and self.journal is not None
            and task is not None
            and sum(self.sent.values()) >= self.stop_after
            and self.journal.exists()
            and task.row_group in {self.cell_of[k][1] for k in self.journaled_drops(self.journal)}
        ):
            self.reached.set()
            await asyncio.Event().wait()  # held until the run is cancelled
        if int(key[:2], 16) % 13 == 0:
            self.rejected.add(key)
            raise BadRequestError(f"invalid request {key[:8]}")
        return await self.inner.send(request)

    def journaled_drops(self, journal: Path) -> set[str]:
        """Request keys of the rejected requests whose drop is already in the journal."""
        try:
            journaled = {(column, row) for _, column, row in read_journal_keys(journal)}
        except sqlite3.Error:  # the journal's writer has not created its table yet
            return set()
        return {
            key
            for key in self.rejected
            if key in self.cell_of
            and (self.cell_of[key][0], self.cell_of[key][1] * BUFFER_SIZE + self.cell_of[key][2])
            in journaled
        }

    async def aclose(self) -> None:
        await self.inner.aclose()


def _config() -> DatasetConfig:
    # A row whose two columns are both rejected is dropped for the one that fails first. A
    # limit that starts at the cap (no timer-paced slow start) keeps the order of grants, and so
    # the column recorded, the same in the runs this test compares.
    return DatasetConfig.model_validate(
        base_config(
            num_records=NUM_RECORDS,
            buffer_size=BUFFER_SIZE,
            request_admission={"slow_start": False},
        )
    )


async def _run(out: Path, provider: RejectingProvider, **options: Any) -> RunOutcome:
    return await run_dataset(
        _config(), RunOptions(output_dir=out, extra_providers={"sim": provider}, **options)
    )


def _dropped(out: Path) -> list[tuple[int, str, str]]:
    manifest = read_manifest(out)
    return sorted((row.row_index, row.column, row.reason) for row in manifest.dropped_rows)


@pytest.fixture
def baseline(tmp_path: Path) -> tuple[pd.DataFrame, list[tuple[int, str, str]]]:
    out = tmp_path / "baseline"
    asyncio.run(_run(out, RejectingProvider()))
    dropped = _dropped(out)
    assert 0 < len(dropped) < NUM_RECORDS // 2
    return load_dataset(out), dropped


@pytest.mark.parametrize("stop_after", [60, 80])
async def test_a_permanent_drop_is_replayed_on_resume_without_a_request(
    tmp_path: Path, baseline: tuple[pd.DataFrame, list[tuple[int, str, str]]], stop_after: int
) -> None:
    expected, expected_dropped = baseline
    out = tmp_path / "data"
    first = RejectingProvider(stop_after=stop_after, journal=out / JOURNAL_FILE_NAME)
    task = asyncio.create_task(_run(out, first))
    reached = asyncio.create_task(first.reached.wait())
    await asyncio.wait({task, reached}, return_when=asyncio.FIRST_COMPLETED)
    reached.cancel()
    task.cancel()
    with pytest.raises((asyncio.CancelledError, RunStoppedError)):
        await task
    assert read_manifest(out).status is RunStatus.CANCELLED
    journaled_drops = first.journaled_drops(out / JOURNAL_FILE_NAME)
    assert journaled_drops, "the stop came before any drop was journaled"

    second = RejectingProvider()
    outcome = await _run(out, second, resume=True)

    pd.testing.assert_frame_equal(load_dataset(out), expected)
    assert _dropped(out) == expected_dropped
    assert outcome.info.rows_dropped == len(expected_dropped)
    assert journaled_drops.isdisjoint(second.sent), "a journaled drop was requested again"
    assert not (out / JOURNAL_FILE_NAME).exists()


def test_only_drops_that_would_happen_again_are_permanent() -> None:
    def wrapped(cause: BaseException) -> NonRetryableGenerationError:
        error = NonRetryableGenerationError(f"rejected ({cause})")
        error.__cause__ = cause
        return error

    assert is_permanent_drop(BadRequestError("bad"))
    assert is_permanent_drop(wrapped(BadRequestError("bad")))
    # User code may be fixed before resuming: its failures are generated again.
    assert not is_permanent_drop(wrapped(ValueError("user code")))
    assert is_permanent_drop(NonRetryableGenerationError("invalid after re-asks"))
    assert not is_permanent_drop(wrapped(AuthenticationError("bad key")))
    assert not is_permanent_drop(wrapped(ProviderUnavailableError("budget spent on 503s")))
    assert not is_permanent_drop(wrapped(TimeoutError()))
    assert not is_permanent_drop(ProviderUnavailableError("retryable"))

    class Custom(NonRetryableGenerationError):
        pass

    assert not is_permanent_drop(Custom("cannot be raised again as itself"))
