"""JSONL sink and codec: every kind round-trips; write failures disable the sink."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from observability_samples import sample_event, synthetic_run

from sluiceway.errors import StorageError
from sluiceway.observability import (
    EVENT_TYPES,
    EventBus,
    EventKind,
    JsonlEventSink,
    MemoryEventSink,
    event_from_dict,
    event_to_dict,
    read_events,
)
from sluiceway.observability.codes import RequestDomainCode, RequestOutcomeCode
from sluiceway.observability.request_events import ModelRequestCompleted


def test_every_kind_has_one_frozen_slotted_class() -> None:
    assert list(EVENT_TYPES) == list(EventKind)
    for kind, cls in EVENT_TYPES.items():
        assert cls.kind is kind
        assert "__slots__" in vars(cls)
        assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", list(EventKind))
def test_every_kind_round_trips_through_json(kind: EventKind) -> None:
    event = sample_event(kind)
    data = json.loads(json.dumps(event_to_dict(event)))
    assert data["kind"] == kind.value
    assert data["stream"] == kind.stream.value
    assert data["correlation"]["group_kind"] == "model"
    assert len(data["correlation"]["group_hash"]) == 12
    assert event_from_dict(data) == event


def test_a_run_round_trips_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    memory = MemoryEventSink()
    bus = EventBus([JsonlEventSink(path, batch_size=3), memory])
    for event in synthetic_run():
        bus.emit(event)
    bus.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"format": "sluiceway-events", "format_version": 1}
    assert list(read_events(path)) == list(memory.events)


def test_non_finite_floats_are_written_as_null(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with JsonlEventSink(path) as sink:
        sink.handle(
            ModelRequestCompleted(
                provider="sim",
                model="m",
                domain=RequestDomainCode.CHAT,
                attempt_id=1,
                lease_id=1,
                outcome=RequestOutcomeCode.SUCCESS,
                latency_seconds=math.inf,
            )
        )
    line = path.read_text(encoding="utf-8").splitlines()[1]
    assert json.loads(line)["latency_seconds"] is None
    (event,) = read_events(path)
    assert math.isnan(event.latency_seconds)  # type: ignore[attr-defined]


def test_a_damaged_line_is_reported_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with JsonlEventSink(path) as sink:
        sink.handle(sample_event(EventKind.SELECTED))
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"kind": "selected"}\n')
    with pytest.raises(StorageError, match="line 3"):
        list(read_events(path))


def test_an_unwritable_file_disables_the_sink_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = JsonlEventSink(tmp_path / "missing" / "events.jsonl", batch_size=1)
    memory = MemoryEventSink()
    bus = EventBus([sink, memory])
    with caplog.at_level(logging.ERROR, logger="sluiceway.observability"):
        # The writer thread reports its error on a later call; close() waits for it.
        bus.emit(sample_event(EventKind.SELECTED))
        bus.close()
        bus.emit(sample_event(EventKind.SELECTED))
    assert len(memory.events) == 2
    assert bus.statistics().disabled_sinks == ("JsonlEventSink",)
    assert len(caplog.records) == 1
