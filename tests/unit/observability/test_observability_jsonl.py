"""JSONL sink and codec: the version 2 file format round-trips every kind and every value,
correlations are written once, old files are read, and failures disable the sink."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from observability_samples import CORRELATION, sample_event, synthetic_run

from sluiceway.context import TaskCorrelation
from sluiceway.errors import StorageError
from sluiceway.observability import (
    EVENT_TYPES,
    EventBus,
    EventKind,
    JsonlEventSink,
    MemoryEventSink,
    event_from_dict,
    event_to_dict,
    jsonl_format,
    read_events,
)
from sluiceway.observability.codec import decode_event, encode_event, event_field_names
from sluiceway.observability.codes import RequestDomainCode, RequestOutcomeCode
from sluiceway.observability.events import Event
from sluiceway.observability.jsonl_format import (
    CORRELATION_FIELDS,
    EVENT_HEAD,
    EventLineEncoder,
    captured_at_value,
)
from sluiceway.observability.request_events import ModelRequestCompleted, RequestRateLimited
from sluiceway.observability.scheduler_events import Selected
from sluiceway.values import has_fast_init


def _write(path: Path, events: list[Event], *, batch_size: int = 2048) -> None:
    with JsonlEventSink(path, batch_size=batch_size) as sink:
        for event in events:
            sink.handle(event)


def _lines(path: Path) -> list[list[object]]:
    """The rows after the header."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[1:]]


def _completed(**changes: object) -> ModelRequestCompleted:
    fields: dict[str, object] = {
        "provider": "sim",
        "model": "m",
        "domain": RequestDomainCode.CHAT,
        "attempt_id": 1,
        "lease_id": 2,
        "outcome": RequestOutcomeCode.SUCCESS,
        "latency_seconds": 0.25,
        "input_tokens": 3,
        "output_tokens": None,
        "captured_at": 12.5,
        "correlation": CORRELATION,
    }
    fields.update(changes)
    return ModelRequestCompleted(**fields)  # type: ignore[arg-type]


# -- the event classes and the dict codec --------------------------------------------------------


def test_every_kind_has_one_frozen_slotted_class_with_a_fast_init() -> None:
    assert list(EVENT_TYPES) == list(EventKind)
    for kind, cls in EVENT_TYPES.items():
        assert cls.kind is kind
        assert "__slots__" in vars(cls)
        assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        assert has_fast_init(cls), cls.__name__


@pytest.mark.parametrize("kind", list(EventKind))
def test_every_kind_round_trips_through_json(kind: EventKind) -> None:
    event = sample_event(kind)
    data = json.loads(json.dumps(event_to_dict(event)))
    assert data["kind"] == kind.value
    assert data["stream"] == kind.stream.value
    assert data["correlation"]["group_kind"] == "model"
    assert len(data["correlation"]["group_hash"]) == 12
    assert event_from_dict(data) == event


@pytest.mark.parametrize("kind", list(EventKind))
@pytest.mark.parametrize("correlated", [True, False])
def test_the_object_encoder_writes_the_json_of_event_to_dict(
    kind: EventKind, correlated: bool
) -> None:
    event = sample_event(kind) if correlated else sample_event(kind, correlation=None)
    assert json.loads(encode_event(event)) == event_to_dict(event)
    assert decode_event(encode_event(event)) == event


def test_the_object_encoder_escapes_names_and_nulls_non_finite_floats() -> None:
    event = _completed(provider='p"\\\n', model="modèle/✓", latency_seconds=math.inf)
    data = json.loads(encode_event(event))
    assert data == json.loads(json.dumps(event_to_dict(event)))
    assert (data["provider"], data["model"]) == ('p"\\\n', "modèle/✓")
    assert data["latency_seconds"] is None
    assert data["input_tokens"] == 3 and data["output_tokens"] is None


# -- the version 2 file --------------------------------------------------------------------------


def test_a_run_round_trips_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    memory = MemoryEventSink()
    bus = EventBus([JsonlEventSink(path, batch_size=3), memory])
    for event in synthetic_run():
        bus.emit(event)
    bus.close()
    header = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert (header["format"], header["format_version"]) == ("sluiceway-events", 2)
    assert header["event_head"] == list(EVENT_HEAD)
    assert header["correlation_fields"] == list(CORRELATION_FIELDS)
    assert header["fields"] == {
        kind.value: list(event_field_names(cls)) for kind, cls in EVENT_TYPES.items()
    }
    assert list(read_events(path)) == list(memory.events)


