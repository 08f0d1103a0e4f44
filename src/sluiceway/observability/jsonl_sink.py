"""``JsonlEventSink``: events as JSON lines, encoded and written by a background thread.

``handle`` only appends to a list; every ``batch_size`` events the batch goes to one writer
thread, which encodes it (``codec.encode_event``) and appends it to the file. ``close`` writes
what is left and waits for the thread. A write error is raised by the next ``handle`` or by
``close``, so the bus disables the sink and logs it once. ``read_events`` reads a file back.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from sluiceway.errors import StorageError
from sluiceway.observability.bus import ALL_KINDS
from sluiceway.observability.codec import decode_event, encode_event
from sluiceway.observability.events import Event
from sluiceway.observability.kinds import EventKind

EVENTS_FILE_NAME = "events.jsonl"
EVENTS_FORMAT = "sluiceway-events"
EVENTS_FORMAT_VERSION = 1
_HEADER = json.dumps({"format": EVENTS_FORMAT, "format_version": EVENTS_FORMAT_VERSION})

_STOP = None


class JsonlEventSink:
    """Appends the events of ``kinds`` (default: all) to ``path`` as JSON lines.

    The file starts with a header line (``{"format": "sluiceway-events", ...}``) and is
    truncated when the sink is created. ``handle`` never blocks on I/O. ``close`` blocks until
    every event handed over is written; it raises ``StorageError`` if writing failed.
    """

    __slots__ = (
        "_batch",
        "_batch_size",
        "_closed",
        "_error",
        "_kinds",
        "_path",
        "_queue",
        "_thread",
    )

    def __init__(
        self,
        path: Path,
        kinds: Iterable[EventKind] = ALL_KINDS,
        *,
        batch_size: int = 2048,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._path = Path(path)
        self._kinds = frozenset(kinds)
        self._batch_size = batch_size
        self._batch: list[Event] = []
        self._queue: queue.SimpleQueue[list[Event] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._closed = False
        # The writer is a daemon so a run that never closes its sink cannot hang interpreter
        # exit; close() is what guarantees the file is complete.
        self._thread = threading.Thread(
            target=self._write_loop, name="sluiceway-events-jsonl", daemon=True
        )
        self._thread.start()

    @property
    def kinds(self) -> frozenset[EventKind]:
        return self._kinds

    @property
    def path(self) -> Path:
        return self._path

    def handle(self, event: Event) -> None:
        if self._error is not None:
            raise self._storage_error()
        batch = self._batch
        batch.append(event)
        if len(batch) >= self._batch_size:
            self._queue.put(batch)
            self._batch = []

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._batch:
            self._queue.put(self._batch)
            self._batch = []
        self._queue.put(_STOP)
        self._thread.join()
        if self._error is not None:
            raise self._storage_error()

    def __enter__(self) -> JsonlEventSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _storage_error(self) -> StorageError:
        error = StorageError(
            f"cannot write events to {self._path} ({type(self._error).__name__}: "
            f"{self._error}); check the directory exists and has free space"
        )
        error.__cause__ = self._error
        return error

    def _write_loop(self) -> None:
        handle: TextIO | None = None
        try:
            handle = self._path.open("w", encoding="utf-8")
            handle.write(_HEADER + "\n")
            while True:
                batch = self._queue.get()
                if batch is _STOP:
                    break
                handle.write("".join(encode_event(event) + "\n" for event in batch))
        except BaseException as error:
            # Reported by the next handle() or close(); the thread ends, and later batches
            # never come because handle() raises first.
            self._error = error
        finally:
            if handle is not None:
                try:
                    handle.close()
                except OSError as error:
                    self._error = self._error or error


def read_events(path: Path) -> Iterator[Event]:
    """The events of a JSONL file written by :class:`JsonlEventSink`, in file order.

    Raises ``StorageError`` naming the file and line when a line is not an event."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                text = line.strip()
                if not text:
                    continue
                if number == 1 and text.startswith('{"format"'):
                    header = json.loads(text)
                    if header.get("format") != EVENTS_FORMAT:
                        raise StorageError(f"{path} is not a Sluiceway events file")
                    continue
                yield decode_event(text, where=f"{path} line {number}")
    except OSError as exc:
        raise StorageError(f"cannot read events from {path}: {exc}") from exc
