"""What an interrupted run left behind: sound files are kept, partial and deleted row groups are
generated again, leftovers no reader sees are orphans, and damage is reported with the fix."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sluiceway.errors import StorageError
from sluiceway.storage.manifest import ManifestWriter, RowGroupStatus
from sluiceway.storage.parquet_writer import RowGroupWriter
from sluiceway.storage.recovery import (
    inspect_output,
    read_run_config,
    remove_orphans,
    write_run_config,
)


def _dataset(directory: Path, *, partial: int | None = None) -> None:
    """Three row groups of two rows; ``partial`` is written as salvaged (one row)."""

    directory.mkdir(parents=True, exist_ok=True)

    async def build() -> None:
        manifest = ManifestWriter(
            directory,
            run_id="r1",
            config_fingerprint="f1",
            seed=1,
            num_records=8,
            buffer_size=2,
            columns=["x"],
        )
        writer = RowGroupWriter(directory, column_order=["x"])
        for group in range(3):
            first = group * 2
            rows = [{"x": first}] if group == partial else [{"x": first}, {"x": first + 1}]
            written = await writer.write(group, rows, list(range(first, first + len(rows))))
            await manifest.checkpoint(row_group=group, written=written, partial=group == partial)

    asyncio.run(build())


def test_an_empty_or_missing_directory_holds_nothing_to_resume(tmp_path: Path) -> None:
    assert inspect_output(tmp_path / "nope") is None
    assert inspect_output(tmp_path) is None


def test_sound_row_groups_are_completed_and_leftovers_are_orphans(tmp_path: Path) -> None:
    _dataset(tmp_path)
    (tmp_path / "part-000003.parquet").write_bytes(b"half")
    (tmp_path / "manifest.json.abc.tmp").write_bytes(b"{")
    recovered = inspect_output(tmp_path)
    assert recovered is not None
    assert recovered.completed_row_groups == {0, 1, 2}
    assert {path.name for path in recovered.orphans} == {
        "part-000003.parquet",
        "manifest.json.abc.tmp",
    }
    remove_orphans(recovered)
    assert not (tmp_path / "part-000003.parquet").exists()
    assert (tmp_path / "part-000002.parquet").exists()


def test_a_partial_row_group_is_generated_again(tmp_path: Path) -> None:
    _dataset(tmp_path, partial=1)
    recovered = inspect_output(tmp_path)
    assert recovered is not None
    assert recovered.missing == (1,)
    assert recovered.completed_row_groups == {0, 2}
    assert recovered.manifest.rows_written == 4
    assert [path.name for path in recovered.orphans] == ["part-000001.parquet"]
    assert all(group.status is RowGroupStatus.WRITTEN for group in recovered.manifest.row_groups)


def test_a_deleted_part_file_is_generated_again(tmp_path: Path) -> None:
    _dataset(tmp_path)
    (tmp_path / "part-000000.parquet").unlink()
    recovered = inspect_output(tmp_path)
    assert recovered is not None
    assert recovered.missing == (0,)
    assert recovered.manifest.files == ("part-000001.parquet", "part-000002.parquet")


def test_a_truncated_part_file_is_reported_with_the_fix(tmp_path: Path) -> None:
    _dataset(tmp_path)
    part = tmp_path / "part-000001.parquet"
    part.write_bytes(part.read_bytes()[:20])
    with pytest.raises(StorageError, match="truncated or damaged") as caught:
        inspect_output(tmp_path)
    assert str(part) in str(caught.value) and "--resume" in str(caught.value)


def test_part_files_without_a_manifest_are_not_resumed(tmp_path: Path) -> None:
    _dataset(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(StorageError, match=r"no manifest\.json"):
        inspect_output(tmp_path)


def test_a_file_in_place_of_the_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("mine")
    with pytest.raises(StorageError, match="is a file"):
        inspect_output(target)


def test_the_saved_config_round_trips(tmp_path: Path) -> None:
    assert read_run_config(tmp_path) is None
    write_run_config(tmp_path, {"columns": [{"name": "a"}], "run": {"seed": 3}})
    assert read_run_config(tmp_path) == {"columns": [{"name": "a"}], "run": {"seed": 3}}
