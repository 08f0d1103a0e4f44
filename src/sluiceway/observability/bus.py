"""The event bus: routes each event to the sinks that listen for its kind.

Emission points build an event only when some sink listens::

    if bus.wants(EventKind.TASK_LEASE_ACQUIRED):
        bus.emit(TaskLeaseAcquired(task_id=..., lease_id=...))

``wants`` is a bound ``frozenset.__contains__``, so with no sink the whole cost is one C-level
set lookup. ``emit`` stamps the event's per-stream ``sequence`` and hands it to each listening
sink in turn; a sink that raises is disabled and logged once, and the others go on. Routes are
looked up by the event's class (an identity hash), and ``handle`` may be any callable attribute,
so a sink whose ``handle`` is a bound C method (``deque.append``) costs no Python frame.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from sluiceway.errors import EngineError
from sluiceway.observability.catalog import EVENT_TYPES
from sluiceway.observability.events import UNSEQUENCED, Event
from sluiceway.observability.kinds import EventKind, EventStream

logger = logging.getLogger("sluiceway.observability")

ALL_KINDS: frozenset[EventKind] = frozenset(EventKind)

# The slot of ``Event.sequence``: setting it through the descriptor is the one write to a frozen
# event (its place in the stream, known only on delivery), and cheaper than object.__setattr__.
_set_sequence: Callable[[Event, int], None] = vars(Event)["sequence"].__set__

# A route: the sinks listening for a kind, the sequence counter of its stream, and its stream.
_Route = tuple[tuple["EventSink", ...], Iterator[int], EventStream]
# Compared by identity: what the class table gives for a class it has not seen yet.
_UNKNOWN_CLASS: _Route = ((), itertools.count(), EventStream.SCHEDULER)


@runtime_checkable
class EventSink(Protocol):
    """Receives events. ``kinds`` lists the kinds it listens for (read once, when the sink is
    added). ``handle`` runs on the emitting thread (the event loop) and must be quick; raising
    disables the sink. The bus reads ``sink.handle`` at every delivery, so a sink may replace it
    (an instance attribute holding a callable is fine). ``close`` flushes and frees resources;
    it may block."""

    @property
    def kinds(self) -> frozenset[EventKind]: ...

    def handle(self, event: Event) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class EventBusStatistics:
    emitted_by_stream: Mapping[EventStream, int]
    active_sinks: int
    disabled_sinks: tuple[str, ...]


def _sink_name(sink: EventSink) -> str:
    return type(sink).__name__


class EventBus:
    """Routes events to sinks by kind.

    Not thread-safe for adding sinks; ``emit`` may be called from any thread the engine emits
    from, but sequences are only ordered within one thread (the event loop in practice).
    ``emit`` never raises because of a sink: a sink's ``Exception`` disables that sink (logged
    once at ERROR with the traceback); ``BaseException`` such as ``CancelledError`` propagates.
    """

    __slots__ = (
        "_disabled",
        "_emitted",
        "_kind_routes",
        "_routes",
        "_sequences",
        "_sinks",
        "wants",
    )

    wants: Callable[[EventKind], bool]
    """True when at least one active sink listens for the kind; build the event only then."""

    def __init__(self, sinks: Iterable[EventSink] = ()) -> None:
        self._sinks: list[EventSink] = []
        self._disabled: list[str] = []
        self._sequences = {stream: itertools.count() for stream in EventStream}
        self._emitted = dict.fromkeys(EventStream, 0)
        # kind -> its route; event class -> its route (None: no sink listens), filled for the
        # catalog's classes up front and for other Event subclasses on their first emission.
        self._kind_routes: dict[EventKind, _Route] = {}
        self._routes: dict[type[Event], _Route | None] = {}
        self.wants = frozenset[EventKind]().__contains__
        self._rebuild_routes()
        for sink in sinks:
            self.add_sink(sink)

    # -- sinks ---------------------------------------------------------------------------------

    def add_sink(self, sink: EventSink) -> None:
        if not isinstance(sink, EventSink):
            raise EngineError(
                f"{sink!r} is not an event sink: it needs kinds, handle(event) and close()"
            )
        self._sinks.append(sink)
        self._rebuild_routes()

    def remove_sink(self, sink: EventSink) -> None:
        """Stop routing to ``sink`` without closing it."""
        self._sinks = [other for other in self._sinks if other is not sink]
        self._rebuild_routes()

    @property
    def sinks(self) -> tuple[EventSink, ...]:
        return tuple(self._sinks)

    def _rebuild_routes(self) -> None:
        routes: dict[EventKind, list[EventSink]] = {}
        for sink in self._sinks:
            for kind in sink.kinds:
                routes.setdefault(kind, []).append(sink)
        self._kind_routes = {
            kind: (tuple(found), self._sequences[kind.stream], kind.stream)
            for kind, found in routes.items()
        }
        self._routes = {cls: self._kind_routes.get(kind) for kind, cls in EVENT_TYPES.items()}
        self.wants = frozenset(self._kind_routes).__contains__

    def _route_of(self, cls: type[Event]) -> _Route | None:
        """The route of an event class the catalog does not list (a subclass), by its kind."""
        route = self._kind_routes.get(cls.kind)
        self._routes = {**self._routes, cls: route}
        return route

    def _disable(self, sink: EventSink, error: BaseException, action: str) -> None:
        if not any(other is sink for other in self._sinks):
            return
        self.remove_sink(sink)
        self._disabled.append(_sink_name(sink))
        logger.error(
            "event sink %s failed in %s and is disabled; the run goes on without it (%s: %s)",
            _sink_name(sink),
            action,
            type(error).__name__,
            error,
            exc_info=error,
        )
        if action != "close":
            # Free its resources; it is already failing, and its first error is the one logged.
            with contextlib.suppress(Exception):
                sink.close()

    # -- emission ------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Stamp ``event.sequence`` and deliver it to every sink listening for its kind.

        An event nobody listens for is dropped unstamped. Raises ``EngineError`` if the event
        was already delivered by a bus (events are delivered once)."""
        route = self._routes.get(type(event), _UNKNOWN_CLASS)
        if route is _UNKNOWN_CLASS:
            route = self._route_of(type(event))
        if route is None:
            return
        if event.sequence != UNSEQUENCED:
            raise EngineError(
                f"{event.kind} event with sequence {event.sequence} was emitted twice; build a "
                "new event for every emission"
            )
        sinks, sequence, stream = route
        _set_sequence(event, next(sequence))
        self._emitted[stream] += 1
        for sink in sinks:
            try:
                sink.handle(event)
            except Exception as error:
                self._disable(sink, error, "handle")

    def emit_lazy(self, kind: EventKind, build: Callable[[], Event]) -> None:
        """``emit(build())`` if some sink listens for ``kind``; ``build`` is not called
        otherwise. Costs a closure per call site: prefer ``if bus.wants(kind):`` in hot code."""
        if self.wants(kind):
            self.emit(build())

    # -- end -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every sink (flushing files). A sink failing to close is logged and disabled."""
        for sink in list(self._sinks):
            try:
                sink.close()
            except Exception as error:
                self._disable(sink, error, "close")

    def statistics(self) -> EventBusStatistics:
        return EventBusStatistics(
            emitted_by_stream=MappingProxyType(dict(self._emitted)),
            active_sinks=len(self._sinks),
            disabled_sinks=tuple(self._disabled),
        )
