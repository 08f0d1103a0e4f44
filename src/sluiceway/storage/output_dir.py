"""Prepares the output directory of a run: creates it, refuses to mix a new run into a previous
dataset unless told to overwrite, and on overwrite deletes only files Sluiceway provably wrote:
its fixed file names, the files the previous run's manifest lists, and the leftovers of its own
interrupted writes. Nothing is deleted because its name merely looks like ours."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sluiceway.errors import StorageError
from sluiceway.storage.atomic import TEMP_SUFFIX
from sluiceway.storage.capacity_plan import CAPACITY_PLAN_FILE_NAME
from sluiceway.storage.journal import JOURNAL_FILE_NAME, JOURNAL_SIDE_SUFFIXES
from sluiceway.storage.manifest import MANIFEST_FILE_NAME, RunManifest, read_manifest_file
from sluiceway.storage.parquet_writer import KINDS_METADATA_KEY

# The fixed names of the files Sluiceway writes into an output directory besides the row-group
# files (the events file and the report are named by the observability layer; a test checks
# that these names agree with it). Overwrite deletes exactly these, the files the previous
# manifest lists, and the leftovers described in ``own_files``.
OWN_FILE_NAMES: tuple[str, ...] = (
    MANIFEST_FILE_NAME,
    CAPACITY_PLAN_FILE_NAME,
    "run_config.json",
    JOURNAL_FILE_NAME,
    *(JOURNAL_FILE_NAME + suffix for suffix in JOURNAL_SIDE_SUFFIXES),
    "events.jsonl",
    "report.md",
    "report-throughput.png",
    "report-models.png",
    "report-queue-depth.png",
)
_DATASET_PATTERNS: tuple[str, ...] = (MANIFEST_FILE_NAME, "part-*.parquet", JOURNAL_FILE_NAME)
# ``part-000042.parquet``: the name the Parquet writer gives row group 42.
_ROW_GROUP_FILE = re.compile(r"part-\d{6,}\.parquet")
# ``<name>.<12 hex digits>.tmp``: the temp file of an atomic write of ``<name>`` that was cut off.
_TEMP_FILE = re.compile(r"(?P<target>.+)\.[0-9a-f]{12}" + re.escape(TEMP_SUFFIX))


def holds_dataset(directory: Path) -> bool:
    """True when ``directory`` holds a previous dataset (a manifest, row-group files or a cell
    journal)."""
    return any(path.is_file() for pattern in _DATASET_PATTERNS for path in directory.glob(pattern))


def _listed_files(directory: Path) -> set[str]:
    """The data files the manifest in ``directory`` lists (plain names only); empty when there
    is no manifest or it cannot be read: its listed files are then kept."""
    if not (directory / MANIFEST_FILE_NAME).is_file():
        return set()
    try:
        manifest: RunManifest = read_manifest_file(directory / MANIFEST_FILE_NAME)
    except StorageError:
        return set()
    names = {*manifest.files, *(group.file for group in manifest.row_groups if group.file)}
    return {name for name in names if name not in {".", ".."} and Path(name).name == name}


def _is_unlisted_row_group_file(path: Path) -> bool:
    """A row-group file whose manifest entry never made it to disk (the process died between
    the two writes): it has the writer's name and the writer's schema metadata."""
    if not _ROW_GROUP_FILE.fullmatch(path.name):
        return False
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return False
    return KINDS_METADATA_KEY in metadata


def own_files(directory: Path) -> list[Path]:
    """The files in ``directory`` that Sluiceway wrote, sorted: its fixed names
    (``OWN_FILE_NAMES``), the files the manifest lists, row-group files the writer finished
    after the manifest's last update (its name and its ``sluiceway.column_kinds`` schema
    metadata), and the temp files of its atomic writes of any of these. Regular files and
    symlinks only, never directories. Blocks (reads the manifest and unlisted Parquet footers).
    """
    ours = set(OWN_FILE_NAMES) | _listed_files(directory)

    def is_ours(path: Path) -> bool:
        if path.name in ours:
            return True
        temp = _TEMP_FILE.fullmatch(path.name)
        if temp is not None:
            target = temp.group("target")
            return target in ours or _ROW_GROUP_FILE.fullmatch(target) is not None
        return _is_unlisted_row_group_file(path)

    return sorted(
        path
        for path in directory.iterdir()
        if (path.is_file() or path.is_symlink()) and is_ours(path)
    )


def prepare_output_directory(path: str | Path, *, overwrite: bool) -> Path:
    """Makes ``path`` ready for a new run and returns it.

    Creates it (with parents) if missing. Raises ``StorageError`` when ``path`` is a file, when
    it is not writable, or when it holds a previous dataset and ``overwrite`` is False. With
    ``overwrite`` it deletes the files ``own_files`` names and nothing else: a user's
    ``notes.txt``, ``chart.png``, ``events-old.jsonl`` or ``data.parquet`` stay.
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
    # The manifest goes last: if a deletion fails, the next overwrite still knows the files.
    files = own_files(directory)
    files.sort(key=lambda file: file.name == MANIFEST_FILE_NAME)
    for file in files:
        try:
            file.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(
                f"could not delete {file} while overwriting the previous dataset: "
                f"{type(exc).__name__}: {exc}. Remove it by hand or choose another output path."
            ) from exc
    return directory
