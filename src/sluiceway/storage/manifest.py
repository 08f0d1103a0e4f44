"""The run manifest (``manifest.json``): what a run is (fingerprint, seed, sizes), how far it got
(status, checkpointed row groups, row counts, dropped-row reasons) and which files hold the data,
with how they store each column. ``ManifestWriter`` keeps it in memory and rewrites it atomically,
off the loop, per checkpoint."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from sluiceway.errors import EngineError, StorageError
from sluiceway.storage.atomic import write_bytes_atomically
from sluiceway.storage.column_kinds import ColumnKind, merge_kinds
from sluiceway.storage.json_encoding import dumps_document
from sluiceway.storage.parquet_writer import WrittenFile

MANIFEST_FILE_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
DROPPED_ROWS_KEPT = 10_000


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RowGroupStatus(enum.StrEnum):
    WRITTEN = "written"  # its Parquet file is on disk and listed in ``files``
    EMPTY = "empty"  # every row was dropped; no file
    # The run stopped before the group was complete: its finished rows are in ``file`` (None if
    # there were none) and a resumed run generates the whole group again.
    PARTIAL = "partial"


@dataclass(frozen=True, slots=True, kw_only=True)
class RowGroupRecord:
    """One checkpointed row group."""

    index: int
    file: str | None
    rows_written: int
    rows_dropped: int
    status: RowGroupStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class DroppedRowRecord:
    """A row the engine dropped: its global index, the column that failed, and why."""

    row_index: int
    column: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunManifest:
    """Everything ``manifest.json`` says about a run.

    ``dropped_rows`` keeps the ``DROPPED_ROWS_KEPT`` entries with the lowest row indices (so the
    list does not depend on which row group finished first); ``dropped_rows_omitted`` counts the
    rest. ``row_groups`` and ``files`` are in row-group order. ``column_kinds`` is how the files
    written so far store each column, merged over them (``nested``: a struct or list type,
    ``json``: JSON text); empty before the first file.
    """

    format_version: int = MANIFEST_FORMAT_VERSION
    run_id: str
    config_fingerprint: str
    seed: int
    num_records: int
    buffer_size: int
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    status: RunStatus = RunStatus.RUNNING
    row_groups: tuple[RowGroupRecord, ...] = ()
    rows_written: int = 0
    rows_dropped: int = 0
    dropped_rows: tuple[DroppedRowRecord, ...] = ()
    dropped_rows_omitted: int = 0
    columns: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    column_kinds: Mapping[str, ColumnKind] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "run_id": self.run_id,
            "config_fingerprint": self.config_fingerprint,
            "seed": self.seed,
            "num_records": self.num_records,
            "buffer_size": self.buffer_size,
            "started_at": self.started_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
            "status": self.status.value,
            "row_groups": [
                {
                    "index": group.index,
                    "file": group.file,
                    "rows_written": group.rows_written,
                    "rows_dropped": group.rows_dropped,
                    "status": group.status.value,
                }
                for group in self.row_groups
            ],
            "rows_written": self.rows_written,
            "rows_dropped": self.rows_dropped,
            "dropped_rows": [
                {"row_index": row.row_index, "column": row.column, "reason": row.reason}
                for row in self.dropped_rows
            ],
            "dropped_rows_omitted": self.dropped_rows_omitted,
            "columns": list(self.columns),
            "files": list(self.files),
            "column_kinds": {name: kind.value for name, kind in self.column_kinds.items()},
        }

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys, two-space indent, trailing newline)."""
        return dumps_document(self.to_dict())

    @classmethod
    def from_json(cls, text: str, *, source: str = MANIFEST_FILE_NAME) -> RunManifest:
        """Parses manifest JSON; raises ``StorageError`` naming ``source`` and the bad field."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StorageError(
                f"{source} is not valid JSON ({exc}); the manifest is damaged. Re-run the "
                "dataset with --overwrite to rebuild it."
            ) from exc
        return _parse_manifest(_Reader(data, source=source, where=""))


_T = TypeVar("_T")
_E = TypeVar("_E", bound=enum.Enum)


class _Reader:
    """Typed access to one JSON object of the manifest, with errors that name the field."""

    def __init__(self, data: object, *, source: str, where: str) -> None:
        self.source = source
        self.where = where
        if not isinstance(data, dict):
            raise self._error(where or "<root>", f"expected an object, got {data!r:.80}")
        self.data: dict[str, Any] = data

    def _error(self, where: str, problem: str) -> StorageError:
        return StorageError(
            f"{self.source}: field {where!r}: {problem}. The manifest is damaged or was written "
            "by another program; re-run the dataset with --overwrite to rebuild it."
        )

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def optional(self, key: str, kind: type[_T]) -> _T | None:
        value = self.data.get(key)
        if value is None:
            return None
        # bool is an int in Python, never in a manifest.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self._error(self._path(key), f"expected {kind.__name__}, got {value!r:.80}")
        return value

    def required(self, key: str, kind: type[_T]) -> _T:
        value = self.optional(key, kind)
        if value is None:
            raise self._error(self._path(key), "missing")
        return value

    def enum(self, key: str, kind: type[_E]) -> _E:
        raw = self.required(key, str)
        try:
            return kind(raw)
        except ValueError:
            allowed = ", ".join(str(member.value) for member in kind)
            raise self._error(self._path(key), f"{raw!r} is not one of {allowed}") from None

    def timestamp(self, key: str) -> dt.datetime:
        return self._parse_time(key, self.required(key, str))

    def optional_timestamp(self, key: str) -> dt.datetime | None:
        raw = self.optional(key, str)
        return None if raw is None else self._parse_time(key, raw)

    def _parse_time(self, key: str, raw: str) -> dt.datetime:
        try:
            return dt.datetime.fromisoformat(raw)
        except ValueError:
            raise self._error(self._path(key), f"{raw!r} is not an ISO 8601 time") from None

    def objects(self, key: str) -> list[_Reader]:
        items = self.required(key, list)
        return [
            _Reader(item, source=self.source, where=f"{self._path(key)}[{position}]")
            for position, item in enumerate(items)
        ]

    def kinds(self, key: str) -> dict[str, ColumnKind]:
        """An optional object of column kinds (manifests written before it existed lack it)."""
        raw = self.optional(key, dict) or {}
        kinds: dict[str, ColumnKind] = {}
        for name, value in raw.items():
            try:
                kinds[name] = ColumnKind(value)
            except ValueError:
                raise self._error(
                    f"{self._path(key)}.{name}", f"{value!r:.80} is not a column kind"
                ) from None
        return kinds

    def strings(self, key: str) -> tuple[str, ...]:
        items = self.required(key, list)
        for position, item in enumerate(items):
            if not isinstance(item, str):
                raise self._error(
                    f"{self._path(key)}[{position}]", f"expected str, got {item!r:.80}"
                )
        return tuple(items)


def _parse_manifest(reader: _Reader) -> RunManifest:
    version = reader.required("format_version", int)
    if version > MANIFEST_FORMAT_VERSION:
        raise StorageError(
            f"{reader.source} has format_version {version}, newer than this Sluiceway reads "
            f"({MANIFEST_FORMAT_VERSION}); upgrade Sluiceway to read this dataset."
        )
    return RunManifest(
        format_version=version,
        run_id=reader.required("run_id", str),
        config_fingerprint=reader.required("config_fingerprint", str),
        seed=reader.required("seed", int),
        num_records=reader.required("num_records", int),
        buffer_size=reader.required("buffer_size", int),
        started_at=reader.timestamp("started_at"),
        finished_at=reader.optional_timestamp("finished_at"),
        status=reader.enum("status", RunStatus),
        row_groups=tuple(
            RowGroupRecord(
                index=group.required("index", int),
                file=group.optional("file", str),
                rows_written=group.required("rows_written", int),
                rows_dropped=group.required("rows_dropped", int),
                status=group.enum("status", RowGroupStatus),
            )
            for group in reader.objects("row_groups")
        ),
        rows_written=reader.required("rows_written", int),
        rows_dropped=reader.required("rows_dropped", int),
        dropped_rows=tuple(
            DroppedRowRecord(
                row_index=row.required("row_index", int),
                column=row.required("column", str),
                reason=row.required("reason", str),
            )
            for row in reader.objects("dropped_rows")
        ),
        dropped_rows_omitted=reader.required("dropped_rows_omitted", int),
        columns=reader.strings("columns"),
        files=reader.strings("files"),
        column_kinds=reader.kinds("column_kinds"),
    )


def read_manifest_file(path: Path) -> RunManifest:
    """Reads and parses one manifest file; raises ``StorageError`` naming it and the fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StorageError(
            f"no {MANIFEST_FILE_NAME} in {path.parent}: it holds no Sluiceway dataset (or its "
            "run never started). Check the path, or run `sluiceway run` to create one there."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageError(
            f"could not read {path}: {type(exc).__name__}: {exc}. Check the file's "
            "permissions, or re-run the dataset with --overwrite to rebuild it."
        ) from exc
    return RunManifest.from_json(text, source=str(path))


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestWriterStatistics:
    """Counts of a ``ManifestWriter``: ``version`` of the in-memory manifest (one per change),
    ``written_version`` of the file (-1 before the first write)."""

    row_groups: int
    rows_written: int
    rows_dropped: int
    version: int
    written_version: int


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _dropped_order(row: DroppedRowRecord) -> tuple[int, str, str]:
    return (row.row_index, row.column, row.reason)


class ManifestWriter:
    """Keeps one run's manifest in memory and persists it atomically.

    ``record_*`` change the in-memory manifest; ``write``/``checkpoint``/``finish`` persist it in
    a worker thread and raise ``StorageError`` (fatal) if that fails. Writes are ordered by
    version: a snapshot never overwrites a newer one, even when an awaiting task is cancelled
    while its thread still runs. Recording a row group twice raises ``EngineError``. Changes may
    come from the event loop and from worker threads (``checkpoint_blocking``) at once.
    """

    def __init__(
        self,
        directory: Path,
        *,
        run_id: str,
        config_fingerprint: str,
        seed: int,
        num_records: int,
        buffer_size: int,
        columns: Sequence[str],
        wall_clock: Callable[[], dt.datetime] = _utc_now,
        dropped_rows_kept: int = DROPPED_ROWS_KEPT,
    ) -> None:
        self._init(
            directory,
            RunManifest(
                run_id=run_id,
                config_fingerprint=config_fingerprint,
                seed=seed,
                num_records=num_records,
                buffer_size=buffer_size,
                started_at=wall_clock(),
                columns=tuple(columns),
            ),
            wall_clock=wall_clock,
            dropped_rows_kept=dropped_rows_kept,
        )

    @classmethod
    def continuing(
        cls,
        directory: Path,
        manifest: RunManifest,
        *,
        wall_clock: Callable[[], dt.datetime] = _utc_now,
        dropped_rows_kept: int = DROPPED_ROWS_KEPT,
    ) -> ManifestWriter:
        """A writer that continues ``manifest`` (resume): recorded groups stay, status is
        ``running`` again and ``finished_at`` is cleared."""
        writer = cls.__new__(cls)
        writer._init(
            directory,
            replace(manifest, status=RunStatus.RUNNING, finished_at=None),
            wall_clock=wall_clock,
            dropped_rows_kept=dropped_rows_kept,
        )
        return writer

    def _init(
        self,
        directory: Path,
        manifest: RunManifest,
        *,
        wall_clock: Callable[[], dt.datetime],
        dropped_rows_kept: int,
    ) -> None:
        if dropped_rows_kept < 0:
            raise EngineError(f"dropped_rows_kept must be >= 0, got {dropped_rows_kept}")
        self._path = Path(directory) / MANIFEST_FILE_NAME
        self._wall_clock = wall_clock
        self._dropped_rows_kept = dropped_rows_kept
        # Guarded by ``_state_lock``: the current manifest and its version.
        self._state_lock = threading.Lock()
        self._manifest = manifest
        self._version = 0
        # Guarded by ``_file_lock``: the version the file holds.
        self._written_version = -1
        self._file_lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def manifest(self) -> RunManifest:
        """The current in-memory manifest (possibly newer than the file)."""
        return self._manifest

    def record_row_group(
        self,
        *,
        row_group: int,
        written: WrittenFile | None,
        rows_dropped: int,
        partial: bool = False,
    ) -> None:
        """Records a checkpointed row group: ``written`` is its file, or None if every row was
        dropped. ``rows_dropped`` counts the rows of this group that were dropped. ``partial``:
        the run stopped before the group was complete (status ``partial``)."""
        with self._state_lock:
            self._record_row_group(
                row_group=row_group, written=written, rows_dropped=rows_dropped, partial=partial
            )

    def _record_row_group(
        self, *, row_group: int, written: WrittenFile | None, rows_dropped: int, partial: bool
    ) -> None:
        if any(group.index == row_group for group in self._manifest.row_groups):
            raise EngineError(
                f"row group {row_group} is already in the manifest; each row group is "
                "checkpointed once"
            )
        if written is not None and written.row_group != row_group:
            raise EngineError(
                f"row group {row_group} was given the file of row group {written.row_group}"
            )
        if rows_dropped < 0:
            raise EngineError(f"rows_dropped must be >= 0, got {rows_dropped}")
        record = RowGroupRecord(
            index=row_group,
            file=None if written is None else written.path.name,
            rows_written=0 if written is None else written.rows,
            rows_dropped=rows_dropped,
            status=(
                RowGroupStatus.PARTIAL
                if partial
                else RowGroupStatus.EMPTY
                if written is None
                else RowGroupStatus.WRITTEN
            ),
        )
        groups = tuple(sorted((*self._manifest.row_groups, record), key=lambda g: g.index))
        kinds = dict(self._manifest.column_kinds)
        if written is not None:
            for name, kind in written.column_kinds.items():
                kinds[name] = merge_kinds(kinds.get(name, ColumnKind.NULL), kind)
        self._update(
            column_kinds=kinds,
            row_groups=groups,
            files=tuple(group.file for group in groups if group.file is not None),
            rows_written=self._manifest.rows_written + record.rows_written,
            rows_dropped=self._manifest.rows_dropped + rows_dropped,
        )

    def record_dropped_rows(self, rows: Iterable[DroppedRowRecord]) -> None:
        """Adds dropped-row reasons, keeping the lowest ``dropped_rows_kept`` row indices."""
        with self._state_lock:
            self._record_dropped_rows(list(rows))

    def _record_dropped_rows(self, new: list[DroppedRowRecord]) -> None:
        if not new:
            return
        merged = sorted((*self._manifest.dropped_rows, *new), key=_dropped_order)
        kept = merged[: self._dropped_rows_kept]
        self._update(
            dropped_rows=tuple(kept),
            dropped_rows_omitted=self._manifest.dropped_rows_omitted + len(merged) - len(kept),
        )

    def _update(self, **changes: Any) -> None:
        """Replaces the manifest; the caller holds ``_state_lock``."""
        self._manifest = replace(self._manifest, **changes)
        self._version += 1

    def _snapshot(self) -> tuple[RunManifest, int]:
        with self._state_lock:
            return self._manifest, self._version

    async def write(self) -> RunManifest:
        """Persists the current manifest (atomic, in a worker thread) and returns it."""
        manifest, version = self._snapshot()
        await asyncio.to_thread(self._write_version, manifest, version)
        return manifest

    def write_blocking(self) -> RunManifest:
        """The same as ``write``, on the calling thread."""
        manifest, version = self._snapshot()
        self._write_version(manifest, version)
        return manifest

    def _write_version(self, manifest: RunManifest, version: int) -> None:
        data = manifest.to_json().encode("utf-8")
        with self._file_lock:
            # Invariant: the file only moves forward; an older snapshot never replaces a newer one.
            if version <= self._written_version:
                return
            write_bytes_atomically(self._path, data)
            self._written_version = version

    async def checkpoint(
        self,
        *,
        row_group: int,
        written: WrittenFile | None,
        dropped: Iterable[DroppedRowRecord] = (),
        rows_dropped: int | None = None,
        partial: bool = False,
    ) -> RunManifest:
        """Records a completed (or, with ``partial``, salvaged) row group and its dropped rows,
        then persists the manifest.

        ``rows_dropped`` defaults to the number of distinct row indices in ``dropped``.
        """
        self._record_checkpoint(row_group, written, list(dropped), rows_dropped, partial)
        return await self.write()

    def checkpoint_blocking(
        self,
        *,
        row_group: int,
        written: WrittenFile | None,
        dropped: Iterable[DroppedRowRecord] = (),
        rows_dropped: int | None = None,
        partial: bool = False,
    ) -> RunManifest:
        """The same as ``checkpoint``, on the calling thread (a worker thread may call it)."""
        self._record_checkpoint(row_group, written, list(dropped), rows_dropped, partial)
        return self.write_blocking()

    def _record_checkpoint(
        self,
        row_group: int,
        written: WrittenFile | None,
        reasons: list[DroppedRowRecord],
        rows_dropped: int | None,
        partial: bool,
    ) -> None:
        if rows_dropped is None:
            rows_dropped = len({row.row_index for row in reasons})
        with self._state_lock:
            self._record_row_group(
                row_group=row_group, written=written, rows_dropped=rows_dropped, partial=partial
            )
            self._record_dropped_rows(reasons)

    async def finish(self, status: RunStatus) -> RunManifest:
        """Sets the final status and ``finished_at``, then persists the manifest."""
        if status is RunStatus.RUNNING:
            raise EngineError("finish() needs a final status: completed, failed or cancelled")
        with self._state_lock:
            self._update(status=status, finished_at=self._wall_clock())
        return await self.write()

    def statistics(self) -> ManifestWriterStatistics:
        manifest, version = self._snapshot()
        return ManifestWriterStatistics(
            row_groups=len(manifest.row_groups),
            rows_written=manifest.rows_written,
            rows_dropped=manifest.rows_dropped,
            version=version,
            written_version=self._written_version,
        )
