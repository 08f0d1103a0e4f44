"""The events file format (``format_version`` 2): one compact JSON array per line.

A file is a header line and then one JSON array per line::

    {"format":"sluiceway-events","format_version":2,"event_head":[...],
     "correlation_fields":[...],"fields":{"<kind>":["<field>",...],...},
     "trace_sample_rate":0.0625}
    ["correlation",1,"<run_id>","text/0/0","text",0,0,"cell","model:sim:m:text","model",...]
    ["task_completed",5,4298913499862,1,"text/0/0","text",0,"model:sim:m:text",1,71,"success",null]

- An *event line* is ``[kind, sequence, captured_at, correlation, <fields>]``: the fields are the
  kind's own, in the order the header's ``fields`` lists for that kind. ``captured_at`` is an
  integer of nanoseconds when the value is a whole number of them (every ``time.monotonic()``
  reading is; ``n / 1e9`` gives the float back exactly), otherwise a number of seconds with a
  fraction or exponent. ``correlation`` is null or the number of a correlation line earlier in
  the file. Enums are written as their values, read-only mappings as objects, and non-finite
  floats as null.
- A *correlation line* is ``["correlation", number, <correlation_fields>]``: the task
  correlation that event lines refer to by ``number``, written just before its first use (the
  events of one task attempt share it). Numbers are never reused within a file.
- The header's ``trace_sample_rate`` is the share of task attempts whose per-attempt detail
  events the file holds (``observability.sampling``; 1 when absent, as in files written before
  trace sampling). The correlation's ``traced`` field says whether that task attempt is one of
  them (true when a file's header lists no such field).

:class:`EventLineEncoder` encodes one event at a time with a ``%`` template compiled per event
class (the way ``dataclasses`` compiles ``__init__``), so the sink can encode on the emitting
thread and keep only strings, which the garbage collector never scans. :class:`EventLineDecoder`
reads the lines back using the header's field lists, so a file stays readable when a later
version reorders fields. Version 1 files (one JSON object per event, see
``codec.event_to_dict``) are still read by ``jsonl_sink.read_events``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any

from sluiceway.context import TaskCorrelation
from sluiceway.errors import StorageError
from sluiceway.observability.catalog import EVENT_TYPES
from sluiceway.observability.codec import (
    correlation_from_dict,
    event_field_decoders,
    event_field_names,
    group_identity_hash,
    group_kind_of,
)
from sluiceway.observability.events import Event
from sluiceway.observability.kinds import EventKind
from sluiceway.observability.sampling import check_trace_sample_rate

EVENTS_FORMAT = "sluiceway-events"
EVENTS_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)

CORRELATION_TAG = "correlation"
EVENT_HEAD = ("kind", "sequence", "captured_at", "correlation")
CORRELATION_FIELDS = (
    "run_id",
    "task_id",
    "column",
    "row_group",
    "row_index",
    "task_kind",
    "group_key",
    "group_kind",
    "group_hash",
    "group_weight",
    "execution_id",
    "traced",
)
# Correlation fields a file may lack (written before they existed); read as their defaults.
OPTIONAL_CORRELATION_FIELDS = frozenset({"traced"})

NANOSECONDS = 1e9

# Correlations an encoder keeps numbered before its table starts afresh (one met again after
# that gets a second line with a new number), and strings whose JSON it keeps.
_MAX_NUMBERED_CORRELATIONS = 4096
_MAX_CACHED_STRINGS = 1 << 16

# Characters JSON leaves as they are but ``str.splitlines`` (and some editors) break lines at:
# written escaped, so each line of the file is one record for any line reader.
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}

_JSON_TEXT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _to_json(value: Any) -> str:
    return _JSON_TEXT(value).translate(_LINE_BREAKS)


def _json_string(value: str) -> str:
    return encode_basestring(value).translate(_LINE_BREAKS)


LineEncoder = Callable[[Event], str]


def header_line(*, trace_sample_rate: float = 1.0) -> str:
    """The first line of a version 2 file (without the newline)."""
    fields = {kind.value: list(event_field_names(cls)) for kind, cls in EVENT_TYPES.items()}
    return _to_json(
        {
            "format": EVENTS_FORMAT,
            "format_version": EVENTS_FORMAT_VERSION,
            "event_head": list(EVENT_HEAD),
            "correlation_fields": list(CORRELATION_FIELDS),
            "fields": fields,
            "trace_sample_rate": check_trace_sample_rate(trace_sample_rate),
        }
    )


def trace_sample_rate_of(header: Mapping[str, Any]) -> float:
    """The header's ``trace_sample_rate`` (1 when absent); ``StorageError`` for a bad value."""
    value = header.get("trace_sample_rate", 1.0)
    try:
        return check_trace_sample_rate(value)
    except ValueError as exc:
        raise StorageError(f"the events file header has a bad trace_sample_rate: {exc}") from exc


