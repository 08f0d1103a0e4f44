"""The run manifest: JSON round trip, deterministic text, bounded dropped rows, ordered writes,
and damaged files reported as StorageError."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import threading
from pathlib import Path

import pytest

from sluiceway.errors import EngineError, StorageError
from sluiceway.storage.column_kinds import ColumnKind
from sluiceway.storage.dataset import read_manifest
from sluiceway.storage.manifest import (
    DroppedRowRecord,
    ManifestWriter,
    RowGroupRecord,
    RowGroupStatus,
    RunManifest,
    RunStatus,
)
from sluiceway.storage.parquet_writer import WrittenFile

START = dt.datetime(2025, 3, 1, 9, 30, tzinfo=dt.UTC)


class FakeWallClock:
    """Returns the given times in order, one per call."""

    def __init__(self, *times: dt.datetime) -> None:
        self._times = list(times)

    def __call__(self) -> dt.datetime:
        return self._times.pop(0)


def _written(directory: Path, row_group: int, rows: int) -> WrittenFile:
    return WrittenFile(
        path=directory / f"part-{row_group:06d}.parquet",
        row_group=row_group,
        rows=rows,
        bytes=100,
        column_kinds={"a": ColumnKind.INT},
    )


def _writer(directory: Path, **overrides: object) -> ManifestWriter:
    return ManifestWriter(
        directory,
        run_id="run-42",
        config_fingerprint="sha256:abc",
        seed=11,
        num_records=30,
        buffer_size=10,
        columns=["a", "b"],
        wall_clock=FakeWallClock(START, START + dt.timedelta(minutes=5)),
        **overrides,  # type: ignore[arg-type]
    )


def _sample_manifest() -> RunManifest:
    return RunManifest(
        run_id="r",
        config_fingerprint="f",
        seed=1,
        num_records=20,
        buffer_size=10,
        started_at=START,
        finished_at=START + dt.timedelta(seconds=3),
        status=RunStatus.COMPLETED,
        row_groups=(
            RowGroupRecord(
                index=0,
                file="part-000000.parquet",
                rows_written=9,
                rows_dropped=1,
                status=RowGroupStatus.WRITTEN,
            ),
            RowGroupRecord(
                index=1, file=None, rows_written=0, rows_dropped=10, status=RowGroupStatus.EMPTY
            ),
        ),
        rows_written=9,
        rows_dropped=11,
        dropped_rows=(DroppedRowRecord(row_index=4, column="b", reason="schema mismatch"),),
        dropped_rows_omitted=10,
        columns=("a", "b"),
        files=("part-000000.parquet",),
    )


def test_json_round_trip() -> None:
    manifest = _sample_manifest()

    assert RunManifest.from_json(manifest.to_json()) == manifest


def test_json_is_deterministic_with_sorted_keys() -> None:
    text = _sample_manifest().to_json()

    data = json.loads(text)
    assert text == _sample_manifest().to_json()
    assert list(data) == sorted(data)
    assert list(data["row_groups"][0]) == sorted(data["row_groups"][0])
    assert data["status"] == "completed"
    assert data["started_at"] == "2025-03-01T09:30:00+00:00"
    assert text.endswith("}\n")


async def test_checkpoints_and_finish_are_persisted(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    await writer.write()
    assert read_manifest(tmp_path).status is RunStatus.RUNNING

    await writer.checkpoint(
        row_group=1,
        written=_written(tmp_path, 1, rows=8),
        dropped=[
            DroppedRowRecord(row_index=13, column="b", reason="timeout"),
            DroppedRowRecord(row_index=13, column="a", reason="timeout"),
            DroppedRowRecord(row_index=17, column="b", reason="bad json"),
        ],
    )
    await writer.checkpoint(row_group=0, written=_written(tmp_path, 0, rows=10))
    await writer.checkpoint(
        row_group=2,
        written=None,
        rows_dropped=10,
        dropped=[DroppedRowRecord(row_index=20, column="a", reason="auth")],
    )
    final = await writer.finish(RunStatus.COMPLETED)

    on_disk = read_manifest(tmp_path)
    assert on_disk == final == writer.manifest
    assert [group.index for group in on_disk.row_groups] == [0, 1, 2]
    assert on_disk.files == ("part-000000.parquet", "part-000001.parquet")
    assert [group.rows_dropped for group in on_disk.row_groups] == [0, 2, 10]
    assert on_disk.row_groups[2].status is RowGroupStatus.EMPTY
    assert on_disk.rows_written == 18
    assert on_disk.rows_dropped == 12
    assert [(row.row_index, row.column) for row in on_disk.dropped_rows] == [
        (13, "a"),
        (13, "b"),
        (17, "b"),
        (20, "a"),
    ]
    assert on_disk.status is RunStatus.COMPLETED
    assert on_disk.started_at == START
    assert on_disk.finished_at == START + dt.timedelta(minutes=5)
    assert on_disk.columns == ("a", "b")
    assert writer.statistics().written_version == writer.statistics().version


def test_column_kinds_are_merged_over_the_files_and_survive_a_reload(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    assert writer.manifest.column_kinds == {}
    first = WrittenFile(
        path=tmp_path / "part-000000.parquet",
        row_group=0,
        rows=2,
        bytes=100,
        column_kinds={"a": ColumnKind.INT, "b": ColumnKind.NESTED},
    )
    second = WrittenFile(
        path=tmp_path / "part-000003.parquet",
        row_group=3,
        rows=2,
        bytes=100,
        column_kinds={"a": ColumnKind.FLOAT, "b": ColumnKind.NESTED},
    )
    writer.record_row_group(row_group=0, written=first, rows_dropped=0)
    writer.record_row_group(row_group=1, written=None, rows_dropped=2)
    writer.record_row_group(row_group=2, written=_written(tmp_path, 2, 1), rows_dropped=0)
    writer.record_row_group(row_group=3, written=second, rows_dropped=0)
    writer.write_blocking()

    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["column_kinds"] == {"a": "float", "b": "nested"}
    assert read_manifest(tmp_path).column_kinds == {"a": ColumnKind.FLOAT, "b": ColumnKind.NESTED}


def test_a_manifest_without_column_kinds_still_reads(tmp_path: Path) -> None:
    data = _sample_manifest().to_dict()
    del data["column_kinds"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(tmp_path).column_kinds == {}


def test_dropped_rows_keep_the_lowest_indices_and_count_the_rest(tmp_path: Path) -> None:
    writer = _writer(tmp_path, dropped_rows_kept=3)

    writer.record_dropped_rows(
        DroppedRowRecord(row_index=index, column="a", reason="x") for index in (9, 7, 5)
    )
    writer.record_dropped_rows(
        DroppedRowRecord(row_index=index, column="a", reason="x") for index in (8, 1)
    )

    manifest = writer.manifest
    assert [row.row_index for row in manifest.dropped_rows] == [1, 5, 7]
    assert manifest.dropped_rows_omitted == 2


def test_a_row_group_is_recorded_once(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    writer.record_row_group(row_group=0, written=_written(tmp_path, 0, rows=10), rows_dropped=0)

    with pytest.raises(EngineError, match="already in the manifest"):
        writer.record_row_group(row_group=0, written=None, rows_dropped=10)
    with pytest.raises(EngineError, match="file of row group 3"):
        writer.record_row_group(row_group=1, written=_written(tmp_path, 3, rows=1), rows_dropped=0)


async def test_finish_needs_a_final_status(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="final status"):
        await _writer(tmp_path).finish(RunStatus.RUNNING)


async def test_concurrent_writes_never_leave_an_older_manifest(tmp_path: Path) -> None:
    writer = ManifestWriter(
        tmp_path,
        run_id="r",
        config_fingerprint="f",
        seed=0,
        num_records=100,
        buffer_size=5,
        columns=["a"],
    )
    pending = []
    for row_group in range(20):
        writer.record_row_group(
            row_group=row_group, written=_written(tmp_path, row_group, rows=5), rows_dropped=0
        )
        pending.append(asyncio.create_task(writer.write()))
        await asyncio.sleep(0)  # let this write take its snapshot before the next change

    await asyncio.gather(*pending)

    assert read_manifest(tmp_path) == writer.manifest
    assert len(read_manifest(tmp_path).row_groups) == 20


async def test_continuing_a_manifest_keeps_its_row_groups(tmp_path: Path) -> None:
    finished = _sample_manifest()

    writer = ManifestWriter.continuing(tmp_path, finished)
    await writer.checkpoint(row_group=2, written=_written(tmp_path, 2, rows=3))

    manifest = read_manifest(tmp_path)
    assert manifest.status is RunStatus.RUNNING
    assert manifest.finished_at is None
    assert [group.index for group in manifest.row_groups] == [0, 1, 2]
    assert manifest.rows_written == 12


def test_missing_manifest_is_a_storage_error_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"no manifest\.json") as caught:
        read_manifest(tmp_path)

    assert "sluiceway run" in str(caught.value)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda data: data.pop("seed"), "'seed': missing"),
        (lambda data: data.update(seed="eleven"), "expected int"),
        (lambda data: data.update(status="paused"), "'paused' is not one of"),
        (lambda data: data["row_groups"][0].update(index=True), "'row_groups\\[0\\].index'"),
        (lambda data: data.update(format_version=99), "upgrade Sluiceway"),
        (lambda data: data.update(started_at="yesterday"), "ISO 8601"),
        (
            lambda data: data.update(column_kinds={"a": "blob"}),
            "'column_kinds.a': 'blob' is not a column kind",
        ),
    ],
)
def test_damaged_manifest_names_the_field(tmp_path: Path, mutate: object, expected: str) -> None:
    data = json.loads(_sample_manifest().to_json())
    mutate(data)  # type: ignore[operator]
    (tmp_path / "manifest.json").write_text(json.dumps(data))

    with pytest.raises(StorageError, match=expected) as caught:
        read_manifest(tmp_path)

    assert str(tmp_path / "manifest.json") in str(caught.value)


def test_manifest_that_is_not_json_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"run_id": "r", ')

    with pytest.raises(StorageError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_checkpoints_from_worker_threads_lose_nothing(tmp_path: Path) -> None:
    """Row groups checkpointed from several threads at once (as the sink does) all end up in the
    manifest and in its file, each once, with every dropped row and the summed counts. A tiny
    switch interval makes the threads interleave inside each update."""
    groups = 64
    writer = ManifestWriter(
        tmp_path,
        run_id="run-42",
        config_fingerprint="sha256:abc",
        seed=11,
        num_records=groups * 10,
        buffer_size=10,
        columns=["a", "b"],
    )
    barrier = threading.Barrier(4)

    def checkpoint_every_fourth(first: int) -> None:
        barrier.wait()
        for group in range(first, groups, 4):
            writer.checkpoint_blocking(
                row_group=group,
                written=_written(tmp_path, group, rows=9),
                dropped=[DroppedRowRecord(row_index=group * 10, column="a", reason="timeout")],
            )

    threads = [threading.Thread(target=checkpoint_every_fourth, args=(i,)) for i in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)

    final = writer.manifest
    assert [group.index for group in final.row_groups] == list(range(groups))
    assert final.rows_written == groups * 9
    assert final.rows_dropped == groups
    assert sorted(row.row_index for row in final.dropped_rows) == [g * 10 for g in range(groups)]
    stats = writer.statistics()
    assert stats.version == stats.written_version == 2 * groups  # a group and its drops each
    assert read_manifest(tmp_path) == final
