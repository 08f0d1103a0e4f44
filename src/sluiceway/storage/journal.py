"""The cell journal (``journal.sqlite``): completed model-backed cells of row groups that are not
checkpointed yet, kept durably in embedded SQLite (WAL) so a resumed run re-issues no model
request whose result was already in hand. One writer thread commits batches; the event loop
only appends to a queue. Rows of a row group are deleted once its Parquet file and the manifest
are on disk, so the journal holds at most the row groups in flight."""

from __future__ import annotations

import collections
import datetime as dt
import enum
import json
import sqlite3
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sluiceway.errors import EngineError, StorageError

JOURNAL_FILE_NAME = "journal.sqlite"
JOURNAL_FORMAT_VERSION = 1
# SQLite's side files in WAL mode; they belong to the journal and go with it.
JOURNAL_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
GROUP_ROW_INDEX = -1  # row_index of an entry that holds a whole batch / from-scratch result

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS run (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # A rowid table with one small index: cheaper inserts than a keyed table of large rows. A
    # cell is recorded once per run; on reading, a later entry of the same cell wins.
    "CREATE TABLE IF NOT EXISTS cells ("
    " row_group INTEGER NOT NULL, column_name TEXT NOT NULL, row_index INTEGER NOT NULL,"
    " payload TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS cells_by_row_group ON cells (row_group)",
)
_INSERT = "INSERT INTO cells (row_group, column_name, row_index, payload) VALUES (?,?,?,?)"
# A whole batch in one statement: the rows travel as one JSON array, so the writer thread takes
# the interpreter lock once per batch instead of once per row (``executemany`` hands it back and
# forth around every row's step, and against a busy event loop each hand-back waits out a
# thread switch: the writer fell behind and its queue grew with the run). Rows are inserted in
# array order, so rowid order stays the order of recording.
_INSERT_BATCH = (
    "INSERT INTO cells (row_group, column_name, row_index, payload)"
    " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
    " json_extract(value, '$[2]'), json_extract(value, '$[3]') FROM json_each(?)"
)
_BATCH_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DELETE_GROUP = "DELETE FROM cells WHERE row_group = ?"

CellKey = tuple[str, int]  # (column, global row index or GROUP_ROW_INDEX)


def journal_files(directory: Path) -> list[Path]:
    """The journal and its SQLite side files in ``directory`` (existing ones only)."""
    base = directory / JOURNAL_FILE_NAME
    candidates = [base, *(base.with_name(base.name + suffix) for suffix in JOURNAL_SIDE_SUFFIXES)]
    return [path for path in candidates if path.exists()]


def remove_journal(directory: Path) -> None:
    """Deletes the journal and its side files; raises ``StorageError`` naming the file."""
    for path in journal_files(directory):
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(
                f"could not delete {path}: {type(exc).__name__}: {exc}. Remove it by hand; "
                "the dataset itself is complete."
            ) from exc


# -- cell values ------------------------------------------------------------------------------

_TAG = "__sluiceway_value__"


def _encode_default(value: object) -> object:
    if isinstance(value, dt.datetime):
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {_TAG: "date", "v": value.isoformat()}
    if isinstance(value, dt.time):
        return {_TAG: "time", "v": value.isoformat()}
    if isinstance(value, np.ndarray):
        return {_TAG: "ndarray", "dtype": str(value.dtype), "v": value.tolist()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(f"values of type {type(value).__qualname__} are not journaled")


def _decode_hook(data: dict[str, Any]) -> Any:
    tag = data.get(_TAG)
    if tag is None:
        return data
    raw = data["v"]
    if tag == "datetime":
        return dt.datetime.fromisoformat(raw)
    if tag == "date":
        return dt.date.fromisoformat(raw)
    if tag == "time":
        return dt.time.fromisoformat(raw)
    if tag == "ndarray":
        return np.asarray(raw, dtype=data["dtype"])
    raise ValueError(f"unknown journal value tag {tag!r}")


# ASCII only: a string with a lone surrogate (valid in Python, possible in a model's JSON answer)
# has no UTF-8 form, and SQLite stores text as UTF-8; escaped, it round-trips like any other.
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=_encode_default)


def encode_payload(value: object) -> str:
    """JSON text of a journaled result; floats round-trip exactly, datetimes and arrays keep
    their type. Raises ``TypeError`` for objects it cannot represent (they are not journaled)."""
    return _ENCODER.encode(value)


def decode_payload(text: str) -> Any:
    """The value ``encode_payload`` was given (tuples and sets come back as lists)."""
    return json.loads(text, object_hook=_decode_hook)


# -- the journal ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalStatistics:
    """``recorded``: entries handed to ``record``; ``committed``: entries durably in SQLite;
    ``batches``: commits made; ``forgotten_row_groups``: row groups deleted after checkpoint."""

    recorded: int
    committed: int
    batches: int
    forgotten_row_groups: int


class _Op(enum.Enum):
    PUT = 1
    FORGET = 2


