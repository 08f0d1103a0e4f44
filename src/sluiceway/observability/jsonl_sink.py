"""``JsonlEventSink``: events as JSON lines, encoded where they are emitted, written by a thread.

``handle`` encodes the event into its line at once (``jsonl_format.EventLineEncoder``, one
compiled ``%`` template per class), so no event outlives its emission and the pending work is
plain strings, which the garbage collector never scans. Every ``batch_size`` lines go to one
writer thread that appends them to the file. ``close`` writes what is left and waits for the
thread. A write error is raised by the ``handle`` that hands over the next batch, or by
``close``, so the bus disables the sink and logs it once. ``read_events`` reads a file back
(format versions 1 and 2), ``read_events_header`` its header (with the ``trace_sample_rate``
of the run that wrote it).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from sluiceway.errors import StorageError
from sluiceway.observability.bus import ALL_KINDS
from sluiceway.observability.codec import decode_event
from sluiceway.observability.events import Event
from sluiceway.observability.jsonl_format import (
    EVENTS_FORMAT,
    EVENTS_FORMAT_VERSION,
    READABLE_FORMAT_VERSIONS,
    EventLineDecoder,
    EventLineEncoder,
    header_line,
    trace_sample_rate_of,
)
from sluiceway.observability.kinds import EventKind

__all__ = [
    "EVENTS_FILE_NAME",
    "EVENTS_FORMAT",
    "EVENTS_FORMAT_VERSION",
    "JsonlEventSink",
    "read_events",
    "read_events_header",
]

EVENTS_FILE_NAME = "events.jsonl"

_STOP = None


class JsonlEventSink:
    """Appends the events of ``kinds`` (default: all) to ``path`` as JSON lines.

    The file starts with a header line (``{"format":"sluiceway-events",...}``) and is truncated
    when the sink is created. ``trace_sample_rate`` is written into the header: the share of
    task attempts whose detail events the run emits (``observability.sampling``; the engine
    passes ``run.events.trace_sample_rate``), which the run report scales sampled counts by.
    ``handle`` encodes on the calling thread and never blocks on I/O; it raises
    ``StorageError`` when writing has failed (on the hand-over after the failure) or the sink
    is closed, and ``TypeError`` for an event class outside the catalog. ``close`` blocks until
    every line handed over is written; it raises ``StorageError`` if writing failed.
    """

    __slots__ = (
        "_closed",
        "_encoder",
        "_error",
        "_header",
        "_kinds",
        "_path",
        "_queue",
        "_thread",
        "handle",
    )

    handle: Callable[[Event], None]
    """Encode one event and queue its line (replaced by a refusal once the sink is closed)."""

    def __init__(
        self,
        path: Path,
        kinds: Iterable[EventKind] = ALL_KINDS,
        *,
        batch_size: int = 2048,
        trace_sample_rate: float = 1.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._header = header_line(trace_sample_rate=trace_sample_rate)
        self._path = Path(path)
        self._kinds = frozenset(kinds)
        self._encoder = EventLineEncoder()
        self._queue: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._closed = False
        self.handle = self._make_handle(batch_size)
        # The writer is a daemon so a run that never closes its sink cannot hang interpreter
        # exit; close() is what guarantees the file is complete.
        self._thread = threading.Thread(
            target=self._write_loop, name="sluiceway-events-jsonl", daemon=True
        )
        self._thread.start()

    def _make_handle(self, batch_size: int) -> Callable[[Event], None]:
        encoder = self._encoder
        encoders = encoder.line_encoders()
        careful = encoder.line
        put = self._queue.put

        def handle(event: Event) -> None:
            try:
                line = encoders[type(event)](event)
            except (KeyError, TypeError, ValueError, OverflowError):
                line = careful(event)  # what the compiled template refused
            lines = encoder.lines
            lines.append(line)
            if len(lines) >= batch_size:
                # A write error of the writer thread surfaces here, one batch after it happened.
                if self._error is not None:
                    raise self._storage_error()
                put(encoder.take())

        return handle

    @property
    def kinds(self) -> frozenset[EventKind]:
        return self._kinds

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.handle = self._refuse_after_close
        lines = self._encoder.take()
        if lines:
            self._queue.put(lines)
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

    def _refuse_after_close(self, event: Event) -> None:
        raise StorageError(
            f"the events file {self._path} is closed; a {event.kind} event handed over after "
            "close() was not written"
        )

    def _write_loop(self) -> None:
        handle: TextIO | None = None
        try:
            handle = self._path.open("w", encoding="utf-8")
            handle.write(self._header + "\n")
            while True:
                lines = self._queue.get()
                if lines is _STOP:
                    break
                lines.append("")  # the last line's newline
                handle.write("\n".join(lines))
        except BaseException as error:
            # Reported by the next hand-over or close(); the thread ends, and later batches
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

    Reads format version 2 and the version 1 files of earlier releases (one JSON object per
    event, also without a header). Raises ``StorageError`` naming the file and line when a line
    is not an event, and naming the version when the file was written by a later release."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            decoder: EventLineDecoder | None = None
            for number, line in enumerate(handle, start=1):
                text = line.strip()
                if not text:
                    continue
                where = f"{path} line {number}"
                if number == 1 and text.startswith('{"format"'):
                    decoder = _decoder_for_header(text, path)
                    continue
                if decoder is None:
                    yield decode_event(text, where=where)
                    continue
                event = decoder.decode(text, where=where)
                if event is not None:
                    yield event
    except OSError as exc:
        raise StorageError(f"cannot read events from {path}: {exc}") from exc


def read_events_header(path: Path) -> dict[str, Any]:
    """The header of an events file as a dict (only ``trace_sample_rate`` for a version 1 file
    without one).

    Its ``trace_sample_rate`` (checked; 1 when absent) is the share of task attempts whose
    detail events the file holds. Raises ``StorageError`` like :func:`read_events`."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            text = handle.readline().strip()
    except OSError as exc:
        raise StorageError(f"cannot read events from {path}: {exc}") from exc
    if not text.startswith('{"format"'):
        return {"trace_sample_rate": 1.0}
    header = _parse_header(text, path)
    header["trace_sample_rate"] = trace_sample_rate_of(header)
    return header


def _parse_header(text: str, path: Path) -> dict[str, Any]:
    try:
        header = json.loads(text)
    except ValueError as exc:
        raise StorageError(f"{path} line 1 is not a Sluiceway events header ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != EVENTS_FORMAT:
        raise StorageError(f"{path} is not a Sluiceway events file")
    return header


def _decoder_for_header(text: str, path: Path) -> EventLineDecoder | None:
    """The decoder of a version 2 file, None for version 1; ``StorageError`` for the rest."""
    header = _parse_header(text, path)
    version = header.get("format_version", 1)
    if version not in READABLE_FORMAT_VERSIONS:
        raise StorageError(
            f"{path} has events format_version {version!r}; this version of Sluiceway reads "
            f"versions {', '.join(map(str, READABLE_FORMAT_VERSIONS))}: read it with the "
            "release that wrote it, or upgrade"
        )
    if version == 1:
        return None
    return EventLineDecoder(header, where=str(path))