@pytest.mark.parametrize("correlated", [True, False])
def test_every_kind_round_trips_through_the_file(tmp_path: Path, correlated: bool) -> None:
    correlation = CORRELATION if correlated else None
    events = [sample_event(kind, correlation=correlation) for kind in EventKind]
    path = tmp_path / "events.jsonl"
    _write(path, events)
    assert list(read_events(path)) == events
    rows = _lines(path)
    assert [row[0] for row in rows if row[0] != "correlation"] == [kind.value for kind in EventKind]


def test_the_compiled_line_of_every_kind_equals_the_checked_line() -> None:
    encoder = EventLineEncoder()
    for kind, cls in EVENT_TYPES.items():
        event = sample_event(kind)
        compiled = encoder.line_encoders()[cls](event)
        assert json.loads(compiled) == json.loads(encoder.line(event)), kind
        encoder.add(event)
        assert encoder.take()[-1] == compiled
    assert encoder.take() == []


def test_a_correlation_is_written_once_before_its_first_use(tmp_path: Path) -> None:
    other = TaskCorrelation(
        run_id="run-1",
        task_id="text/0/1",
        column="text",
        row_group=0,
        row_index=None,
        task_kind="cell",
        group_key="custom_model:x",
        group_weight=1,
        execution_id=8,
        traced=False,  # an untraced attempt's always-recorded events carry it
    )
    events = [
        _completed(correlation=CORRELATION, attempt_id=1),
        _completed(correlation=None, attempt_id=2),
        _completed(correlation=other, attempt_id=3),
        _completed(correlation=CORRELATION, attempt_id=4),
        _completed(correlation=other, attempt_id=5),
    ]
    path = tmp_path / "events.jsonl"
    _write(path, events, batch_size=2)
    rows = _lines(path)
    definitions = [row for row in rows if row[0] == "correlation"]
    assert [row[1] for row in definitions] == [1, 2]
    assert dict(zip(CORRELATION_FIELDS, definitions[1][2:], strict=True)) == {
        "run_id": "run-1",
        "task_id": "text/0/1",
        "column": "text",
        "row_group": 0,
        "row_index": None,
        "task_kind": "cell",
        "group_key": "custom_model:x",
        "group_kind": "custom_model",
        "group_hash": definitions[1][10],
        "group_weight": 1,
        "execution_id": 8,
        "traced": False,
    }
    references = [row[3] for row in rows if row[0] != "correlation"]
    assert references == [1, None, 2, 1, 2]
    first_use = next(i for i, row in enumerate(rows) if row[0] != "correlation" and row[3] == 2)
    assert rows.index(definitions[1]) < first_use
    back = list(read_events(path))
    assert back == events
    assert back[0].correlation is back[3].correlation  # one object per correlation line


def test_the_correlation_table_starts_afresh_without_reusing_a_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonl_format, "_MAX_NUMBERED_CORRELATIONS", 2)
    correlations = [
        TaskCorrelation(
            run_id="r",
            task_id=f"t/{index}",
            column="t",
            row_group=0,
            row_index=index,
            task_kind="cell",
            group_key="local:default",
            group_weight=1,
            execution_id=index,
        )
        for index in range(5)
    ]
    events = [_completed(correlation=correlations[i % 5], attempt_id=i) for i in range(20)]
    path = tmp_path / "events.jsonl"
    _write(path, events, batch_size=4)
    numbers = [row[1] for row in _lines(path) if row[0] == "correlation"]
    assert numbers == sorted(set(numbers)) and len(numbers) > 5
    assert list(read_events(path)) == events


