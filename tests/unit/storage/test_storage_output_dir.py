"""Preparing the output directory: create, refuse to mix datasets, overwrite only our files."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluiceway.errors import StorageError
from sluiceway.storage.output_dir import prepare_output_directory

TOOL_FILES = [
    "manifest.json",
    "part-000000.parquet",
    "part-000001.parquet",
    "capacity_plan.json",
    "report.md",
    "throughput.png",
    "events.jsonl",
    "events-requests.jsonl",
    "part-000002.parquet.a1b2c3.tmp",
]
UNRELATED_FILES = ["notes.txt", "data.csv", "manifest.json.bak", "README.md"]


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


def test_overwrite_deletes_only_tool_files(tmp_path: Path) -> None:
    for name in [*TOOL_FILES, *UNRELATED_FILES]:
        (tmp_path / name).write_text("x")
    nested = tmp_path / "plots.png"  # a directory whose name matches a pattern: left alone
    nested.mkdir()
    (nested / "part-000000.parquet").write_text("x")

    prepare_output_directory(tmp_path, overwrite=True)

    assert _names(tmp_path) == sorted([*UNRELATED_FILES, "plots.png"])
    assert _names(nested) == ["part-000000.parquet"]


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