def captured_at_value(seconds: float) -> int | float | None:
    """``captured_at`` as the file writes it: whole nanoseconds as an int when that is exact,
    else the float; None when not finite."""
    if not math.isfinite(seconds):
        return None
    scaled = seconds * NANOSECONDS
    if not math.isfinite(scaled):
        return float(seconds)
    nanoseconds = round(scaled)
    try:
        exact = nanoseconds / NANOSECONDS == seconds
    except OverflowError:
        exact = False
    return nanoseconds if exact else float(seconds)


def _sane(value: Any) -> Any:
    """A field value as plain JSON data (the careful path of the encoder)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _sane(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_sane(item) for item in value]
    return value


def _json_other(value: Any) -> str:
    return _to_json(_sane(value))


def _is_str_type(annotation: Any) -> bool:
    return annotation is str or (isinstance(annotation, type) and issubclass(annotation, str))


def _optional_inner(annotation: Any) -> Any | None:
    """``X`` for ``X | None`` (one other member), else None."""
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return None


def _field_slot(name: str, annotation: Any) -> tuple[str, str]:
    """The template slot and the argument expression writing field ``name``."""
    value = f"event.{name}"
    inner = _optional_inner(annotation)
    if annotation is int:
        return "%d", value
    if annotation is float:
        return "%s", f"(_float_json(v) if (v := {value}) - v == 0 else 'null')"
    if _is_str_type(annotation):
        # A StrEnum member is a str: its JSON is its value's.
        return "%s", f"(_cached_json(v := {value}) or _string_json(v))"
    if inner is int:
        return "%s", f"('null' if (v := {value}) is None else '%d' % v)"
    if inner is float:
        return "%s", f"('null' if (v := {value}) is None or v - v != 0 else _float_json(v))"
    if inner is not None and _is_str_type(inner):
        return "%s", f"('null' if (v := {value}) is None else _cached_json(v) or _string_json(v))"
    return "%s", f"_json_other({value})"


def _compile_factory(cls: type[Event]) -> Callable[..., LineEncoder]:
    """Compile ``factory(number_of, define, cached_json, string_json) -> encode`` for ``cls``:
    ``encode(event)`` returns the event's line from one ``%`` template. It raises
    ``ValueError``/``OverflowError``/``TypeError`` for values it does not expect (a non-finite
    ``captured_at``, ``None`` in an int field, ...): the encoder then takes its careful path."""
    hints = typing.get_type_hints(cls)
    template = ["[" + encode_basestring(cls.kind.value).replace("%", "%%") + ",%d,%s,%s"]
    arguments = [
        "event.sequence",
        # Whole nanoseconds as an int when exact (a non-finite value raises: careful path).
        "(n if (n := _round((t := event.captured_at) * 1e9)) / 1e9 == t else _float_json(t))",
        "('null' if (c := event.correlation) is None else _number_of(id(c)) or _define(c))",
    ]
    for name in event_field_names(cls):
        if not name.isidentifier():
            raise TypeError(f"event field name {name!r} of {cls.__name__} is not an identifier")
        slot, argument = _field_slot(name, hints[name])
        template.append("," + slot)
        arguments.append(argument)
    template.append("]")
    source = (
        "def factory(_number_of, _define, _cached_json, _string_json):\n"
        "    def encode(event):\n"
        f"        return {''.join(template)!r} % ({', '.join(arguments)},)\n"
        "    return encode\n"
    )
    namespace: dict[str, Any] = {
        "_round": round,
        "_float_json": float.__repr__,
        "_json_other": _json_other,
    }
    # The source is built from field names checked above and the kind's JSON string.
    exec(compile(source, f"<events file line of {cls.__qualname__}>", "exec"), namespace)
    factory: Callable[..., LineEncoder] = namespace["factory"]
    return factory


_FACTORIES: Mapping[type[Event], Callable[..., LineEncoder]] = {
    cls: _compile_factory(cls) for cls in EVENT_TYPES.values()
}


def _correlation_values(correlation: TaskCorrelation) -> list[Any]:
    return [
        correlation.run_id,
        correlation.task_id,
        correlation.column,
        correlation.row_group,
        correlation.row_index,
        correlation.task_kind,
        correlation.group_key,
        group_kind_of(correlation.group_key),
        group_identity_hash(correlation.group_key),
        correlation.group_weight,
        correlation.execution_id,
        correlation.traced,
    ]


_CORRELATION_TEMPLATE = (
    "[" + encode_basestring(CORRELATION_TAG) + ",%d,%s,%s,%s,%d,%s,%s,%s,%s,%s,%d,%d,%s]"
)


_JSON_BOOLEANS = {True: "true", False: "false"}


def _correlation_line(number: int, correlation: TaskCorrelation) -> str:
    """The correlation's line (``_JSON`` of the same list, without building an encoder)."""
    try:
        row_index = correlation.row_index
        key = correlation.group_key
        return _CORRELATION_TEMPLATE % (
            number,
            _json_string(correlation.run_id),
            _json_string(correlation.task_id),
            _json_string(correlation.column),
            correlation.row_group,
            "null" if row_index is None else f"{row_index:d}",
            _json_string(correlation.task_kind),
            _json_string(key),
            _json_string(group_kind_of(key)),
            _json_string(group_identity_hash(key)),
            correlation.group_weight,
            correlation.execution_id,
            _JSON_BOOLEANS[correlation.traced],
        )
    except (
        TypeError,
        KeyError,
    ):  # a value of another type than declared: let the JSON encoder judge it
        return _to_json([CORRELATION_TAG, number, *_correlation_values(correlation)])