def test_timestamps_are_whole_nanoseconds_when_that_is_exact(tmp_path: Path) -> None:
    now = time.monotonic()
    odd = 0.1 + 0.2  # not a whole number of nanoseconds
    events = [_completed(captured_at=now), _completed(captured_at=odd), _completed(captured_at=7)]
    path = tmp_path / "events.jsonl"
    _write(path, events)
    stamps = [row[2] for row in _lines(path) if row[0] != "correlation"]
    assert type(stamps[0]) is int and stamps[0] / 1e9 == now
    assert stamps[1] == odd and isinstance(stamps[1], float)
    assert stamps[2] == 7_000_000_000
    assert [event.captured_at for event in read_events(path)] == [now, odd, 7.0]
    assert captured_at_value(math.nan) is None
    assert captured_at_value(1e300) == 1e300


def test_non_finite_floats_are_written_as_null(tmp_path: Path) -> None:
    events: list[Event] = [
        _completed(latency_seconds=math.inf),
        _completed(latency_seconds=math.nan, captured_at=math.inf),
        RequestRateLimited(
            provider="sim",
            model="m",
            domain=RequestDomainCode.CHAT,
            attempt_id=1,
            retry_after_seconds=math.inf,
            cooldown_seconds=1.5,
            captured_at=3.0,
        ),
    ]
    path = tmp_path / "events.jsonl"
    _write(path, events)
    first, second, third = (row for row in _lines(path) if row[0] != "correlation")
    latency = event_field_names(ModelRequestCompleted).index("latency_seconds") + len(EVENT_HEAD)
    assert first[latency] is None and second[latency] is None and second[2] is None
    assert third[-2:] == [None, 1.5]
    one, two, three = read_events(path)
    assert math.isnan(one.latency_seconds)  # type: ignore[attr-defined]
    assert math.isnan(two.captured_at)
    assert three.retry_after_seconds is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "name",
    ['q"uote', "back\\slash", "new\nline", "x],[y", "],[", "100%s%d", "modèle/✓", "\x00\x1f", ""],
)
def test_strings_that_need_escaping_round_trip(tmp_path: Path, name: str) -> None:
    events = [_completed(provider=name, model=name), _completed(provider="sim", model=name)]
    path = tmp_path / "events.jsonl"
    _write(path, events)
    assert len(path.read_text(encoding="utf-8").splitlines()) == 1 + 1 + 2
    assert list(read_events(path)) == events


_text = st.text(max_size=12)
_any_float = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=60, deadline=None)
@given(
    provider=_text,
    model=_text,
    latency=_any_float,
    captured_at=_any_float,
    tokens=st.none() | st.integers(min_value=-(2**70), max_value=2**70),
    attempt=st.integers(min_value=-(2**40), max_value=2**40),
)
def test_any_values_round_trip_through_the_file(
    tmp_path_factory: pytest.TempPathFactory,
    provider: str,
    model: str,
    latency: float,
    captured_at: float,
    tokens: int | None,
    attempt: int,
) -> None:
    event = _completed(
        provider=provider,
        model=model,
        latency_seconds=latency,
        captured_at=captured_at,
        input_tokens=tokens,
        attempt_id=attempt,
    )
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    _write(path, [event])
    json.loads(path.read_text(encoding="utf-8").splitlines()[-1])  # strict JSON
    (back,) = read_events(path)
    assert isinstance(back, ModelRequestCompleted)
    assert (back.provider, back.model, back.input_tokens, back.attempt_id) == (
        provider,
        model,
        tokens,
        attempt,
    )
    for written, read in ((latency, back.latency_seconds), (captured_at, back.captured_at)):
        assert read == written if math.isfinite(written) else math.isnan(read)


