"""Writes each completed row group as ``part-{row_group:06d}.parquet``: ``_row_index`` (int64,
the global record index) first, then the output columns in the given order, built column-wise
with pyarrow and written atomically (zstd) in a worker thread so the event loop never blocks.

Schema rule, so the files of one dataset agree: every value has a kind (``column_kinds``).
str -> string, bool -> bool, int -> int64, float -> double (an int column with floats widens to
double), date -> date32, naive datetime -> timestamp[us], aware datetime -> timestamp[us, UTC],
a list/tuple/ndarray of numbers -> list<double> (embeddings), and a dict, a list of anything else,
or a column whose kinds conflict inside one row group (str and int, say) -> JSON text. Dicts are
never inferred as Arrow structs: inferred struct shapes change with each group's keys and nulls.
A column whose values are all None is written as Arrow null, unless ``column_types`` declares
its type: declared types are used in every file (all-None groups become typed nulls), and a
declared nested type (a struct or list from a structured or judge column's JSON schema, see
``column_types``) stores dicts and lists as Arrow structs and lists, falling back to JSON text for
a file with a value that does not conform to it. Each file records its kinds in the schema
metadata key ``sluiceway.column_kinds`` (``nested`` for declared nested types, whose Arrow type is
the file's own); ``load_dataset`` merges them across files (null -> any, int -> float, anything
else -> JSON) and turns JSON text and nested values into dicts and lists, so pandas users get
Python objects, never JSON strings. Bools inside numeric lists are stored as 0.0/1.0.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

# pyarrow imports pandas the first time it converts Python values (to recognise pandas objects),
# about 0.3 s: imported with this module, before any run, rather than inside a run's first
# checkpoint, in a worker thread that competes with the busy event loop for the GIL.
import pandas  # noqa: F401
import pyarrow as pa
import pyarrow.parquet as pq

from sluiceway.errors import EngineError, StorageError
from sluiceway.storage.atomic import write_bytes_atomically
from sluiceway.storage.column_kinds import (
    ColumnKind,
    ColumnType,
    encode_column,
    encode_nested,
    kind_of_values,
    merge_kinds,
)
from sluiceway.storage.json_encoding import dumps_cell

ROW_INDEX_COLUMN = "_row_index"
KINDS_METADATA_KEY = b"sluiceway.column_kinds"
PARQUET_COMPRESSION = "zstd"


def load_arrow_conversions() -> None:
    """Makes pyarrow load the rest of what its first conversion of Python values needs (about
    15 ms). Call it before the run, for the same reason pandas is imported with this module."""
    pa.array([0])


def row_group_file_name(row_group: int) -> str:
    """``part-000042.parquet`` for row group 42."""
    return f"part-{row_group:06d}.parquet"


@dataclass(frozen=True, slots=True, kw_only=True)
class WrittenFile:
    """One Parquet file on disk: where, which row group, how many rows and bytes, which kinds."""

    path: Path
    row_group: int
    rows: int
    bytes: int
    column_kinds: Mapping[str, ColumnKind]


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodedRowGroup:
    """A row group as an Arrow table (``table`` is a ``pyarrow.Table``) and its column kinds."""

    table: Any
    column_kinds: Mapping[str, ColumnKind]


def encode_row_group(
    rows: Sequence[Mapping[str, Any]],
    row_indices: Sequence[int],
    *,
    column_order: Sequence[str],
    column_types: Mapping[str, ColumnType] | None = None,
) -> EncodedRowGroup:
    """Builds the Arrow table of one row group column by column (pure; no I/O).

    Columns missing from a row read as None; keys not in ``column_order`` are left out. Raises
    ``TypeError``/``ValueError``/``pyarrow.ArrowException`` for values that cannot be stored.
    """
    if len(rows) != len(row_indices):
        raise EngineError(
            f"a row group has {len(rows)} rows but {len(row_indices)} row indices; "
            "the engine must pass one global index per row"
        )
    declared = column_types or {}
    arrays: list[Any] = [pa.array(row_indices, type=pa.int64())]
    kinds: dict[str, ColumnKind] = {}
    for name in column_order:
        values = [row.get(name) for row in rows]
        column_type = declared.get(name)
        if column_type is not None and column_type.kind is ColumnKind.NESTED:
            nested = encode_nested(values, column_type.arrow_type)
            if nested is not None:
                kinds[name] = ColumnKind.NESTED
                arrays.append(nested)
                continue
            kind = ColumnKind.JSON  # a value that does not conform: this file keeps JSON text
        else:
            base = ColumnKind.NULL if column_type is None else column_type.kind
            kind = merge_kinds(base, kind_of_values(values))
        try:
            kinds[name], array = encode_column(values, kind)
        except (TypeError, ValueError, OverflowError, pa.ArrowException) as exc:
            raise _ColumnEncodingError(name, values, row_indices, exc) from exc
        arrays.append(array)
    metadata = {KINDS_METADATA_KEY: json.dumps(kinds, sort_keys=True).encode()}
    table = pa.Table.from_arrays(arrays, names=[ROW_INDEX_COLUMN, *column_order])
    return EncodedRowGroup(
        table=table.replace_schema_metadata(metadata), column_kinds=MappingProxyType(kinds)
    )


class _ColumnEncodingError(Exception):
    """A column could not be encoded; carries the first offending value for the message."""

    def __init__(
        self,
        column: str,
        values: Sequence[object],
        row_indices: Sequence[int],
        cause: BaseException,
    ) -> None:
        self.column = column
        self.cause = cause
        self.row_index: int | None = None
        self.value_type: str | None = None
        for value, row_index in zip(values, row_indices, strict=True):
            try:
                dumps_cell(value)
            except (TypeError, ValueError):
                self.row_index = row_index
                self.value_type = type(value).__qualname__
                break
        super().__init__(str(cause))


class RowGroupWriter:
    """Writes completed row groups of one run into ``directory``.

    ``write`` runs encoding and the atomic write in a worker thread; it raises ``StorageError``
    (fatal) when the file cannot be written or a value cannot be stored, and leaves no temp
    file behind. Rows must not be mutated until ``write`` returns. Cancelling the awaiting task
    does not stop the thread: the file may still appear, complete, but it is not reported and
    so not in the manifest, which makes readers ignore it.
    """

    def __init__(
        self,
        directory: Path,
        *,
        column_order: Sequence[str],
        column_types: Mapping[str, ColumnType] | None = None,
    ) -> None:
        names = list(column_order)
        if ROW_INDEX_COLUMN in names:
            raise EngineError(
                f"output column {ROW_INDEX_COLUMN!r} is reserved for the global record index; "
                "rename that column"
            )
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise EngineError(f"output columns {duplicates} appear more than once in the order")
        unknown = sorted(set(column_types or {}) - set(names))
        if unknown:
            raise EngineError(f"column types given for {unknown}, which are not output columns")
        self._directory = Path(directory)
        self._column_order = tuple(names)
        self._column_types: Mapping[str, ColumnType] = MappingProxyType(dict(column_types or {}))

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def column_order(self) -> tuple[str, ...]:
        return self._column_order

    def path_for(self, row_group: int) -> Path:
        return self._directory / row_group_file_name(row_group)

    async def write(
        self, row_group: int, rows: Sequence[Mapping[str, Any]], row_indices: Sequence[int]
    ) -> WrittenFile:
        """Writes ``part-{row_group:06d}.parquet`` off the event loop; see the class docstring."""
        return await asyncio.to_thread(self.write_blocking, row_group, rows, row_indices)

    def write_blocking(
        self, row_group: int, rows: Sequence[Mapping[str, Any]], row_indices: Sequence[int]
    ) -> WrittenFile:
        """The same as ``write``, on the calling thread (blocks on disk I/O and fsync)."""
        if row_group < 0:
            raise EngineError(f"row group index must be >= 0, got {row_group}")
        path = self.path_for(row_group)
        try:
            encoded = encode_row_group(
                rows, row_indices, column_order=self._column_order, column_types=self._column_types
            )
        except _ColumnEncodingError as exc:
            where = "" if exc.row_index is None else f" (row {exc.row_index}, {exc.value_type})"
            raise StorageError(
                f"cannot write {path}: column {exc.column!r} holds a value Parquet cannot "
                f"store{where}: {exc.cause}. Column values must be str, int, float, bool, None, "
                "date/datetime, or dicts and lists of those; convert other objects in the "
                "generator."
            ) from exc.cause
        # Serialized in memory first: pyarrow writing to a Python file object takes the GIL back
        # for every chunk, and each time waits for the busy event loop thread to hand it over.
        buffer = pa.BufferOutputStream()
        pq.write_table(encoded.table, buffer, compression=PARQUET_COMPRESSION)
        size_bytes = write_bytes_atomically(path, buffer.getvalue().to_pybytes())
        return WrittenFile(
            path=path,
            row_group=row_group,
            rows=len(rows),
            bytes=size_bytes,
            column_kinds=encoded.column_kinds,
        )
