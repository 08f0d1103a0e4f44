"""Where completed row groups go: Parquet files with a manifest, or memory for previews."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sluiceway.config.models import DatasetConfig
from sluiceway.engine.row_groups import DroppedRow
from sluiceway.storage.capacity_plan import (
    CAPACITY_PLAN_FILE_NAME,
    CapacityPlan,
    write_capacity_plan,
)
from sluiceway.storage.manifest import DroppedRowRecord, ManifestWriter, RunStatus
from sluiceway.storage.output_dir import prepare_output_directory
from sluiceway.storage.parquet_writer import RowGroupWriter


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
    ``StorageError`` and ends the run (it is never swallowed).
    """

    def __init__(self, writer: RowGroupWriter, manifest: ManifestWriter, directory: Path) -> None:
        self._writer = writer
        self._manifest = manifest
        self._directory = directory
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
    ) -> ParquetSink:
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
        await manifest.write()
        return cls(RowGroupWriter(path, column_order=columns), manifest, path)

    async def write_row_group(
        self,
        row_group: int,
        rows: Sequence[dict[str, Any]],
        row_indices: Sequence[int],
        dropped: Sequence[DroppedRow],
    ) -> None:
        written = await self._writer.write(row_group, rows, row_indices) if rows else None
        self._dropped.extend(dropped)
        await self._manifest.checkpoint(
            row_group=row_group,
            written=written,
            dropped=[
                DroppedRowRecord(row_index=row.row_index, column=row.column, reason=row.reason)
                for row in dropped
            ],
        )

    def dropped_rows(self) -> list[DroppedRow]:
        return sorted(self._dropped, key=lambda row: row.row_index)

    async def finish(self, *, status: str, capacity_plan: CapacityPlan) -> None:
        await asyncio.to_thread(
            write_capacity_plan, self._directory / CAPACITY_PLAN_FILE_NAME, capacity_plan
        )
        await self._manifest.finish(RunStatus(status))
