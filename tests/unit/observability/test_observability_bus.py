"""EventBus: events are built only for listening sinks, sequences per stream, sink failures."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
from observability_samples import sample_event

from sluiceway.errors import EngineError
from sluiceway.observability import (
    REQUEST_KINDS,
    SCHEDULER_KINDS,
    EventBus,
    EventKind,
    EventStream,
    MemoryEventSink,
)
from sluiceway.observability.events import Event
from sluiceway.observability.scheduler_events import Selected


class CountingFactory:
    """Builds a sample event and counts how often it was asked to."""

    def __init__(self, kind: EventKind) -> None:
        self.kind = kind
        self.calls = 0

    def __call__(self) -> Event:
        self.calls += 1
        return sample_event(self.kind)


class FailingSink:
    def __init__(self, kinds: frozenset[EventKind] = frozenset(EventKind)) -> None:
        self.kinds = kinds
        self.handled = 0
        self.closed = 0

    def handle(self, event: Event) -> None:
        self.handled += 1
        raise OSError("disk full")

    def close(self) -> None:
        self.closed += 1


def test_every_canonical_kind_has_a_stream() -> None:
    assert len(SCHEDULER_KINDS) == 27
    assert len(REQUEST_KINDS) == 23
    assert frozenset(EventKind) == SCHEDULER_KINDS | REQUEST_KINDS
    assert EventKind.REQUEST_PRESSURE_ADVISORY_SKIPPED.stream is EventStream.SCHEDULER
    assert EventKind.MODEL_REQUEST_STARTED.stream is EventStream.REQUEST


def test_no_event_is_built_when_no_sink_listens() -> None:
    bus = EventBus()
    factory = CountingFactory(EventKind.SELECTED)
    for _ in range(3):
        if bus.wants(EventKind.SELECTED):
            bus.emit(factory())
        bus.emit_lazy(EventKind.SELECTED, factory)
    assert factory.calls == 0


def test_no_event_is_built_for_a_kind_no_sink_listens_for() -> None:
    sink = MemoryEventSink({EventKind.TASK_COMPLETED})
    bus = EventBus([sink])
    unwanted = CountingFactory(EventKind.SELECTED)
    wanted = CountingFactory(EventKind.TASK_COMPLETED)
    bus.emit_lazy(EventKind.SELECTED, unwanted)
    bus.emit_lazy(EventKind.TASK_COMPLETED, wanted)
    assert unwanted.calls == 0
    assert wanted.calls == 1
    assert [event.kind for event in sink.events] == [EventKind.TASK_COMPLETED]


def test_wants_follows_sinks_added_and_removed() -> None:
    bus = EventBus()
    sink = MemoryEventSink({EventKind.QUEUE_EMPTY})
    assert not bus.wants(EventKind.QUEUE_EMPTY)
    bus.add_sink(sink)
    assert bus.wants(EventKind.QUEUE_EMPTY)
    bus.remove_sink(sink)
    assert not bus.wants(EventKind.QUEUE_EMPTY)


def test_sequences_are_monotonic_per_stream() -> None:
    sink = MemoryEventSink()
    bus = EventBus([sink])
    kinds = [EventKind.SELECTED, EventKind.REQUEST_WAIT_STARTED] * 5 + [EventKind.QUEUE_EMPTY]
    for kind in kinds:
        bus.emit(sample_event(kind))
    for stream in EventStream:
        sequences = [event.sequence for event in sink.of_stream(stream)]
        assert sequences == list(range(len(sequences)))
    assert len(sink.of_stream(EventStream.SCHEDULER)) == 6
    assert bus.statistics().emitted_by_stream[EventStream.REQUEST] == 5


def test_an_event_is_delivered_once() -> None:
    bus = EventBus([MemoryEventSink()])
    event = sample_event(EventKind.SELECTED)
    bus.emit(event)
    with pytest.raises(EngineError, match="emitted twice"):
        bus.emit(event)


def test_a_failing_sink_is_disabled_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    failing = FailingSink()
    healthy = MemoryEventSink()
    bus = EventBus([failing, healthy])
    with caplog.at_level(logging.ERROR, logger="sluiceway.observability"):
        for _ in range(5):
            bus.emit(sample_event(EventKind.SELECTED))
    assert failing.handled == 1
    assert failing.closed == 1
    assert len(healthy.events) == 5
    messages = [record for record in caplog.records if "FailingSink" in record.getMessage()]
    assert len(messages) == 1
    assert "disabled" in messages[0].getMessage()
    assert bus.statistics().disabled_sinks == ("FailingSink",)
    assert bus.wants(EventKind.SELECTED)  # the healthy sink still listens


def test_a_sink_failing_to_close_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    class BadClose(MemoryEventSink):
        def close(self) -> None:
            raise RuntimeError("cannot flush")

    bus = EventBus([BadClose()])
    with caplog.at_level(logging.ERROR, logger="sluiceway.observability"):
        bus.close()
    assert len(caplog.records) == 1
    assert bus.statistics().active_sinks == 0


def test_something_that_is_not_a_sink_is_refused() -> None:
    with pytest.raises(EngineError, match="not an event sink"):
        EventBus([object()])  # type: ignore[list-item]


def test_memory_sink_keeps_the_newest_events_when_bounded() -> None:
    sink = MemoryEventSink(max_events=2)
    bus = EventBus([sink])
    for _ in range(4):
        bus.emit(sample_event(EventKind.SELECTED))
    assert [event.sequence for event in sink.events] == [2, 3]


def test_an_event_subclass_outside_the_catalog_is_routed_by_its_kind() -> None:
    @dataclass(frozen=True, slots=True, kw_only=True)
    class NotedSelected(Selected):
        note: str = "n"

    selected = MemoryEventSink({EventKind.SELECTED})
    other = MemoryEventSink({EventKind.QUEUE_EMPTY})
    bus = EventBus([selected, other])
    for _ in range(2):  # the second emission uses the route learned by the first
        bus.emit(NotedSelected(task_id="t", column="c", row_group=0, group="g"))
    bus.emit(sample_event(EventKind.SELECTED))
    assert [type(event) for event in selected.events] == [NotedSelected, NotedSelected, Selected]
    assert [event.sequence for event in selected.events] == [0, 1, 2]
    assert other.events == ()
    bus.remove_sink(selected)  # routes are rebuilt: the subclass is learned again, unrouted
    bus.emit(NotedSelected(task_id="t", column="c", row_group=0, group="g"))
    assert len(selected.events) == 3


def test_the_bus_reads_a_sinks_handle_at_every_delivery() -> None:
    class Swapping:
        kinds = frozenset({EventKind.SELECTED})

        def __init__(self) -> None:
            self.first: list[Event] = []
            self.second: list[Event] = []
            self.handle = self.first.append

        def close(self) -> None:
            pass

    sink = Swapping()
    bus = EventBus([sink])
    bus.emit(sample_event(EventKind.SELECTED))
    sink.handle = sink.second.append
    bus.emit(sample_event(EventKind.SELECTED))
    assert (len(sink.first), len(sink.second)) == (1, 1)
