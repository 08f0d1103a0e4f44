"""How cell values map to Parquet columns: the kind of each value, the Arrow type of each kind,
the rule that merges kinds (within a row group and across files), and the conversions between
kinds that let every file of a dataset load into one table. See ``parquet_writer`` for the rule.

A ``ColumnType`` is a kind with its Arrow type: the kind's own, or for ``NESTED`` a struct or list
type the config declares (``column_types``). Nested values are stored as that type only when every
value of the file conforms to it exactly; otherwise the file keeps them as JSON text."""

from __future__ import annotations

import datetime as dt
import enum
import functools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pyarrow as pa

from sluiceway.errors import EngineError
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
    NESTED = "nested"  # a struct or list type declared by the config (``ColumnType.arrow_type``)


# The Arrow type of every kind but NESTED, whose type each column declares.
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


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnType:
    """A column's kind and Arrow type (``arrow_type`` is a ``pyarrow.DataType``)."""

    kind: ColumnKind
    arrow_type: Any

    @classmethod
    def of(cls, kind: ColumnKind) -> ColumnType:
        """The type of a plain kind (not ``NESTED``)."""
        return cls(kind=kind, arrow_type=ARROW_TYPES[kind])

    @classmethod
    def nested(cls, arrow_type: Any) -> ColumnType:
        """A declared struct or list type."""
        return cls(kind=ColumnKind.NESTED, arrow_type=arrow_type)


def merge_types(first: ColumnType, second: ColumnType) -> ColumnType:
    """``merge_kinds`` for types: a nested type merges only with itself and with ``NULL``."""
    if first.kind is ColumnKind.NESTED or second.kind is ColumnKind.NESTED:
        if first == second or second.kind is ColumnKind.NULL:
            return first
        if first.kind is ColumnKind.NULL:
            return second
        return ColumnType.of(ColumnKind.JSON)
    return ColumnType.of(merge_kinds(first.kind, second.kind))


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
    if kind is ColumnKind.NESTED:
        raise EngineError("nested values are encoded with encode_nested and their declared type")
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


def encode_nested(values: Sequence[object], arrow_type: Any) -> Any | None:
    """The Arrow array of ``values`` as the declared ``arrow_type``, or None when a value does not
    conform to it exactly (pyarrow alone would truncate 2.5 to 2 in an int64 field, say).

    Keys a struct does not declare are left out; a value is otherwise stored whole.
    """
    conforms = _checker(arrow_type)
    if not all(value is None or conforms(value) for value in values):
        return None
    try:
        return pa.array(values, type=arrow_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None


_Check = Callable[[Any], bool]


@functools.lru_cache(maxsize=64)
def _checker(arrow_type: Any) -> _Check:
    """A function telling whether a value (not None) is stored exactly as ``arrow_type``; struct
    fields marked not nullable must be present and not None. Built once per type."""
    if pa.types.is_struct(arrow_type):
        fields = tuple((f.name, f.nullable, _checker(f.type)) for f in arrow_type)

        def check_struct(value: Any) -> bool:
            if not isinstance(value, Mapping):
                return False
            for name, nullable, check in fields:
                item = value.get(name)
                if item is None:
                    if not nullable:
                        return False
                elif not check(item):
                    return False
            return True

        return check_struct
    if pa.types.is_list(arrow_type):
        check_item = _checker(arrow_type.value_type)
        return lambda value: (
            isinstance(value, list | tuple)
            and all(item is None or check_item(item) for item in value)
        )
    if pa.types.is_boolean(arrow_type):
        return lambda value: type(value) is bool
    if pa.types.is_int64(arrow_type):
        return _is_int64
    if pa.types.is_float64(arrow_type):
        return _is_double
    if pa.types.is_string(arrow_type):
        return lambda value: isinstance(value, str)
    return lambda value: False


def _is_int64(value: Any) -> bool:
    if type(value) is float and value.is_integer():
        value = int(value)
    return isinstance(value, int) and type(value) is not bool and _INT64_MIN <= value <= _INT64_MAX


def _is_double(value: Any) -> bool:
    if type(value) is float:
        return math.isfinite(value)
    return isinstance(value, int) and type(value) is not bool


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
    """The Python values of an Arrow column of ``kind`` (JSON text decoded, structs as dicts
    and lists as lists)."""
    values: list[object] = column.to_pylist()
    if kind is ColumnKind.JSON:
        return [None if value is None else loads_cell(str(value)) for value in values]
    return values


def convert_column(column: Any, source: ColumnType, target: ColumnType) -> Any:
    """An Arrow column of type ``source`` re-encoded as ``target`` (a merge of the two); a plain
    kind's column is returned as it is, whatever Arrow width it has (the caller casts)."""
    if source == target or (source.kind is target.kind and target.kind is not ColumnKind.NESTED):
        return column
    if source.kind is ColumnKind.NULL:
        return pa.nulls(len(column), type=target.arrow_type)
    if (source.kind, target.kind) == (ColumnKind.INT, ColumnKind.FLOAT):
        return column.cast(pa.float64())
    # merge_types never turns another type into a nested one: the target is a plain kind here.
    _, array = encode_column(python_values(column, source.kind), target.kind)
    return array
