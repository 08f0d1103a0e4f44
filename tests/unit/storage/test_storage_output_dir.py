"""Preparing the output directory: create, refuse to mix datasets, overwrite only our files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluiceway.errors import StorageError
from sluiceway.storage.manifest import RowGroupRecord, RowGroupStatus, RunManifest
from sluiceway.storage.output_dir import OWN_FILE_NAMES, prepare_output_directory
from sluiceway.storage.parquet_writer import RowGroupWriter

# Every fixed name Sluiceway writes into an output directory.
OWN_FIXED = [
    "manifest.json",
    "capacity_plan.json",
    "run_config.json",
    "journal.sqlite",
    "journal.sqlite-wal",
    "events.jsonl",
    "report.md",
    "report-throughput.png",
    "report-models.png",
    "report-queue-depth.png",
]
# A user's files, one per kind of name Sluiceway writes (and a few more): none is ours.
USER_FILES = [
    "notes.txt",
    "data.csv",
    "README.md",
    "manifest.json.bak",
    "my_chart.png",
    "report-old.png",
    "events-old.jsonl",
    "events.jsonl.gz",
    "report-2024.md",
    "mine.parquet",
    "part-000009.parquet",  # our naming scheme, but not written by Sluiceway
    "draft.tmp",
    "capacity_plan.json.0123456789ab.txt",
    "journal.sqlite.bak",
    "other.sqlite",
]


def _manifest(files: list[str]) -> str:
    groups = tuple(
        RowGroupRecord(
            index=i, file=name, rows_written=1, rows_dropped=0, status=RowGroupStatus.WRITTEN
        )
        for i, name in enumerate(files)
    )
    return RunManifest(
        run_id="r1",
        config_fingerprint="f" * 64,
        seed=1,
        num_records=len(files),
        buffer_size=1,
        started_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
        row_groups=groups,
        files=tuple(files),
    ).to_json()


def _write_part(directory: Path, row_group: int) -> Path:
    writer = RowGroupWriter(directory, column_order=["x"])
    return writer.write_blocking(row_group, [{"x": row_group}], [row_group]).path


def _user_parquet(path: Path) -> None:
    pq.write_table(pa.table({"x": [1, 2]}), path)


def _names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_missing_directory_is_created_with_parents(tmp_path: Path) -> None:
    target = tmp_path / "runs" / "today"

    assert prepare_output_directory(target, overwrite=False) == target
    assert target.is_dir()


def test_existing_directory_without_a_dataset_is_used_as_is(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")

    assert prepare_output_directory(tmp_path, overwrite=False) == tmp_path
    assert _names(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize("marker", ["manifest.json", "part-000007.parquet"])
def test_existing_dataset_without_overwrite_is_refused(tmp_path: Path, marker: str) -> None:
    (tmp_path / marker).write_text("{}")

    with pytest.raises(StorageError) as caught:
        prepare_output_directory(tmp_path, overwrite=False)

    message = str(caught.value)
    assert "--overwrite" in message
    assert str(tmp_path) in message
    assert _names(tmp_path) == [marker]


def test_overwrite_deletes_only_files_sluiceway_wrote(tmp_path: Path) -> None:
    for name in OWN_FIXED:
        (tmp_path / name).write_text("x")
    listed = [_write_part(tmp_path, 0).name, _write_part(tmp_path, 1).name]
    (tmp_path / "manifest.json").write_text(_manifest(listed))
    # Written after the manifest's last update (the process died in between): ours.
    unlisted = _write_part(tmp_path, 2).name
    # Temp files of atomic writes that were cut off: ours.
    temps = ["part-000003.parquet.a1b2c3d4e5f6.tmp", "manifest.json.0123456789ab.tmp"]
    for name in temps:
        (tmp_path / name).write_text("x")
    for name in USER_FILES:
        if name.endswith(".parquet"):
            _user_parquet(tmp_path / name)
        else:
            (tmp_path / name).write_text("user data")
    nested = tmp_path / "report-models.png.d"  # a directory: left alone, with its content
    nested.mkdir()
    (nested / "part-000000.parquet").write_text("x")

    prepare_output_directory(tmp_path, overwrite=True)

    assert _names(tmp_path) == sorted([*USER_FILES, nested.name])
    assert _names(nested) == ["part-000000.parquet"]
    assert all(name not in _names(tmp_path) for name in [*listed, unlisted, *temps])


def test_overwrite_deletes_the_files_the_manifest_lists_whatever_their_names(
    tmp_path: Path,
) -> None:
    (tmp_path / "renamed.parquet").write_text("x")
    (tmp_path / "keep.parquet").write_text("x")
    (tmp_path / "manifest.json").write_text(_manifest(["renamed.parquet", "../outside.txt"]))
    (tmp_path.parent / "outside.txt").write_text("never touched")

    prepare_output_directory(tmp_path, overwrite=True)

    assert _names(tmp_path) == ["keep.parquet"]
    assert (tmp_path.parent / "outside.txt").read_text() == "never touched"


def test_overwrite_with_a_damaged_manifest_keeps_files_it_cannot_prove_are_ours(
    tmp_path: Path,
) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    ours = _write_part(tmp_path, 0).name
    _user_parquet(tmp_path / "part-000001.parquet")

    prepare_output_directory(tmp_path, overwrite=True)

    assert ours not in _names(tmp_path)
    assert _names(tmp_path) == ["part-000001.parquet"]


def test_the_fixed_names_are_the_ones_the_writers_use() -> None:
    from sluiceway.observability import EVENTS_FILE_NAME
    from sluiceway.observability.report import document
    from sluiceway.storage.recovery import RUN_CONFIG_FILE_NAME

    for name in (
        EVENTS_FILE_NAME,
        document.REPORT_FILE_NAME,
        document.THROUGHPUT_PLOT,
        document.MODELS_PLOT,
        document.QUEUE_PLOT,
        RUN_CONFIG_FILE_NAME,
    ):
        assert name in OWN_FILE_NAMES


def test_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("not a directory")

    with pytest.raises(StorageError, match="is a file, not a directory") as caught:
        prepare_output_directory(target, overwrite=True)

    assert str(target) in str(caught.value)
    assert target.read_text() == "not a directory"


def test_path_below_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")

    with pytest.raises(StorageError, match="could not create the output directory"):
        prepare_output_directory(blocker / "out", overwrite=False)
