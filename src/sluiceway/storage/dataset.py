"""Loads a written dataset: the manifest, then the Parquet files it lists in row-group order, into
one pandas DataFrame sorted by ``_row_index``. Files the manifest does not list (``*.tmp``, files of
row groups not yet checkpointed) are ignored; per-file column types are merged (see
``parquet_writer``), JSON text is decoded and nested columns are read as dicts and lists. Columns
given a pydantic model are validated into instances of it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from sluiceway.errors import StorageError
from sluiceway.storage.column_kinds import (
    ARROW_TYPES,
    ColumnKind,
    ColumnType,
    convert_column,
    kind_of_arrow_type,
    merge_types,
    python_values,
)
from sluiceway.storage.column_types import prune_absent
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
    types: dict[str, ColumnType]


_NULL = ColumnType.of(ColumnKind.NULL)
_AS_PYTHON_OBJECTS = frozenset({ColumnKind.JSON, ColumnKind.NESTED})


def load_dataset(
    directory: str | Path, *, output_models: Mapping[str, type[BaseModel]] | None = None
) -> pd.DataFrame:
    """The dataset in ``directory`` as a DataFrame: ``_row_index`` then the manifest's columns.

    Rows are sorted by ``_row_index`` (RangeIndex). JSON and nested (struct, list) columns hold
    Python dicts/lists, ``list<double>`` columns hold numpy arrays. ``output_models`` maps
    columns to pydantic models: those columns hold instances of their model (None stays None),
    e.g. ``load_dataset(path, output_models={"facts": Facts})`` for a structured column made
    with ``output_schema=Facts``. Blocks (disk I/O). Raises ``StorageError`` naming the file and
    the fix when the manifest is missing or damaged, or a listed file is missing, truncated or
    does not match the manifest, and naming the row when a value does not validate into its
    model.
    """
    root = Path(directory)
    manifest = read_manifest(root)
    columns = list(manifest.columns)
    models = dict(output_models or {})
    unknown = sorted(set(models) - set(columns))
    if unknown:
        raise StorageError(
            f"output_models names {unknown}, which are not columns of the dataset in {root}; "
            f"its columns are {columns}"
        )
    files = [
        _read_file(_file_in(root, group.file), columns=columns, expected_rows=group.rows_written)
        for group in sorted(manifest.row_groups, key=lambda group: group.index)
        if group.status in _WITH_FILE and group.file is not None
    ]
    final_types = dict.fromkeys(columns, _NULL)
    for loaded in files:
        for column in columns:
            final_types[column] = merge_types(final_types[column], loaded.types[column])
    if not files:
        return _empty_frame(columns)
    tables = [_conform(loaded, columns, final_types) for loaded in files]
    table = pa.concat_tables(tables).sort_by(ROW_INDEX_COLUMN)
    frame: pd.DataFrame = table.to_pandas()
    for column in columns:
        kind = final_types[column].kind
        if kind in _AS_PYTHON_OBJECTS or column in models:
            values = python_values(table.column(column), kind)
            if column in models:
                row_indices = table.column(ROW_INDEX_COLUMN).to_pylist()
                values = _validated(values, models[column], column, row_indices, root)
            frame[column] = pd.Series(values, index=frame.index, dtype=object)
    return frame


def _validated(
    values: list[object],
    model: type[BaseModel],
    column: str,
    row_indices: list[int],
    root: Path,
) -> list[object]:
    """Each non-null value of ``column`` as an instance of ``model``; nulls that stand for
    absent optional keys are dropped first, so the model's defaults apply."""
    schema = model.model_json_schema()
    out: list[object] = []
    for value, row_index in zip(values, row_indices, strict=True):
        if value is None:
            out.append(None)
            continue
        try:
            out.append(model.model_validate(prune_absent(value, schema)))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "<value>"
            raise StorageError(
                f"{root}: column {column!r}, row {row_index}: the value does not validate as "
                f"{model.__qualname__} ({where}: {first['msg']}; {exc.error_count()} error(s)); "
                "pass the model the column was generated with, or load it without output_models"
            ) from exc
    return out


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
    return _LoadedFile(path=path, table=table, types=_file_types(path, table, columns))


def _file_types(path: Path, table: Any, columns: Sequence[str]) -> dict[str, ColumnType]:
    metadata = table.schema.metadata or {}
    recorded: dict[str, str] = {}
    if KINDS_METADATA_KEY in metadata:
        try:
            recorded = json.loads(metadata[KINDS_METADATA_KEY])
        except ValueError as exc:
            raise StorageError(
                f"{path} has damaged column metadata ({exc}): {_REBUILD_HINT}."
            ) from exc
    types: dict[str, ColumnType] = {}
    for column in columns:
        arrow_type = table.schema.field(column).type
        recorded_kind = _known_kind(recorded.get(column))
        if recorded_kind is ColumnKind.NESTED and (
            pa.types.is_struct(arrow_type) or pa.types.is_list(arrow_type)
        ):
            types[column] = ColumnType.nested(arrow_type)
            continue
        if recorded_kind is not None and (
            ARROW_TYPES.get(recorded_kind) == arrow_type
            or (recorded_kind is ColumnKind.JSON and pa.types.is_string(arrow_type))
        ):
            types[column] = ColumnType(kind=recorded_kind, arrow_type=arrow_type)
            continue
        inferred = kind_of_arrow_type(arrow_type)
        if inferred is None:
            raise StorageError(
                f"{path}: column {column!r} has Arrow type {arrow_type}, which Sluiceway does "
                f"not write: {_REBUILD_HINT}."
            )
        types[column] = ColumnType(kind=inferred, arrow_type=arrow_type)
    return types


def _known_kind(raw: object) -> ColumnKind | None:
    if not isinstance(raw, str):
        return None
    try:
        return ColumnKind(raw)
    except ValueError:
        return None


def _conform(loaded: _LoadedFile, columns: Sequence[str], types: dict[str, ColumnType]) -> Any:
    """The file's table with every column converted to the dataset's type for it."""
    arrays = [loaded.table.column(ROW_INDEX_COLUMN).cast(pa.int64())]
    for column in columns:
        target = types[column]
        source = loaded.types[column]
        array = convert_column(loaded.table.column(column), source, target)
        if array.type != target.arrow_type:
            # Files written by other tools: int32, large_string, ns timestamps and the like.
            array = array.cast(target.arrow_type)
        arrays.append(array)
    return pa.Table.from_arrays(arrays, names=[ROW_INDEX_COLUMN, *columns])


def _empty_frame(columns: Sequence[str]) -> pd.DataFrame:
    data: dict[str, pd.Series[Any]] = {ROW_INDEX_COLUMN: pd.Series([], dtype="int64")}
    for column in columns:
        data[column] = pd.Series([], dtype=object)
    return pd.DataFrame(data)
