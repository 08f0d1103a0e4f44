"""Where completed row groups go: Parquet files with a manifest (and the cell journal of the
row groups in flight), or memory for previews."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sluiceway.config.column_values import output_values
from sluiceway.config.fingerprint import canonical_config
from sluiceway.config.models import DatasetConfig
from sluiceway.engine.resume import CellReplay, ResumePlan
from sluiceway.engine.row_groups import DroppedRow
from sluiceway.errors import StorageError
from sluiceway.storage.capacity_plan import (
    CAPACITY_PLAN_FILE_NAME,
    CapacityPlan,
    write_capacity_plan,
)
from sluiceway.storage.column_types import column_types
from sluiceway.storage.journal import CellJournal, remove_journal
from sluiceway.storage.manifest import DroppedRowRecord, ManifestWriter, RunStatus
from sluiceway.storage.output_dir import prepare_output_directory
from sluiceway.storage.parquet_writer import RowGroupWriter, load_arrow_conversions
from sluiceway.storage.recovery import remove_orphans, write_run_config

logger = logging.getLogger(__name__)


class MemorySink:
    """Keeps completed rows in memory (previews and tests); nothing touches the disk."""

    def __init__(self) -> None:
        self._groups: dict[int, tuple[list[dict[str, Any]], list[int]]] = {}
        self._dropped: list[DroppedRow] = []

    async def write_row_group(
        self,
        row_group: int,
        rows: Sequence[dict[str, Any]],
        row_indices: Sequence[int],
        dropped: Sequence[DroppedRow],
        *,
        partial: bool = False,
    ) -> None:
        self._groups[row_group] = (list(rows), list(row_indices))
        self._dropped.extend(dropped)

    def dropped_rows(self) -> list[DroppedRow]:
        return sorted(self._dropped, key=lambda row: row.row_index)

    def rows(self, columns: Sequence[str]) -> list[dict[str, Any]]:
        """Output columns of every written row, in record order, with ``_row_index`` first."""
        out: list[dict[str, Any]] = []
        for row_group in sorted(self._groups):
            rows, indices = self._groups[row_group]
            for index, row in zip(indices, rows, strict=True):
                record: dict[str, Any] = {"_row_index": index}
                record.update((column, row.get(column)) for column in columns)
                out.append(record)
        return out


class ParquetSink:
    """Writes each completed row group to its own Parquet file and checkpoints the manifest.

    Files and the manifest are written atomically off the event loop; a storage failure raises
    ``StorageError`` and ends the run (it is never swallowed). With a journal, the results of
    model-backed cells are journaled as they complete and a row group's entries are deleted
    once its file and the manifest are on disk.
    """

    def __init__(
        self,
        writer: RowGroupWriter,
        manifest: ManifestWriter,
        directory: Path,
        *,
        replay: CellReplay | None = None,
    ) -> None:
        self._writer = writer
        self._manifest = manifest
        self._directory = directory
        self._replay = replay
        self._dropped: list[DroppedRow] = []

    @classmethod
    async def open(
        cls,
        directory: Path,
        *,
        overwrite: bool,
        columns: Sequence[str],
        run_id: str,
        fingerprint: str,
        config: DatasetConfig,
        resume: ResumePlan | None = None,
        journal: bool = True,
    ) -> ParquetSink:
        """Prepares the output directory and writes the first manifest (status ``running``).

        A new run starts from an empty directory (``overwrite`` deletes Sluiceway's files) and
        saves its config for later diffs. With ``resume`` (checked by ``plan_resume``) the
        manifest is continued, leftover temp and unlisted part files are deleted and the run's
        journal is reused. With ``journal`` the results of model-backed cells are journaled.
        """
        if resume is not None:
            path = resume.recovered.directory
            await asyncio.to_thread(remove_orphans, resume.recovered)
            manifest = ManifestWriter.continuing(path, resume.manifest)
            cell_journal = resume.journal
            if cell_journal is None and journal:
                await asyncio.to_thread(remove_journal, path)
                cell_journal = await asyncio.to_thread(
                    CellJournal.create, path, run_id=run_id, config_fingerprint=fingerprint
                )
            entries = resume.entries
        else:
            path = await asyncio.to_thread(prepare_output_directory, directory, overwrite=overwrite)
            manifest = ManifestWriter(
                path,
                run_id=run_id,
                config_fingerprint=fingerprint,
                seed=config.run.seed,
                num_records=config.run.num_records,
                buffer_size=config.run.buffer_size,
                columns=columns,
            )
            # The manifest comes first: a directory with a journal always has one.
            await manifest.write()
            cell_journal = None
            try:
                await asyncio.to_thread(write_run_config, path, canonical_config(config))
                if journal:
                    cell_journal = await asyncio.to_thread(
                        CellJournal.create, path, run_id=run_id, config_fingerprint=fingerprint
                    )
            except StorageError:
                with contextlib.suppress(StorageError):
                    await manifest.finish(RunStatus.FAILED)
                raise
            entries = {}
        await manifest.write()
        await asyncio.to_thread(load_arrow_conversions)
        replay = None
        if cell_journal is not None:
            cell_journal.start()
            replay = CellReplay(cell_journal, entries)
        writer = RowGroupWriter(
            path, column_order=columns, column_types=column_types(output_values(config.columns))
        )
        sink = cls(writer, manifest, path, replay=replay)
        if resume is not None:
            sink._dropped.extend(
                DroppedRow(row_index=row.row_index, column=row.column, reason=row.reason)
                for row in resume.manifest.dropped_rows
            )
        return sink

    @property
    def replay(self) -> CellReplay | None:
        """The journal of model-backed results, if this run keeps one."""
        return self._replay

    @property
    def manifest(self) -> ManifestWriter:
        return self._manifest

    async def write_row_group(
        self,
        row_group: int,
        rows: Sequence[dict[str, Any]],
        row_indices: Sequence[int],
        dropped: Sequence[DroppedRow],
        *,
        partial: bool = False,
    ) -> None:
        """Writes the row group's file, then records it in the manifest (``partial`` when the run
        stopped before the group was complete). Both happen in one worker-thread job: each hop
        between the thread and a busy event loop costs a few loop iterations, and the group
        holds its slot until the manifest lists it. A checkpoint that has started finishes even
        if the awaiting task is cancelled (its file is being written and the manifest must list
        it), then the cancellation propagates."""
        checkpoint = asyncio.get_running_loop().run_in_executor(
            None,
            functools.partial(
                self._write_row_group_blocking, row_group, rows, row_indices, dropped, partial
            ),
        )
        try:
            await asyncio.shield(checkpoint)
        except asyncio.CancelledError:
            await checkpoint
            raise
        self._dropped.extend(dropped)
        if self._replay is not None and not partial:
            # Only now, with the file and the manifest durable, may its journal rows go; a
            # partial group keeps them for the run that completes it.
            self._replay.row_group_checkpointed(row_group)

    def _write_row_group_blocking(
        self,
        row_group: int,
        rows: Sequence[dict[str, Any]],
        row_indices: Sequence[int],
        dropped: Sequence[DroppedRow],
        partial: bool,
    ) -> None:
        written = self._writer.write_blocking(row_group, rows, row_indices) if rows else None
        self._manifest.checkpoint_blocking(
            row_group=row_group,
            written=written,
            dropped=[
                DroppedRowRecord(row_index=row.row_index, column=row.column, reason=row.reason)
                for row in dropped
            ],
            partial=partial,
        )

    def dropped_rows(self) -> list[DroppedRow]:
        return sorted(self._dropped, key=lambda row: row.row_index)

    async def finish(self, *, status: str, capacity_plan: CapacityPlan) -> None:
        """Commits the journal, writes the capacity plan and the final manifest. A completed
        run's journal is deleted (the Parquet files hold everything).

        Each step is tried even if an earlier one fails (on a full disk the manifest must
        still get its chance). The first storage failure is raised, unless the run already
        failed: its own error is the one to report, so these are logged, naming their file."""
        failures: list[StorageError] = []
        if self._replay is not None:
            try:
                await asyncio.to_thread(self._replay.journal.close)
            except StorageError as error:
                failures.append(error)
        try:
            await asyncio.to_thread(
                write_capacity_plan, self._directory / CAPACITY_PLAN_FILE_NAME, capacity_plan
            )
        except StorageError as error:
            failures.append(error)
        try:
            await self._manifest.finish(RunStatus(status))
        except StorageError as error:
            failures.append(error)
        if failures:
            if status != "failed":
                raise failures[0]
            for failure in failures:
                logger.error("while stopping the failed run: %s", failure)
            return
        if status == "completed":
            await asyncio.to_thread(remove_journal, self._directory)
