"""Loads a written dataset: the manifest, then the Parquet files it lists in row-group order, into
one pandas DataFrame sorted by ``_row_index``. Files the manifest does not list (``*.tmp``, files of
row groups not yet checkpointed) are ignored; per-file column kinds are merged (see
``parquet_writer``) and JSON text is decoded back to dicts and lists."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sluiceway.errors import StorageError
from sluiceway.storage.column_kinds import (
    ARROW_TYPES,
    ColumnKind,
    convert_column,
    kind_of_arrow_type,
    merge_kinds,
    python_values,
)
from sluiceway.storage.manifest import (
    MANIFEST_FILE_NAME,
    RowGroupStatus,
    RunManifest,
    read_manifest_file,
)
from sluiceway.storage.parquet_writer import KINDS_METADATA_KEY, ROW_INDEX_COLUMN

_WITH_FILE = frozenset({RowGroupStatus.WRITTEN, RowGroupStatus.PARTIAL})
_REBUILD_HINT = (
    "delete it and continue the run with --resume, or re-run the dataset with --overwrite"
)


def read_manifest(directory: str | Path) -> RunManifest:
    """The manifest of the dataset in ``directory``; ``StorageError`` if missing or damaged."""
    return read_manifest_file(Path(directory) / MANIFEST_FILE_NAME)


@dataclass(frozen=True, slots=True, kw_only=True)
class _LoadedFile:
    path: Path
    table: Any  # pyarrow.Table
    kinds: dict[str, ColumnKind]


def load_dataset(directory: str | Path) -> pd.DataFrame:
    """The dataset in ``directory`` as a DataFrame: ``_row_index`` then the manifest's columns.

    Rows are sorted by ``_row_index`` (RangeIndex). JSON columns hold Python dicts/lists,
    ``list<double>`` columns hold numpy arrays. Blocks (disk I/O). Raises ``StorageError`` naming
    the file and the fix when the manifest is missing or damaged, or a listed file is missing,
    truncated or does not match the manifest.
    """
    root = Path(directory)
    manifest = read_manifest(root)
    columns = list(manifest.columns)
    files = [
        _read_file(_file_in(root, group.file), columns=columns, expected_rows=group.rows_written)
        for group in sorted(manifest.row_groups, key=lambda group: group.index)
        if group.status in _WITH_FILE and group.file is not None
    ]
    final_kinds = dict.fromkeys(columns, ColumnKind.NULL)
    for loaded in files:
        for column in columns:
            final_kinds[column] = merge_kinds(final_kinds[column], loaded.kinds[column])
    if not files:
        return _empty_frame(columns)
    tables = [_conform(loaded, columns, final_kinds) for loaded in files]
    table = pa.concat_tables(tables).sort_by(ROW_INDEX_COLUMN)
    frame: pd.DataFrame = table.to_pandas()
    for column in columns:
        if final_kinds[column] is ColumnKind.JSON:
            decoded = python_values(table.column(column), ColumnKind.JSON)
            frame[column] = pd.Series(decoded, index=frame.index, dtype=object)
    return frame


def _file_in(root: Path, name: str) -> Path:
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise StorageError(
            f"{root / MANIFEST_FILE_NAME} lists the file {name!r}, which is not a plain file name "
            "in the output directory; the manifest is damaged. Re-run the dataset with --overwrite."
        )
    return root / name


def _read_file(path: Path, *, columns: Sequence[str], expected_rows: int) -> _LoadedFile:
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise StorageError(
            f"{path} is listed in the manifest but missing; the output directory was changed "
            "after the run. Restore the file, or re-run the dataset with --overwrite."
        ) from None
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(
            f"{path} is not a readable Parquet file ({type(exc).__name__}: {exc}); it is "
            f"truncated or damaged: {_REBUILD_HINT}."
        ) from exc
    missing = [name for name in (ROW_INDEX_COLUMN, *columns) if name not in table.column_names]
    if missing:
        raise StorageError(
            f"{path} lacks the column(s) {missing} that the manifest lists; the file does not "
            f"belong to this dataset: {_REBUILD_HINT}."
        )
    if table.num_rows != expected_rows:
        raise StorageError(
            f"{path} holds {table.num_rows} rows but the manifest says {expected_rows}; the "
            f"file does not belong to this dataset: {_REBUILD_HINT}."
        )
    return _LoadedFile(path=path, table=table, kinds=_file_kinds(path, table, columns))


def _file_kinds(path: Path, table: Any, columns: Sequence[str]) -> dict[str, ColumnKind]:
    metadata = table.schema.metadata or {}
    recorded: dict[str, str] = {}
    if KINDS_METADATA_KEY in metadata:
        try:
            recorded = json.loads(metadata[KINDS_METADATA_KEY])
        except ValueError as exc:
            raise StorageError(
                f"{path} has damaged column metadata ({exc}): {_REBUILD_HINT}."
            ) from exc
    kinds: dict[str, ColumnKind] = {}
    for column in columns:
        arrow_type = table.schema.field(column).type
        recorded_kind = _known_kind(recorded.get(column))
        if recorded_kind is not None and (
            ARROW_TYPES[recorded_kind] == arrow_type
            or (recorded_kind is ColumnKind.JSON and pa.types.is_string(arrow_type))
        ):
            kinds[column] = recorded_kind
            continue
        inferred = kind_of_arrow_type(arrow_type)
        if inferred is None:
            raise StorageError(
                f"{path}: column {column!r} has Arrow type {arrow_type}, which Sluiceway does "
                f"not write: {_REBUILD_HINT}."
            )
        kinds[column] = inferred
    return kinds


def _known_kind(raw: object) -> ColumnKind | None:
    if not isinstance(raw, str):
        return None
    try:
        return ColumnKind(raw)
    except ValueError:
        return None


def _conform(loaded: _LoadedFile, columns: Sequence[str], kinds: dict[str, ColumnKind]) -> Any:
    """The file's table with every column converted to the dataset's kind for it."""
    arrays = [loaded.table.column(ROW_INDEX_COLUMN).cast(pa.int64())]
    for column in columns:
        target = kinds[column]
        array = convert_column(loaded.table.column(column), loaded.kinds[column], target)
        if array.type != ARROW_TYPES[target]:
            # Files written by other tools: int32, large_string, ns timestamps and the like.
            array = array.cast(ARROW_TYPES[target])
        arrays.append(array)
    return pa.Table.from_arrays(arrays, names=[ROW_INDEX_COLUMN, *columns])


def _empty_frame(columns: Sequence[str]) -> pd.DataFrame:
    data: dict[str, pd.Series[Any]] = {ROW_INDEX_COLUMN: pd.Series([], dtype="int64")}
    for column in columns:
        data[column] = pd.Series([], dtype=object)
    return pd.DataFrame(data)
