"""What an interrupted run left in its output directory, checked before it is continued: the
manifest, the Parquet files it lists (readable, right row count), files no reader sees (temp
files, part files the manifest does not list) and the config the run was started with
(``run_config.json``, used to explain a refused resume). Every function here blocks."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sluiceway.errors import StorageError
from sluiceway.storage.atomic import TEMP_SUFFIX, write_bytes_atomically
from sluiceway.storage.journal import JOURNAL_FILE_NAME
from sluiceway.storage.json_encoding import dumps_document
from sluiceway.storage.manifest import (
    MANIFEST_FILE_NAME,
    RowGroupStatus,
    RunManifest,
    read_manifest_file,
)
from sluiceway.storage.output_dir import holds_dataset

RUN_CONFIG_FILE_NAME = "run_config.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveredOutput:
    """A dataset directory ready to be continued.

    ``manifest`` lists only row groups whose files are present and sound; ``missing`` holds the
    row groups whose listed file was deleted or that were written ``partial`` when the run
    stopped (they are generated again); ``orphans`` are files
    no reader sees (temp files, unlisted part files) that ``remove_orphans`` deletes;
    ``has_journal`` says whether a cell journal is present.
    """

    directory: Path
    manifest: RunManifest
    missing: tuple[int, ...]
    orphans: tuple[Path, ...]
    has_journal: bool

    @property
    def completed_row_groups(self) -> frozenset[int]:
        return frozenset(group.index for group in self.manifest.row_groups)


def inspect_output(
    directory: Path, *, accept: Callable[[RunManifest], None] | None = None
) -> RecoveredOutput | None:
    """Checks ``directory`` for a resumable dataset; ``None`` when it holds none at all.

    Raises ``StorageError`` naming the path and the fix when the path is a file, the directory
    is not writable, part files or a journal exist without a manifest, the manifest is damaged,
    or a listed Parquet file is truncated, damaged or holds the wrong number of rows.
    ``accept`` sees the manifest as soon as it is read, before any Parquet file is checked, and
    raises to refuse it (a config mismatch is the first thing to report).
    """
    if directory.exists() and not directory.is_dir():
        raise StorageError(
            f"output path {directory} is a file, not a directory; there is no run to resume "
            "there. Choose the directory of the stopped run."
        )
    if not directory.exists():
        return None
    manifest_path = directory / MANIFEST_FILE_NAME
    if not manifest_path.exists():
        if holds_dataset(directory):
            raise StorageError(
                f"{directory} holds part files or a journal but no {MANIFEST_FILE_NAME}, so "
                "there is nothing Sluiceway can resume; pass --overwrite to start over, or "
                "choose another output path."
            )
        return None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StorageError(
            f"output directory {directory} is not writable, so the run cannot be continued "
            "there; fix its permissions and run with --resume again."
        )
    manifest = read_manifest_file(manifest_path)
    if accept is not None:
        accept(manifest)
    missing: list[int] = []
    for group in manifest.row_groups:
        if group.status is RowGroupStatus.PARTIAL:
            # Salvaged when the run stopped: generated again, whole (its file is an orphan).
            missing.append(group.index)
            continue
        if group.status is not RowGroupStatus.WRITTEN or group.file is None:
            continue
        path = directory / group.file
        if not path.exists():
            missing.append(group.index)
            continue
        _check_part_file(path, group.index, group.rows_written)
    if missing:
        manifest = _without_row_groups(manifest, set(missing))
    listed = set(manifest.files)
    orphans = [
        path
        for path in sorted(directory.iterdir())
        if path.is_file()
        and (
            path.name.endswith(TEMP_SUFFIX)
            or (
                path.name.startswith("part-")
                and path.suffix == ".parquet"
                and path.name not in listed
            )
        )
    ]
    return RecoveredOutput(
        directory=directory,
        manifest=manifest,
        missing=tuple(missing),
        orphans=tuple(orphans),
        has_journal=(directory / JOURNAL_FILE_NAME).exists(),
    )


def _check_part_file(path: Path, row_group: int, rows: int) -> None:
    hint = (
        f"Delete {path} and run with --resume again to generate row group {row_group} anew, "
        "or re-run the dataset with --overwrite."
    )
    try:
        metadata = pq.read_metadata(path)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(
            f"{path} is listed in the manifest but is not a readable Parquet file "
            f"({type(exc).__name__}: {exc}); it is truncated or damaged. {hint}"
        ) from exc
    if metadata.num_rows != rows:
        raise StorageError(
            f"{path} holds {metadata.num_rows} rows but the manifest says {rows}; it does not "
            f"belong to this dataset. {hint}"
        )


def _without_row_groups(manifest: RunManifest, removed: set[int]) -> RunManifest:
    """``manifest`` as if the row groups in ``removed`` had never been checkpointed."""
    kept = tuple(group for group in manifest.row_groups if group.index not in removed)
    gone = [group for group in manifest.row_groups if group.index in removed]
    size = manifest.buffer_size
    ranges = [range(g.index * size, (g.index + 1) * size) for g in gone]
    dropped = tuple(
        row for row in manifest.dropped_rows if not any(row.row_index in r for r in ranges)
    )
    listed_gone = len(manifest.dropped_rows) - len(dropped)
    dropped_gone = sum(group.rows_dropped for group in gone)
    return replace(
        manifest,
        row_groups=kept,
        files=tuple(group.file for group in kept if group.file is not None),
        rows_written=manifest.rows_written - sum(group.rows_written for group in gone),
        rows_dropped=manifest.rows_dropped - dropped_gone,
        dropped_rows=dropped,
        dropped_rows_omitted=max(0, manifest.dropped_rows_omitted - (dropped_gone - listed_gone)),
    )


def remove_orphans(recovered: RecoveredOutput) -> None:
    """Deletes the files of ``recovered.orphans`` (no reader sees them; they are regenerated)."""
    for path in recovered.orphans:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(
                f"could not delete the leftover file {path}: {type(exc).__name__}: {exc}. "
                "Remove it by hand and run with --resume again."
            ) from exc


def write_run_config(directory: Path, canonical_config: Mapping[str, Any]) -> None:
    """Saves the content-relevant config of a new run (``run_config.json``), atomically."""
    write_bytes_atomically(
        directory / RUN_CONFIG_FILE_NAME, dumps_document(dict(canonical_config)).encode("utf-8")
    )


def read_run_config(directory: Path) -> dict[str, Any] | None:
    """The saved config of the run in ``directory``; ``None`` if missing or unreadable (it only
    serves to explain a refused resume)."""
    try:
        data = json.loads((directory / RUN_CONFIG_FILE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