class EventLineEncoder:
    """Encodes events into the lines of one file, in the order they are added.

    :meth:`add` appends the event's line to :attr:`lines`, after the line of its correlation
    when that is new; :meth:`take` hands the lines over. Meant for one thread (the emitting
    one); from several, the file stays readable but lines of different threads interleave.
    """

    __slots__ = ("_encoders", "_held", "_next_number", "_numbers", "_strings", "lines")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._numbers: dict[int, str] = {}  # id(correlation) -> its number, as JSON
        self._held: list[TaskCorrelation] = []  # keeps each numbered id from being reused
        self._next_number = 1
        self._strings: dict[str, str] = {}  # a string -> its JSON
        self._encoders: dict[type[Event], LineEncoder] = {
            cls: factory(self._numbers.get, self._define, self._strings.get, self._string_json)
            for cls, factory in _FACTORIES.items()
        }

    def _define(self, correlation: TaskCorrelation) -> str:
        """Number a correlation met for the first time and add its line."""
        if len(self._held) >= _MAX_NUMBERED_CORRELATIONS:
            self._numbers.clear()
            self._held.clear()
        number = self._next_number
        self._next_number += 1
        # The line goes first: whoever reads the number finds its line before theirs.
        self.lines.append(_correlation_line(number, correlation))
        self._held.append(correlation)
        text = self._numbers[id(correlation)] = str(number)
        return text

    def _string_json(self, value: str) -> str:
        if len(self._strings) >= _MAX_CACHED_STRINGS:
            self._strings.clear()
        text = self._strings[value] = _json_string(value)
        return text

    def line_encoders(self) -> Mapping[type[Event], LineEncoder]:
        """Per catalog class, ``encode(event) -> line`` (may raise: then use :meth:`line`)."""
        return self._encoders

    def line(self, event: Event) -> str:
        """The event's line, checking every value (the path for what a template refused).
        Raises ``TypeError`` for an event class outside the catalog or a value JSON cannot
        hold."""
        cls = type(event)
        if cls not in self._encoders:
            raise TypeError(
                f"the events file writes the catalog's event classes only, not {cls.__qualname__}"
            )
        correlation = event.correlation
        number = (
            None
            if correlation is None
            else int(self._numbers.get(id(correlation)) or self._define(correlation))
        )
        row = [
            cls.kind.value,
            event.sequence,
            captured_at_value(event.captured_at),
            number,
            *(_sane(getattr(event, name)) for name in event_field_names(cls)),
        ]
        return _to_json(row)

    def add(self, event: Event) -> None:
        """Append the event's line to :attr:`lines` (``TypeError``: see :meth:`line`)."""
        try:
            text = self._encoders[type(event)](event)
        except (KeyError, TypeError, ValueError, OverflowError):
            text = self.line(event)
        self.lines.append(text)

    def take(self) -> list[str]:
        """The lines added since the last ``take``, in order."""
        lines = self.lines
        self.lines = []
        return lines


@dataclasses.dataclass(frozen=True, slots=True)
class _KindPlan:
    cls: type[Event]
    names: tuple[str, ...]
    converters: tuple[tuple[str, Callable[[Any], Any]], ...]


