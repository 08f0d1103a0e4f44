"""How cell values map to Parquet columns: the kind of each value, the Arrow type of each kind,
the rule that merges kinds (within a row group and across files), and the conversions between
kinds that let every file of a dataset load into one table. See ``parquet_writer`` for the rule."""

from __future__ import annotations

import datetime as dt
import enum
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import pyarrow as pa

from sluiceway.storage.json_encoding import dumps_cell, loads_cell

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class ColumnKind(enum.StrEnum):
    """What one column of one Parquet file holds."""

    NULL = "null"  # every value is None; the column has no type yet
    BOOL = "bool"
    INT = "int"  # int64
    FLOAT = "float"  # float64
    STRING = "string"
    DATE = "date"
    TIMESTAMP = "timestamp"  # naive datetimes, microseconds
    TIMESTAMP_UTC = "timestamp_utc"  # aware datetimes, converted to UTC
    FLOAT_LIST = "float_list"  # list<double>: embeddings and other numeric vectors
    JSON = "json"  # UTF-8 JSON text: dicts, other lists, and columns whose kinds conflict


ARROW_TYPES: Mapping[ColumnKind, Any] = {
    ColumnKind.NULL: pa.null(),
    ColumnKind.BOOL: pa.bool_(),
    ColumnKind.INT: pa.int64(),
    ColumnKind.FLOAT: pa.float64(),
    ColumnKind.STRING: pa.string(),
    ColumnKind.DATE: pa.date32(),
    ColumnKind.TIMESTAMP: pa.timestamp("us"),
    ColumnKind.TIMESTAMP_UTC: pa.timestamp("us", tz="UTC"),
    ColumnKind.FLOAT_LIST: pa.list_(pa.float64()),
    ColumnKind.JSON: pa.string(),
}

# Types whose kind does not depend on the value (ints do: size; datetimes do: time zone).
_KIND_OF_EXACT_TYPE: Mapping[type, ColumnKind] = {
    type(None): ColumnKind.NULL,
    bool: ColumnKind.BOOL,
    float: ColumnKind.FLOAT,
    str: ColumnKind.STRING,
    dict: ColumnKind.JSON,
    list: ColumnKind.FLOAT_LIST,
    tuple: ColumnKind.FLOAT_LIST,
    dt.date: ColumnKind.DATE,
}


def kind_of_value(value: object) -> ColumnKind:
    """The kind a single value asks for. Sequences are optimistically ``FLOAT_LIST``; the
    encoder falls back to ``JSON`` when their items are not numbers."""
    if value is None:
        return ColumnKind.NULL
    exact = _KIND_OF_EXACT_TYPE.get(type(value))
    if exact is not None:
        return exact
    if isinstance(value, bool | np.bool_):
        return ColumnKind.BOOL
    if isinstance(value, numbers.Integral):
        number = int(value)
        return ColumnKind.INT if _INT64_MIN <= number <= _INT64_MAX else ColumnKind.JSON
    if isinstance(value, numbers.Real):
        return ColumnKind.FLOAT
    if isinstance(value, str):
        return ColumnKind.STRING
    if isinstance(value, dt.datetime):
        aware = value.tzinfo is not None and value.utcoffset() is not None
        return ColumnKind.TIMESTAMP_UTC if aware else ColumnKind.TIMESTAMP
    if isinstance(value, dt.date):
        return ColumnKind.DATE
    if isinstance(value, list | tuple | np.ndarray):
        return ColumnKind.FLOAT_LIST
    # Mappings, enums, sets and anything else: JSON text (encoding rejects what JSON can't hold).
    return ColumnKind.JSON


def merge_kinds(first: ColumnKind, second: ColumnKind) -> ColumnKind:
    """The kind that holds values of both: ``NULL`` is neutral, ``INT`` widens to ``FLOAT``,
    any other disagreement becomes ``JSON``."""
    if first is second or second is ColumnKind.NULL:
        return first
    if first is ColumnKind.NULL:
        return second
    if {first, second} == {ColumnKind.INT, ColumnKind.FLOAT}:
        return ColumnKind.FLOAT
    return ColumnKind.JSON


def kind_of_values(values: Sequence[object]) -> ColumnKind:
    """The merged kind of a column's values (``NULL`` when all are None or there are none).

    Works per distinct type (the merge is commutative and associative), looking at single
    values only where the kind depends on them: int size, datetime time zone, unknown types.
    """
    kind = ColumnKind.NULL
    for value_type in set(map(type, values)):
        exact = _KIND_OF_EXACT_TYPE.get(value_type)
        if exact is not None:
            kind = merge_kinds(kind, exact)
        elif value_type is int:
            ints = cast("list[int]", [value for value in values if type(value) is int])
            fits = min(ints) >= _INT64_MIN and max(ints) <= _INT64_MAX
            kind = merge_kinds(kind, ColumnKind.INT if fits else ColumnKind.JSON)
        else:
            for value in values:
                if type(value) is value_type:
                    kind = merge_kinds(kind, kind_of_value(value))
        if kind is ColumnKind.JSON:
            break
    return kind


def encode_column(values: Sequence[object], kind: ColumnKind) -> tuple[ColumnKind, Any]:
    """Builds the Arrow array of ``values`` as ``kind``; returns the kind actually used.

    ``FLOAT_LIST`` values whose items are not numbers fall back to ``JSON``. Raises
    ``TypeError`` for values JSON cannot hold.
    """
    if kind is ColumnKind.NULL:
        return kind, pa.nulls(len(values))
    if kind is ColumnKind.JSON:
        return kind, pa.array(
            [None if value is None else dumps_cell(value) for value in values], type=pa.string()
        )
    try:
        return kind, pa.array(values, type=ARROW_TYPES[kind])
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        if kind is not ColumnKind.FLOAT_LIST:
            raise
        return encode_column(values, ColumnKind.JSON)


def kind_of_arrow_type(arrow_type: Any) -> ColumnKind | None:
    """The kind of a column in a file written without kind metadata, if it has one."""
    for kind, known in ARROW_TYPES.items():
        if kind is not ColumnKind.JSON and arrow_type == known:
            return kind
    if pa.types.is_integer(arrow_type):
        return ColumnKind.INT
    if pa.types.is_floating(arrow_type):
        return ColumnKind.FLOAT
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return ColumnKind.STRING
    return None


def python_values(column: Any, kind: ColumnKind) -> list[object]:
    """The Python values of an Arrow column of ``kind`` (JSON text decoded)."""
    values: list[object] = column.to_pylist()
    if kind is ColumnKind.JSON:
        return [None if value is None else loads_cell(str(value)) for value in values]
    return values


def convert_column(column: Any, source: ColumnKind, target: ColumnKind) -> Any:
    """An Arrow column of kind ``source`` re-encoded as ``target`` (a merge of the two)."""
    if source is target:
        return column
    if source is ColumnKind.NULL:
        return pa.nulls(len(column), type=ARROW_TYPES[target])
    if (source, target) == (ColumnKind.INT, ColumnKind.FLOAT):
        return column.cast(pa.float64())
    values = python_values(column, source)
    _, array = encode_column(values, target)
    return array