class CellJournal:
    """One run's journal file, written by a private thread.

    ``record`` and ``forget_row_group`` never block, on disk or on a lock: they append the change
    to a queue and wake the writer only if it sleeps. The writer commits whatever has queued as
    one transaction (``synchronous=NORMAL`` in WAL mode: a commit survives the process being
    killed; after a power loss the last commits may be missing, never half applied). A failed
    commit is fatal: the next ``record``, ``check`` or ``close`` raises ``StorageError`` naming
    the file. ``close`` drains the queue and blocks.
    """

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self._path = path
        self._connection = connection
        self._insert_batch = _has_json(connection)
        # Shared without a lock: the loop thread appends to ``_queue`` and the writer pops from
        # it (a deque is safe for that); ``_failure`` is set by the writer, ``_closing`` by
        # ``close``. The writer sets ``_writer_idle`` before it sleeps on ``_wake`` and looks at
        # the queue once more after that, so an append either is seen then or sets ``_wake``.
        self._queue: collections.deque[tuple[_Op, tuple[Any, ...]]] = collections.deque()
        self._wake = threading.Event()
        self._writer_idle = False
        self._failure: StorageError | None = None
        self._closing = False
        # Counters: ``_recorded`` by the caller of ``record``, the others by the writer.
        self._recorded = 0
        self._committed = 0
        self._batches = 0
        self._forgotten = 0
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> Path:
        return self._path

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, *, run_id: str, config_fingerprint: str) -> CellJournal:
        """Creates a new journal in ``directory`` (blocks). Refuses to reuse an existing file."""
        path = directory / JOURNAL_FILE_NAME
        if journal_files(directory):
            raise StorageError(
                f"{path} already exists; it belongs to an earlier run. Continue that run with "
                "--resume, or pass --overwrite to start over."
            )
        try:
            connection = _connect(path)
        except sqlite3.Error as exc:
            raise _storage_error(path, "create", exc) from exc
        try:
            with connection:
                for statement in _SCHEMA:
                    connection.execute(statement)
                connection.executemany(
                    "INSERT INTO run (key, value) VALUES (?, ?)",
                    [
                        ("format_version", str(JOURNAL_FORMAT_VERSION)),
                        ("run_id", run_id),
                        ("config_fingerprint", config_fingerprint),
                    ],
                )
        except sqlite3.Error as exc:
            connection.close()
            raise _storage_error(path, "create", exc) from exc
        return cls(path, connection)

    @classmethod
    def open_existing(cls, directory: Path, *, run_id: str, config_fingerprint: str) -> CellJournal:
        """Opens the journal of the run being resumed (blocks). Raises ``StorageError`` when it
        is damaged or belongs to another run (``run_id`` or fingerprint differ)."""
        path = directory / JOURNAL_FILE_NAME
        connection: sqlite3.Connection | None = None
        try:
            connection = _connect(path)
            meta = dict(connection.execute("SELECT key, value FROM run").fetchall())
            connection.execute("SELECT 1 FROM cells LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            if connection is not None:
                connection.close()
            raise StorageError(
                f"{path} is not a readable cell journal ({type(exc).__name__}: {exc}). Delete "
                f"{path} (and its -wal/-shm files) to resume without it: the cells it held are "
                "generated again."
            ) from exc
        problem = None
        if meta.get("format_version") != str(JOURNAL_FORMAT_VERSION):
            problem = f"format version {meta.get('format_version')!r}"
        elif meta.get("run_id") != run_id:
            problem = f"run {meta.get('run_id')!r}, but the manifest is of run {run_id!r}"
        elif meta.get("config_fingerprint") != config_fingerprint:
            problem = "a config with another fingerprint"
        if problem is not None:
            connection.close()
            raise StorageError(
                f"{path} belongs to another run ({problem}); it cannot be used to resume this "
                f"dataset. Delete {path} (and its -wal/-shm files) to resume without it (the "
                "cells it held are generated again), or pass --overwrite to start over."
            )
        return cls(path, connection)

    def read_entries(self, row_groups: Collection[int]) -> dict[int, dict[CellKey, str]]:
        """Journaled payloads of ``row_groups``, by row group then (column, row index). Blocks;
        call it before ``start``."""
        if self._thread is not None:
            raise EngineError("read_entries() must be called before the journal writer starts")
        wanted = set(row_groups)
        entries: dict[int, dict[CellKey, str]] = {}
        try:
            cursor = self._connection.execute(
                "SELECT row_group, column_name, row_index, payload FROM cells ORDER BY rowid"
            )
            for row_group, column, row_index, payload in cursor:
                if row_group in wanted:
                    entries.setdefault(row_group, {})[(column, row_index)] = payload
        except sqlite3.Error as exc:
            raise _storage_error(self._path, "read", exc) from exc
        return entries

    # -- writing ------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the writer thread."""
        if self._thread is not None:
            raise EngineError("the journal writer is already running")
        self._thread = threading.Thread(target=self._run, name="sluiceway-journal", daemon=True)
        self._thread.start()

    def record(self, row_group: int, column: str, row_index: int, payload: str) -> None:
        """Queues one completed result; never blocks on disk. Raises ``StorageError`` if an
        earlier commit failed."""
        self._enqueue(_Op.PUT, (row_group, column, row_index, payload))
        self._recorded += 1

    def forget_row_group(self, row_group: int) -> None:
        """Queues the deletion of a checkpointed row group's entries (after its puts)."""
        self._enqueue(_Op.FORGET, (row_group,))

    def check(self) -> None:
        """Raises the writer's ``StorageError``, if a commit failed."""
        if self._failure is not None:
            raise self._failure

    def _enqueue(self, op: _Op, args: tuple[Any, ...]) -> None:
        failure = self._failure
        if failure is not None:
            raise failure
        if self._closing:
            raise EngineError(f"{self._path} is closed; nothing can be journaled now")
        self._queue.append((op, args))
        if self._writer_idle:
            self._wake.set()

    def close(self) -> None:
        """Commits what is queued, stops the writer and closes the file (blocks). Raises the
        writer's ``StorageError`` if a commit failed. Calling it twice is harmless."""
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        else:
            self._drain_once()
        try:
            self._connection.close()
        except sqlite3.Error as exc:  # pragma: no cover - closing a healthy handle
            raise _storage_error(self._path, "close", exc) from exc
        self.check()

    def statistics(self) -> JournalStatistics:
        return JournalStatistics(
            recorded=self._recorded,
            committed=self._committed,
            batches=self._batches,
            forgotten_row_groups=self._forgotten,
        )

    def _run(self) -> None:
        queue = self._queue
        wake = self._wake
        while True:
            if not queue:
                wake.clear()
                self._writer_idle = True
                if not queue and not self._closing:
                    wake.wait()
                self._writer_idle = False
            stop = self._closing
            if not self._drain_once() or stop:
                return

    def _drain_once(self) -> bool:
        """Commits everything queued as one transaction; False once a commit failed."""
        queue = self._queue
        batch = []
        while queue:  # popped one by one: appends may go on meanwhile
            batch.append(queue.popleft())
        if not batch or self._failure is not None:
            return self._failure is None
        try:
            self._commit(batch)
        except Exception as exc:  # any failure is reported, never a silently dead writer
            self._failure = _storage_error(self._path, "write", exc)
            queue.clear()
            return False
        return True

    def _commit(self, batch: list[tuple[_Op, tuple[Any, ...]]]) -> None:
        connection = self._connection
        puts: list[tuple[Any, ...]] = []
        forgotten = 0
        connection.execute("BEGIN")
        try:
            for op, args in batch:
                if op is _Op.PUT:
                    puts.append(args)
                    continue
                # Invariant: a row group's puts reach SQLite before its deletion.
                if puts:
                    self._insert(puts)
                    puts = []
                connection.execute(_DELETE_GROUP, args)
                forgotten += 1
            if puts:
                self._insert(puts)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        self._forgotten += forgotten
        self._batches += 1

    def _insert(self, puts: list[tuple[Any, ...]]) -> None:
        if self._insert_batch and len(puts) > 1:
            self._connection.execute(_INSERT_BATCH, (_BATCH_ENCODER.encode(puts),))
        else:
            self._connection.executemany(_INSERT, puts)
        self._committed += len(puts)


def _has_json(connection: sqlite3.Connection) -> bool:
    """Whether this SQLite has the JSON functions (built in since 3.38, an extension before)."""
    try:
        connection.execute("SELECT count(*) FROM json_each('[]')").fetchall()
    except sqlite3.OperationalError:
        return False
    return True


def count_entries(path: Path) -> int:
    """Number of journaled entries in the journal at ``path`` (read-only; for tests and tools)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        return int(connection.execute("SELECT COUNT(*) FROM cells").fetchone()[0])
    finally:
        connection.close()


def read_journal_keys(path: Path) -> set[tuple[int, str, int]]:
    """(row group, column, row index) of every entry (read-only; for tests and tools)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        rows = connection.execute("SELECT row_group, column_name, row_index FROM cells")
        return {(int(g), str(c), int(r)) for g, c, r in rows}
    finally:
        connection.close()


def _connect(path: Path) -> sqlite3.Connection:
    """Opens ``path`` in WAL mode; raises ``sqlite3.Error``."""
    # The connection moves from the opening thread to the writer thread, never shared.
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error:
        connection.close()
        raise
    return connection


def _storage_error(path: Path, action: str, exc: BaseException) -> StorageError:
    return StorageError(
        f"could not {action} the cell journal {path}: {type(exc).__name__}: {exc}. Check that "
        "the output directory is writable and has free space; completed row groups are safe "
        "on disk, and `sluiceway run --resume` continues the run once the cause is fixed."
    )
