"""Row groups -> Parquet -> DataFrame: mixed types, one schema rule across files, atomicity,
failures as StorageError, and a property test of the round trip."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import tempfile
import threading
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluiceway.errors import EngineError, StorageError
from sluiceway.storage.column_kinds import ColumnKind, ColumnType
from sluiceway.storage.dataset import load_dataset
from sluiceway.storage.manifest import ManifestWriter
from sluiceway.storage.parquet_writer import (
    KINDS_METADATA_KEY,
    RowGroupWriter,
    row_group_file_name,
)

COLUMNS = ["name", "age", "score", "profile", "embedding", "born", "active"]


def _rows() -> list[dict[str, Any]]:
    return [
        {
            "name": "Ada",
            "age": 36,
            "score": 0.5,
            "profile": {"city": "London", "tags": ["math"]},
            "embedding": [0.1, 0.2, 0.3],
            "born": dt.datetime(1815, 12, 10, 8, 30),
            "active": True,
            "__internal_state": object(),  # not an output column: never written
        },
        {
            "name": None,
            "age": None,
            "score": None,
            "profile": None,
            "embedding": None,
            "born": None,
            "active": None,
        },
        {
            "name": "Grace",
            "age": 85,
            "score": 2,  # an int among floats widens to float
            "profile": {"rank": "Rear Admiral", "nested": {"ships": None}},
            "embedding": [1, 2.5],
            "born": dt.datetime(1906, 12, 9),
            "active": False,
        },
    ]


def _file_names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def _normalize(value: object) -> object:
    """A loaded cell as plain Python: arrays to lists, pandas missing values to None."""
    if isinstance(value, np.ndarray):
        return [float(item) for item in value]
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, float | np.floating) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, object]]:
    return [
        {str(column): _normalize(value) for column, value in row.items()}
        for row in frame.to_dict(orient="records")
    ]


async def _write_dataset(
    directory: Path,
    groups: Sequence[tuple[int, Sequence[Mapping[str, Any]], Sequence[int]]],
    *,
    columns: Sequence[str] = COLUMNS,
    column_types: Mapping[str, ColumnType] | None = None,
) -> None:
    writer = RowGroupWriter(directory, column_order=columns, column_types=column_types)
    manifest = ManifestWriter(
        directory,
        run_id="run-1",
        config_fingerprint="fp",
        seed=7,
        num_records=sum(len(rows) for _, rows, _ in groups),
        buffer_size=10,
        columns=columns,
    )
    for row_group, rows, indices in groups:
        written = await writer.write(row_group, rows, indices)
        await manifest.checkpoint(row_group=row_group, written=written)


async def test_round_trip_of_mixed_types(tmp_path: Path) -> None:
    rows = _rows()
    await _write_dataset(tmp_path, [(0, rows, [0, 1, 2])])

    frame = load_dataset(tmp_path)

    assert list(frame.columns) == ["_row_index", *COLUMNS]
    assert frame["_row_index"].tolist() == [0, 1, 2]
    assert frame["born"].dtype.kind == "M"
    assert _records(frame) == [
        {"_row_index": 0, **{column: rows[0][column] for column in COLUMNS}},
        {"_row_index": 1, **dict.fromkeys(COLUMNS)},
        {
            "_row_index": 2,
            **{column: rows[2][column] for column in COLUMNS},
            "score": 2.0,
            "embedding": [1.0, 2.5],
        },
    ]


async def test_file_layout_row_index_first_and_kinds_in_metadata(tmp_path: Path) -> None:
    writer = RowGroupWriter(tmp_path, column_order=COLUMNS)

    written = await writer.write(3, _rows(), [30, 31, 32])

    assert written.path == tmp_path / "part-000003.parquet"
    assert written.rows == 3
    assert written.bytes == written.path.stat().st_size
    table = pq.read_table(written.path)
    assert table.column_names == ["_row_index", *COLUMNS]
    assert str(table.schema.field("_row_index").type) == "int64"
    assert str(table.schema.field("embedding").type) == "list<element: double>"
    assert str(table.schema.field("profile").type) == "string"
    recorded = json.loads(table.schema.metadata[KINDS_METADATA_KEY])
    assert recorded["profile"] == "json"
    assert recorded["score"] == "float"
    assert dict(written.column_kinds) == recorded
    assert _file_names(tmp_path) == ["part-000003.parquet"]


async def test_row_groups_with_differently_shaped_dicts_load_into_one_frame(
    tmp_path: Path,
) -> None:
    columns = ["judge", "count"]
    first: list[dict[str, Any]] = [
        {"judge": {"score": 4, "reason": "ok"}, "count": 1},
        {"judge": None, "count": 2},
    ]
    second: list[dict[str, Any]] = [
        {"judge": {"score": None, "flags": ["a", "b"], "extra": {"x": 1.5}}, "count": 2.5},
        {"judge": {}, "count": None},
    ]
    third: list[dict[str, Any]] = [{"judge": None, "count": None}]
    await _write_dataset(
        tmp_path, [(0, first, [0, 1]), (1, second, [2, 3]), (2, third, [4])], columns=columns
    )

    frame = load_dataset(tmp_path)

    assert frame["judge"].tolist() == [
        {"score": 4, "reason": "ok"},
        None,
        {"score": None, "flags": ["a", "b"], "extra": {"x": 1.5}},
        {},
        None,
    ]
    assert [_normalize(value) for value in frame["count"]] == [1.0, 2.0, 2.5, None, None]


async def test_conflicting_kinds_across_files_load_as_python_objects(tmp_path: Path) -> None:
    columns = ["answer"]
    await _write_dataset(
        tmp_path,
        [(0, [{"answer": 42}], [0]), (1, [{"answer": "forty-two"}], [1]), (2, [{}], [2])],
        columns=columns,
    )

    frame = load_dataset(tmp_path)

    assert [_normalize(value) for value in frame["answer"]] == [42, "forty-two", None]


async def test_declared_kinds_give_typed_nulls_in_every_file(tmp_path: Path) -> None:
    writer = RowGroupWriter(
        tmp_path,
        column_order=["embedding"],
        column_types={"embedding": ColumnType.of(ColumnKind.FLOAT_LIST)},
    )

    empty = await writer.write(0, [{"embedding": None}], [0])
    full = await writer.write(1, [{"embedding": [0.5]}], [1])

    assert (
        pq.read_schema(empty.path).field("embedding").type
        == pq.read_schema(full.path).field("embedding").type
    )
    assert empty.column_kinds["embedding"] is ColumnKind.FLOAT_LIST


_JUDGE = pa.struct(
    [
        pa.field(
            "clarity",
            pa.struct(
                [
                    pa.field("score", pa.int64(), nullable=False),
                    pa.field("reasoning", pa.string(), nullable=False),
                ]
            ),
            nullable=False,
        )
    ]
)


async def test_a_declared_nested_type_is_the_schema_of_every_file(tmp_path: Path) -> None:
    columns = ["judge", "label"]
    types = {
        "judge": ColumnType.nested(_JUDGE),
        "label": ColumnType.of(ColumnKind.STRING),
    }
    answer = {"clarity": {"score": 4, "reasoning": "plain words"}}
    await _write_dataset(
        tmp_path,
        [
            (0, [{"judge": answer, "label": "ok"}], [0]),
            (1, [{"judge": None, "label": None}], [1]),  # a skipped row: typed nulls
        ],
        columns=columns,
        column_types=types,
    )

    schemas = [pq.read_schema(tmp_path / row_group_file_name(i)) for i in (0, 1)]
    assert schemas[0].remove_metadata() == schemas[1].remove_metadata()
    assert schemas[0].field("judge").type == _JUDGE
    assert schemas[0].field("label").type == pa.string()
    assert json.loads(schemas[1].metadata[KINDS_METADATA_KEY])["judge"] == "nested"
    table = pq.read_table(tmp_path / row_group_file_name(0))
    assert pc.struct_field(table.column("judge"), [0, 0]).to_pylist() == [4]
    frame = pd.read_parquet(tmp_path / row_group_file_name(0))
    assert frame["judge"][0]["clarity"]["reasoning"] == "plain words"
    assert load_dataset(tmp_path)["judge"].tolist() == [answer, None]


async def test_a_file_whose_value_does_not_fit_the_nested_type_keeps_json_text(
    tmp_path: Path,
) -> None:
    types = {"judge": ColumnType.nested(_JUDGE)}
    fits = {"clarity": {"score": 4, "reasoning": "r"}}
    too_big = {"clarity": {"score": 2**64, "reasoning": "r"}}  # beyond int64: stored exactly
    writer = RowGroupWriter(tmp_path, column_order=["judge"], column_types=types)

    nested = writer.write_blocking(0, [{"judge": fits}], [0])
    fallback = writer.write_blocking(1, [{"judge": too_big}], [1])

    assert nested.column_kinds["judge"] is ColumnKind.NESTED
    assert fallback.column_kinds["judge"] is ColumnKind.JSON
    assert pq.read_schema(fallback.path).field("judge").type == pa.string()
    manifest = ManifestWriter(
        tmp_path,
        run_id="r",
        config_fingerprint="f",
        seed=1,
        num_records=2,
        buffer_size=1,
        columns=["judge"],
    )
    for written in (nested, fallback):
        manifest.record_row_group(row_group=written.row_group, written=written, rows_dropped=0)
    manifest.write_blocking()
    assert load_dataset(tmp_path)["judge"].tolist() == [fits, too_big]
    assert manifest.manifest.column_kinds == {"judge": ColumnKind.JSON}


async def test_large_ints_and_aware_datetimes(tmp_path: Path) -> None:
    columns = ["big", "at"]
    berlin = dt.timezone(dt.timedelta(hours=1))
    rows: list[dict[str, Any]] = [
        {"big": 2**64, "at": dt.datetime(2024, 5, 1, 12, tzinfo=berlin)},
        {"big": -3, "at": None},
    ]
    await _write_dataset(tmp_path, [(0, rows, [0, 1])], columns=columns)

    frame = load_dataset(tmp_path)

    assert frame["big"].tolist() == [2**64, -3]
    assert frame["at"].iloc[0] == dt.datetime(2024, 5, 1, 11, tzinfo=dt.UTC)


async def test_unsupported_value_is_a_storage_error_naming_column_and_row(
    tmp_path: Path,
) -> None:
    writer = RowGroupWriter(tmp_path, column_order=["price"])

    with pytest.raises(StorageError) as caught:
        await writer.write(0, [{"price": 1.0}, {"price": {"amount": Decimal("9.99")}}], [5, 6])

    message = str(caught.value)
    assert "'price'" in message
    assert "row 6" in message
    assert "part-000000.parquet" in message
    assert _file_names(tmp_path) == []


async def test_unwritable_directory_is_a_storage_error_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    writer = RowGroupWriter(blocker / "out", column_order=COLUMNS)

    with pytest.raises(StorageError) as caught:
        await writer.write(0, _rows(), [0, 1, 2])

    assert str(blocker / "out" / row_group_file_name(0)) in str(caught.value)


async def test_rewriting_a_row_group_replaces_the_file_atomically(tmp_path: Path) -> None:
    writer = RowGroupWriter(tmp_path, column_order=["x"])
    await writer.write(0, [{"x": 1}], [0])

    await writer.write(0, [{"x": 2}, {"x": 3}], [0, 1])

    assert pq.read_table(tmp_path / "part-000000.parquet").column("x").to_pylist() == [2, 3]
    assert _file_names(tmp_path) == ["part-000000.parquet"]


def test_writer_refuses_bad_column_orders_and_mismatched_indices(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="reserved"):
        RowGroupWriter(tmp_path, column_order=["_row_index"])
    with pytest.raises(EngineError, match="more than once"):
        RowGroupWriter(tmp_path, column_order=["a", "a"])
    with pytest.raises(EngineError, match="not output columns"):
        RowGroupWriter(
            tmp_path, column_order=["a"], column_types={"b": ColumnType.of(ColumnKind.INT)}
        )
    writer = RowGroupWriter(tmp_path, column_order=["a"])
    with pytest.raises(EngineError, match="row indices"):
        writer.write_blocking(0, [{"a": 1}], [0, 1])


# --- property: whatever generators return in a column, the dataset loads it back ---------

_FINITE = st.floats(allow_nan=False, allow_infinity=False)
_INT53 = st.integers(min_value=-(2**53), max_value=2**53)
_JSON_LEAF = st.none() | st.booleans() | _INT53 | _FINITE | st.text(max_size=8)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_FAMILIES = {
    "bool": st.booleans(),
    "int": _INT53,
    "float": _FINITE,
    "number": _INT53 | _FINITE,
    "text": st.text(max_size=10),
    "datetime": st.datetimes(),
    "dict": st.dictionaries(st.text(max_size=4), _JSON, max_size=4),
    "embedding": st.lists(_FINITE, max_size=4),
    "mixed": st.text(max_size=4)
    | _INT53
    | st.booleans()
    | st.dictionaries(st.text(max_size=3), _JSON, max_size=2),
}


@st.composite
def _datasets(draw: st.DrawFn) -> tuple[list[str], list[list[dict[str, Any]]]]:
    families = draw(st.lists(st.sampled_from(sorted(_FAMILIES)), min_size=1, max_size=4))
    columns = [f"c{position}_{family}" for position, family in enumerate(families)]
    groups = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        size = draw(st.integers(min_value=0, max_value=4))
        groups.append(
            [
                {
                    column: draw(st.none() | _FAMILIES[family])
                    for column, family in zip(columns, families, strict=True)
                }
                for _ in range(size)
            ]
        )
    return columns, groups


def _expected(value: object) -> object:
    if isinstance(value, list) and all(isinstance(item, float) for item in value):
        return [float(item) for item in value]
    return value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_datasets())
def test_any_column_values_round_trip(
    dataset: tuple[list[str], list[list[dict[str, Any]]]],
) -> None:
    columns, groups = dataset
    indexed = []
    next_index = 0
    for row_group, rows in enumerate(groups):
        indexed.append((row_group, rows, list(range(next_index, next_index + len(rows)))))
        next_index += len(rows)
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        # Write the groups in reverse to check that loading orders rows by _row_index.
        asyncio.run(_write_dataset(directory, indexed[::-1], columns=columns))
        frame = load_dataset(directory)

    expected = [
        {"_row_index": index, **{column: _expected(row[column]) for column in columns}}
        for _, rows, indices in indexed
        for row, index in zip(rows, indices, strict=True)
    ]
    assert _records(frame) == expected


class _ThreadRecordingZone(dt.tzinfo):
    """A fixed UTC+1 zone that notes which thread asks for its offset: encoding an aware
    datetime calls it, so it shows where a row group is encoded and written."""

    def __init__(self) -> None:
        self.threads: set[int] = set()

    def utcoffset(self, value: dt.datetime | None) -> dt.timedelta:
        self.threads.add(threading.get_ident())
        return dt.timedelta(hours=1)

    def dst(self, value: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, value: dt.datetime | None) -> str:
        return "UTC+01"


async def test_a_row_group_is_encoded_and_written_off_the_event_loop(tmp_path: Path) -> None:
    zone = _ThreadRecordingZone()
    writer = RowGroupWriter(tmp_path, column_order=["at"])
    rows = [{"at": dt.datetime(2025, 3, 1, 9, minute, tzinfo=zone)} for minute in range(3)]
    written = await writer.write(0, rows, [0, 1, 2])
    assert zone.threads, "encoding never asked the zone for its offset"
    assert threading.get_ident() not in zone.threads
    frame = pq.read_table(written.path).to_pandas()
    assert list(frame["at"].dt.hour) == [8, 8, 8]  # 09:xx at UTC+1, stored in UTC