class EventLineDecoder:
    """Reads the lines after a version 2 header back into events, in file order.

    Raises ``StorageError`` naming the place for a header or line of another shape."""

    __slots__ = ("_correlation_positions", "_correlations", "_plans", "_where")

    def __init__(self, header: Mapping[str, Any], *, where: str) -> None:
        self._where = where
        self._correlations: dict[int, TaskCorrelation] = {}
        try:
            head = tuple(header["event_head"])
            correlation_fields = tuple(header["correlation_fields"])
            fields: Mapping[str, Sequence[str]] = header["fields"]
            kinds = dict(fields.items())
        except (KeyError, TypeError, AttributeError) as exc:
            raise self._error(f"its header lacks {exc}") from exc
        if head != EVENT_HEAD:
            raise self._error(f"its event lines start with {list(head)}, not {list(EVENT_HEAD)}")
        missing = [
            name
            for name in CORRELATION_FIELDS
            if name not in correlation_fields and name not in OPTIONAL_CORRELATION_FIELDS
        ]
        if missing:
            raise self._error(f"its correlation lines lack {', '.join(missing)}")
        self._correlation_positions = {
            name: index + 2 for index, name in enumerate(correlation_fields)
        }
        self._plans = {kind: self._plan(kind, names) for kind, names in kinds.items()}

    def _error(self, why: str) -> StorageError:
        return StorageError(
            f"{self._where} is not a readable Sluiceway events file: {why}; it is damaged or was "
            "written by another version"
        )

    def _plan(self, kind: str, names: Sequence[str]) -> _KindPlan | None:
        try:
            cls = EVENT_TYPES[EventKind(kind)]
        except ValueError:
            return None  # refused at its first line: a kind this version does not know
        known = event_field_names(cls)
        unknown = [name for name in names if name not in known]
        if unknown:
            raise self._error(f"{kind} has fields {', '.join(unknown)} this version does not know")
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        lacking = sorted(required & set(known) - set(names))
        if lacking:
            raise self._error(f"{kind} lacks the fields {', '.join(lacking)}")
        decoders = event_field_decoders(cls)
        converters = tuple(
            (name, decode) for name in names if (decode := decoders.get(name)) is not None
        )
        return _KindPlan(cls, tuple(names), converters)

    def decode(self, line: str, *, where: str) -> Event | None:
        """The event on ``line``, or None for a correlation line."""
        try:
            row = json.loads(line)
            if not isinstance(row, list):
                raise TypeError(f"a line holds a JSON array, not {type(row).__name__}")
            tag = row[0]
            if tag == CORRELATION_TAG:
                self._define(row)
                return None
            plan = self._plans.get(tag)
            if plan is None:
                raise ValueError(
                    f"event kind {tag!r} is unknown to this version or missing from the header"
                )
            _, sequence, captured_at, reference, *values = row
            fields = dict(zip(plan.names, values, strict=True))
            for name, convert in plan.converters:
                fields[name] = convert(fields[name])
            return plan.cls(
                sequence=int(sequence),
                captured_at=_seconds(captured_at),
                correlation=None if reference is None else self._correlations[reference],
                **fields,
            )
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise StorageError(
                f"{where} is not a Sluiceway event line ({type(exc).__name__}: {exc}); the file "
                "is damaged or was written by another program or version."
            ) from exc

    def _define(self, row: Sequence[Any]) -> None:
        number = row[1]
        if type(number) is not int or number in self._correlations:
            raise ValueError(f"correlation number {number!r} is not a new integer")
        self._correlations[number] = correlation_from_dict(
            {name: row[index] for name, index in self._correlation_positions.items()}
        )


def _seconds(value: Any) -> float:
    """``captured_at`` back from the file: int nanoseconds, float seconds or null."""
    if value is None:
        return math.nan
    if type(value) is int:
        return value / NANOSECONDS
    if isinstance(value, float):
        return value
    raise TypeError(f"captured_at {value!r} is not a number")


__all__ = [
    "CORRELATION_FIELDS",
    "CORRELATION_TAG",
    "EVENTS_FORMAT",
    "EVENTS_FORMAT_VERSION",
    "EVENT_HEAD",
    "OPTIONAL_CORRELATION_FIELDS",
    "READABLE_FORMAT_VERSIONS",
    "EventLineDecoder",
    "EventLineEncoder",
    "captured_at_value",
    "header_line",
    "trace_sample_rate_of",
]
