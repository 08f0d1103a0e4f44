"""The value -> kind rule, the merge of kinds, and conversions between kinds."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from sluiceway.storage.column_kinds import (
    ColumnKind,
    ColumnType,
    convert_column,
    encode_column,
    kind_of_value,
    kind_of_values,
    merge_kinds,
    python_values,
)

K = ColumnKind


def T(kind: ColumnKind) -> ColumnType:
    return ColumnType.of(kind)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, K.NULL),
        (True, K.BOOL),
        (np.bool_(False), K.BOOL),
        (3, K.INT),
        (np.int32(3), K.INT),
        (2**63, K.JSON),  # beyond int64: kept exactly as JSON
        (1.5, K.FLOAT),
        (np.float32(1.5), K.FLOAT),
        ("text", K.STRING),
        (dt.date(2024, 1, 2), K.DATE),
        (dt.datetime(2024, 1, 2, 3, 4), K.TIMESTAMP),
        (dt.datetime(2024, 1, 2, tzinfo=dt.UTC), K.TIMESTAMP_UTC),
        ([0.1, 0.2], K.FLOAT_LIST),
        ((1, 2), K.FLOAT_LIST),
        (np.array([1.0, 2.0]), K.FLOAT_LIST),
        ({"a": 1}, K.JSON),
        (Decimal("1.5"), K.JSON),
    ],
)
def test_kind_of_value(value: object, kind: ColumnKind) -> None:
    assert kind_of_value(value) is kind


@pytest.mark.parametrize(
    ("first", "second", "merged"),
    [
        (K.NULL, K.STRING, K.STRING),
        (K.STRING, K.NULL, K.STRING),
        (K.INT, K.INT, K.INT),
        (K.INT, K.FLOAT, K.FLOAT),
        (K.FLOAT, K.INT, K.FLOAT),
        (K.STRING, K.INT, K.JSON),
        (K.FLOAT_LIST, K.JSON, K.JSON),
        (K.TIMESTAMP, K.TIMESTAMP_UTC, K.JSON),
        (K.BOOL, K.INT, K.JSON),
    ],
)
def test_merge_kinds(first: ColumnKind, second: ColumnKind, merged: ColumnKind) -> None:
    assert merge_kinds(first, second) is merged


def test_kind_of_values_sees_mixed_naive_and_aware_datetimes() -> None:
    values = [dt.datetime(2024, 1, 1), None, dt.datetime(2024, 1, 1, tzinfo=dt.UTC)]

    assert kind_of_values(values) is K.JSON
    assert kind_of_values([None, None]) is K.NULL
    assert kind_of_values([1, 2.5, None]) is K.FLOAT


def test_float_list_of_non_numbers_falls_back_to_json() -> None:
    kind, array = encode_column([[1.0], ["a", "b"]], K.FLOAT_LIST)

    assert kind is K.JSON
    assert array.to_pylist() == ["[1.0]", '["a","b"]']


def test_encode_column_refuses_values_json_cannot_hold() -> None:
    with pytest.raises(TypeError, match="Decimal"):
        encode_column([Decimal("1")], K.JSON)


def test_convert_int_to_float_and_null_to_typed_nulls() -> None:
    ints = pa.array([1, None, 3], type=pa.int64())

    assert convert_column(ints, T(K.INT), T(K.FLOAT)).to_pylist() == [1.0, None, 3.0]
    nulls = convert_column(pa.nulls(2), T(K.NULL), T(K.FLOAT_LIST))
    assert nulls.type == pa.list_(pa.float64())
    assert nulls.to_pylist() == [None, None]


def test_convert_to_json_keeps_python_values() -> None:
    strings = pa.array(["x", None], type=pa.string())
    lists = pa.array([[1.0, 2.0]], type=pa.list_(pa.float64()))

    as_json = convert_column(strings, T(K.STRING), T(K.JSON))
    assert python_values(as_json, K.JSON) == ["x", None]
    assert python_values(convert_column(lists, T(K.FLOAT_LIST), T(K.JSON)), K.JSON) == [[1.0, 2.0]]
