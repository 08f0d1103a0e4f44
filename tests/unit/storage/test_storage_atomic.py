"""Atomic writes: the target is replaced whole, no temp file survives, failures name the path."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import BinaryIO

import pytest

from sluiceway.errors import StorageError
from sluiceway.storage.atomic import write_atomically, write_bytes_atomically


def test_write_creates_file_and_returns_its_size(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"

    size_bytes = write_bytes_atomically(target, b"hello")

    assert target.read_bytes() == b"hello"
    assert size_bytes == 5
    assert list(tmp_path.iterdir()) == [target]


def test_write_replaces_an_existing_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_text("old contents that are longer than the new ones")

    write_bytes_atomically(target, b"new")

    assert target.read_bytes() == b"new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["manifest.json"]


def test_parent_that_is_a_file_raises_storage_error_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    target = blocker / "part-000000.parquet"

    with pytest.raises(StorageError) as caught:
        write_bytes_atomically(target, b"x")

    message = str(caught.value)
    assert str(target) in message
    assert "NotADirectoryError" in message
    assert isinstance(caught.value.__cause__, OSError)


def test_os_error_inside_the_writer_removes_temp_and_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "part-000001.parquet"
    target.write_bytes(b"previous")

    def write_then_fail(handle: BinaryIO) -> None:
        handle.write(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError, match="No space left on device") as caught:
        write_atomically(target, write_then_fail)

    assert str(target) in str(caught.value)
    assert target.read_bytes() == b"previous"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["part-000001.parquet"]


def test_other_errors_propagate_unchanged_and_remove_temp(tmp_path: Path) -> None:
    target = tmp_path / "report.md"

    def broken(handle: BinaryIO) -> None:
        handle.write(b"partial")
        raise RuntimeError("encoder bug")

    with pytest.raises(RuntimeError, match="encoder bug"):
        write_atomically(target, broken)

    assert list(tmp_path.iterdir()) == []
