"""``MemoryEventSink``: keeps events in a list, for tests, previews and post-run analysis."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from sluiceway.observability.bus import ALL_KINDS
from sluiceway.observability.events import Event
from sluiceway.observability.kinds import EventKind, EventStream


class MemoryEventSink:
    """Keeps the events of ``kinds`` (default: all) in arrival order. With ``max_events``, only
    the newest that many are kept. Never blocks or raises."""

    __slots__ = ("_events", "_kinds", "handle")

    handle: Callable[[Event], None]
    """Keep one event (the deque's bound ``append``: no Python frame per event)."""

    def __init__(
        self, kinds: Iterable[EventKind] = ALL_KINDS, *, max_events: int | None = None
    ) -> None:
        self._kinds = frozenset(kinds)
        self._events: deque[Event] = deque(maxlen=max_events)
        self.handle = self._events.append

    @property
    def kinds(self) -> frozenset[EventKind]:
        return self._kinds

    def close(self) -> None:
        pass

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple(self._events)

    def of_kind(self, kind: EventKind) -> tuple[Event, ...]:
        return tuple(event for event in self._events if event.kind is kind)

    def of_stream(self, stream: EventStream) -> tuple[Event, ...]:
        return tuple(event for event in self._events if event.stream is stream)

    def clear(self) -> None:
        self._events.clear()
