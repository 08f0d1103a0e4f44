"""Loading a dataset: manifest order, sorting by _row_index, ignoring strays, loud failures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from sluiceway.errors import StorageError
from sluiceway.storage.column_kinds import ColumnType
from sluiceway.storage.column_types import arrow_type_of_schema
from sluiceway.storage.dataset import load_dataset
from sluiceway.storage.manifest import DroppedRowRecord, ManifestWriter, RunStatus
from sluiceway.storage.parquet_writer import RowGroupWriter


def _dataset(
    directory: Path,
    groups: Sequence[tuple[int, list[dict[str, Any]], list[int]]],
    *,
    columns: Sequence[str] = ("x",),
    column_types: dict[str, ColumnType] | None = None,
) -> ManifestWriter:
    writer = RowGroupWriter(directory, column_order=columns, column_types=column_types)
    manifest = ManifestWriter(
        directory,
        run_id="r",
        config_fingerprint="f",
        seed=3,
        num_records=10,
        buffer_size=4,
        columns=columns,
    )
    for row_group, rows, indices in groups:
        written = writer.write_blocking(row_group, rows, indices)
        manifest.record_row_group(row_group=row_group, written=written, rows_dropped=0)
    manifest.write_blocking()
    return manifest


def test_rows_come_back_sorted_by_row_index(tmp_path: Path) -> None:
    _dataset(
        tmp_path,
        [
            (1, [{"x": "f"}, {"x": "e"}], [5, 4]),
            (0, [{"x": "c"}, {"x": "a"}, {"x": "b"}], [2, 0, 1]),
        ],
    )

    frame = load_dataset(tmp_path)

    assert frame["_row_index"].tolist() == [0, 1, 2, 4, 5]
    assert frame["x"].tolist() == ["a", "b", "c", "e", "f"]
    assert frame.index.tolist() == [0, 1, 2, 3, 4]


def test_stray_temp_files_and_unlisted_parts_are_ignored(tmp_path: Path) -> None:
    _dataset(tmp_path, [(0, [{"x": "kept"}], [0])])
    (tmp_path / "part-000001.parquet.3f2a9c.tmp").write_bytes(b"half a parquet file")
    RowGroupWriter(tmp_path, column_order=["x"]).write_blocking(1, [{"x": "not checkpointed"}], [1])

    frame = load_dataset(tmp_path)

    assert frame["x"].tolist() == ["kept"]


def test_truncated_parquet_is_a_storage_error_naming_file_and_fix(tmp_path: Path) -> None:
    _dataset(tmp_path, [(0, [{"x": "a"}, {"x": "b"}], [0, 1])])
    part = tmp_path / "part-000000.parquet"
    part.write_bytes(part.read_bytes()[:-20])

    with pytest.raises(StorageError) as caught:
        load_dataset(tmp_path)

    message = str(caught.value)
    assert str(part) in message
    assert "truncated or damaged" in message
    assert "--overwrite" in message


def test_missing_listed_file_is_a_storage_error(tmp_path: Path) -> None:
    _dataset(tmp_path, [(0, [{"x": "a"}], [0])])
    (tmp_path / "part-000000.parquet").unlink()

    with pytest.raises(StorageError, match="listed in the manifest but missing"):
        load_dataset(tmp_path)


def test_row_count_disagreeing_with_the_manifest_is_a_storage_error(tmp_path: Path) -> None:
    _dataset(tmp_path, [(0, [{"x": "a"}], [0])])
    RowGroupWriter(tmp_path, column_order=["x"]).write_blocking(0, [{"x": "a"}, {"x": "b"}], [0, 1])

    with pytest.raises(StorageError, match="holds 2 rows but the manifest says 1"):
        load_dataset(tmp_path)


def test_missing_manifest_is_a_storage_error(tmp_path: Path) -> None:
    RowGroupWriter(tmp_path, column_order=["x"]).write_blocking(0, [{"x": "a"}], [0])

    with pytest.raises(StorageError, match=r"no manifest\.json"):
        load_dataset(tmp_path)


def test_manifest_file_names_must_stay_in_the_directory(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path, [(0, [{"x": "a"}], [0])])
    text = manifest.manifest.to_json().replace('"part-000000.parquet"', '"../elsewhere.parquet"')
    (tmp_path / "manifest.json").write_text(text)

    with pytest.raises(StorageError, match="not a plain file name"):
        load_dataset(tmp_path)


async def test_a_run_with_no_rows_loads_as_an_empty_frame(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path, [], columns=("x", "y"))
    await manifest.checkpoint(
        row_group=0,
        written=None,
        dropped=[DroppedRowRecord(row_index=0, column="x", reason="failed")],
    )
    await manifest.finish(RunStatus.COMPLETED)

    frame = load_dataset(tmp_path)

    assert list(frame.columns) == ["_row_index", "x", "y"]
    assert len(frame) == 0
    assert str(frame["_row_index"].dtype) == "int64"


class Facts(BaseModel):
    sentiment: str
    score: int = 3
    features: list[str] = []
    note: str | None = None


def _facts_dataset(directory: Path, rows: list[dict[str, Any]]) -> None:
    arrow_type = arrow_type_of_schema(Facts.model_json_schema())
    _dataset(
        directory,
        [(0, rows, list(range(len(rows))))],
        column_types={"x": ColumnType.nested(arrow_type)},
    )


def test_output_models_give_typed_rows_with_the_model_defaults(tmp_path: Path) -> None:
    _facts_dataset(
        tmp_path,
        [
            {"x": {"sentiment": "mixed", "features": ["grip"], "note": None}},
            {"x": None},  # a skipped row
            {"x": {"sentiment": "warm", "score": 5}},  # absent keys: stored as nulls
        ],
    )

    frame = load_dataset(tmp_path, output_models={"x": Facts})

    assert frame["x"].tolist() == [
        Facts(sentiment="mixed", features=["grip"]),
        None,
        Facts(sentiment="warm", score=5),
    ]
    plain = load_dataset(tmp_path)["x"].tolist()
    assert plain[2] == {"sentiment": "warm", "score": 5, "features": None, "note": None}


def test_a_value_the_model_rejects_names_the_column_and_row(tmp_path: Path) -> None:
    class Strict(BaseModel):
        sentiment: int

    _facts_dataset(tmp_path, [{"x": {"sentiment": "warm"}}])

    with pytest.raises(StorageError) as caught:
        load_dataset(tmp_path, output_models={"x": Strict})

    message = str(caught.value)
    assert "column 'x', row 0" in message
    assert "Strict" in message
    assert "sentiment" in message


def test_output_models_for_an_unknown_column_are_refused(tmp_path: Path) -> None:
    _dataset(tmp_path, [(0, [{"x": "a"}], [0])])

    with pytest.raises(StorageError, match=r"output_models names \['facts'\]"):
        load_dataset(tmp_path, output_models={"facts": Facts})