def test_fields_are_read_in_the_order_the_header_lists(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    event = sample_event(EventKind.SELECTED, correlation=None)
    _write(path, [event])
    header_text, line = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(header_text)
    names = header["fields"]["selected"]
    header["fields"]["selected"] = names[::-1]
    row = json.loads(line)
    row[len(EVENT_HEAD) :] = row[len(EVENT_HEAD) :][::-1]
    path.write_text(json.dumps(header) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    assert list(read_events(path)) == [event]


def test_a_damaged_line_is_reported_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    _write(path, [sample_event(EventKind.SELECTED)])
    written = len(path.read_text(encoding="utf-8").splitlines())
    with path.open("a", encoding="utf-8") as handle:
        handle.write('["selected", 1]\n')
    with pytest.raises(StorageError, match=f"line {written + 1}"):
        list(read_events(path))


def test_an_unknown_kind_or_correlation_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    _write(path, [sample_event(EventKind.SELECTED, correlation=None)])
    text = path.read_text(encoding="utf-8")
    (tmp_path / "kind.jsonl").write_text(text + '["no_such_kind",1,2,null]\n', encoding="utf-8")
    with pytest.raises(StorageError, match=r"line 3 .*unknown to this version"):
        list(read_events(tmp_path / "kind.jsonl"))
    row = json.loads(text.splitlines()[1])
    row[3] = 99
    (tmp_path / "ref.jsonl").write_text(
        text.splitlines()[0] + "\n" + json.dumps(row) + "\n", encoding="utf-8"
    )
    with pytest.raises(StorageError, match="line 2"):
        list(read_events(tmp_path / "ref.jsonl"))


def test_a_file_of_a_later_format_version_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"format":"sluiceway-events","format_version":3}\n[]\n', encoding="utf-8")
    with pytest.raises(StorageError, match="format_version 3; this version of Sluiceway reads"):
        list(read_events(path))
    path.write_text('{"format":"something-else"}\n', encoding="utf-8")
    with pytest.raises(StorageError, match="not a Sluiceway events file"):
        list(read_events(path))


def test_a_header_without_its_field_lists_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"format":"sluiceway-events","format_version":2}\n', encoding="utf-8")
    with pytest.raises(StorageError, match="header lacks"):
        list(read_events(path))


@pytest.mark.parametrize("with_header", [True, False])
def test_version_1_files_are_still_read(tmp_path: Path, with_header: bool) -> None:
    events = synthetic_run()
    header = '{"format": "sluiceway-events", "format_version": 1}\n' if with_header else ""
    path = tmp_path / "events.jsonl"
    path.write_text(
        header + "".join(encode_event(event) + "\n" for event in events), encoding="utf-8"
    )
    assert list(read_events(path)) == events


# -- the sink ------------------------------------------------------------------------------------


def test_an_unwritable_file_disables_the_sink_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = JsonlEventSink(tmp_path / "missing" / "events.jsonl", batch_size=1)
    memory = MemoryEventSink()
    bus = EventBus([sink, memory])
    with caplog.at_level(logging.ERROR, logger="sluiceway.observability"):
        # The writer thread reports its error on a later hand-over; close() waits for it.
        bus.emit(sample_event(EventKind.SELECTED))
        bus.close()
        bus.emit(sample_event(EventKind.SELECTED))
    assert len(memory.events) == 2
    assert bus.statistics().disabled_sinks == ("JsonlEventSink",)
    assert len(caplog.records) == 1
    assert "missing" in caplog.records[0].getMessage()


def test_an_event_handed_over_after_close_is_refused_not_lost_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = JsonlEventSink(tmp_path / "events.jsonl")
    sink.close()
    with pytest.raises(StorageError, match="closed"):
        sink.handle(sample_event(EventKind.SELECTED))
    bus = EventBus([sink])
    with caplog.at_level(logging.ERROR, logger="sluiceway.observability"):
        bus.emit(sample_event(EventKind.SELECTED))
    assert bus.statistics().disabled_sinks == ("JsonlEventSink",)
    assert list(read_events(tmp_path / "events.jsonl")) == []


def test_an_event_class_outside_the_catalog_is_refused(tmp_path: Path) -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Extended(Selected):
        note: str = "x"

    sink = JsonlEventSink(tmp_path / "events.jsonl")
    with pytest.raises(TypeError, match="catalog's event classes only, not"):
        sink.handle(Extended(task_id="t", column="c", row_group=0, group="g", captured_at=1.0))
    sink.handle(sample_event(EventKind.SELECTED))
    sink.close()
    assert [event.kind for event in read_events(tmp_path / "events.jsonl")] == ["selected"]


def test_every_event_handed_over_is_written_whatever_the_batch_size(tmp_path: Path) -> None:
    events = [sample_event(EventKind.SELECTED, correlation=None) for _ in range(10)]
    for batch_size in (1, 3, 10, 11):
        path = tmp_path / f"events-{batch_size}.jsonl"
        _write(path, events, batch_size=batch_size)
        assert list(read_events(path)) == events
    with pytest.raises(ValueError, match="batch_size"):
        JsonlEventSink(tmp_path / "x.jsonl", batch_size=0)
