"""Prepares the output directory of a run: creates it, refuses to mix a new run into a previous
dataset unless told to overwrite, and on overwrite deletes only the files Sluiceway writes."""

from __future__ import annotations

import os
from pathlib import Path

from sluiceway.errors import StorageError
from sluiceway.storage.journal import JOURNAL_FILE_NAME, JOURNAL_SIDE_SUFFIXES
from sluiceway.storage.manifest import MANIFEST_FILE_NAME

# Every file name Sluiceway writes into an output directory. Overwrite deletes exactly these
# (regular files only, never subdirectories); anything else in the directory is left alone.
TOOL_FILE_PATTERNS: tuple[str, ...] = (
    "part-*.parquet",
    MANIFEST_FILE_NAME,
    "capacity_plan.json",
    "run_config.json",
    JOURNAL_FILE_NAME,
    *(JOURNAL_FILE_NAME + suffix for suffix in JOURNAL_SIDE_SUFFIXES),
    "report.md",
    "*.png",
    "events*.jsonl",
    "*.tmp",
)
_DATASET_PATTERNS: tuple[str, ...] = (MANIFEST_FILE_NAME, "part-*.parquet", JOURNAL_FILE_NAME)


def holds_dataset(directory: Path) -> bool:
    """True when ``directory`` holds a previous dataset (a manifest, row-group files or a cell
    journal)."""
    return any(path.is_file() for pattern in _DATASET_PATTERNS for path in directory.glob(pattern))


def tool_files(directory: Path) -> list[Path]:
    """The files in ``directory`` that Sluiceway writes, sorted."""
    found = {
        path
        for pattern in TOOL_FILE_PATTERNS
        for path in directory.glob(pattern)
        if path.is_file() or path.is_symlink()
    }
    return sorted(found)


def prepare_output_directory(path: str | Path, *, overwrite: bool) -> Path:
    """Makes ``path`` ready for a new run and returns it.

    Creates it (with parents) if missing. Raises ``StorageError`` when ``path`` is a file, when
    it is not writable, or when it holds a previous dataset and ``overwrite`` is False. With
    ``overwrite`` it deletes the files listed in ``TOOL_FILE_PATTERNS`` and nothing else.
    Blocks (file system calls).
    """
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise StorageError(
            f"output path {directory} is a file, not a directory; choose a directory path "
            "(it is created if missing) or move the file away."
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"could not create the output directory {directory}: {type(exc).__name__}: {exc}. "
            "Check that its parents are directories and writable, or choose another path."
        ) from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StorageError(
            f"output directory {directory} is not writable; fix its permissions or choose "
            "another output path."
        )
    if not overwrite:
        if holds_dataset(directory):
            raise StorageError(
                f"output directory {directory} already holds a dataset ({MANIFEST_FILE_NAME}, "
                "part-*.parquet or journal files); continue it with --resume, pass --overwrite "
                "to replace it, or choose another output path."
            )
        return directory
    for file in tool_files(directory):
        try:
            file.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(
                f"could not delete {file} while overwriting the previous dataset: "
                f"{type(exc).__name__}: {exc}. Remove it by hand or choose another output path."
            ) from exc
    return directory
