"""Turning events into JSON-ready dicts and back: the one conversion every sink uses.

Enums become their values, read-only mappings become dicts, non-finite floats become ``null``,
and the correlation adds the task group's kind and a short identity hash (blake2b of the key).
``event_from_dict`` inverts ``event_to_dict`` for every event class; ``encode_event`` and
``decode_event`` do the same through one self-contained JSON object per event (the lines of a
version 1 events file). The JSONL sink writes the compact version 2 lines of
``observability.jsonl_format``, which reads the field lists and decoders from here.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from sluiceway.context import TaskCorrelation
from sluiceway.errors import StorageError
from sluiceway.observability.catalog import EVENT_TYPES
from sluiceway.observability.events import Event
from sluiceway.observability.kinds import EventKind

_BASE_FIELDS = frozenset({"captured_at", "correlation", "sequence"})

Decoder = Callable[[Any], Any]


@functools.lru_cache(maxsize=4096)
def group_identity_hash(group_key: str) -> str:
    """A short stable hash of a task group key (12 hex digits)."""
    return hashlib.blake2b(group_key.encode("utf-8"), digest_size=6).hexdigest()


def group_kind_of(group_key: str) -> str:
    """The scheduling kind a group key starts with (``local``, ``model``, ``custom_model``)."""
    return group_key.split(":", 1)[0]


_last_correlation: tuple[TaskCorrelation | None, dict[str, Any]] = (None, {})


def correlation_to_dict(correlation: TaskCorrelation) -> dict[str, Any]:
    """The correlation's JSON data. Consecutive events of one task share one correlation
    object, so the last conversion is reused (the returned dict must not be changed)."""
    global _last_correlation
    last, data = _last_correlation
    if last is correlation:
        return data
    data = _correlation_data(correlation)
    _last_correlation = (correlation, data)  # one tuple store: safe across threads
    return data


def _correlation_data(correlation: TaskCorrelation) -> dict[str, Any]:
    return {
        "run_id": correlation.run_id,
        "task_id": correlation.task_id,
        "column": correlation.column,
        "row_group": correlation.row_group,
        "row_index": correlation.row_index,
        "task_kind": correlation.task_kind,
        "group_key": correlation.group_key,
        "group_kind": group_kind_of(correlation.group_key),
        "group_hash": group_identity_hash(correlation.group_key),
        "group_weight": correlation.group_weight,
        "execution_id": correlation.execution_id,
        "traced": correlation.traced,
    }


def correlation_from_dict(data: Mapping[str, Any]) -> TaskCorrelation:
    return TaskCorrelation(
        run_id=data["run_id"],
        task_id=data["task_id"],
        column=data["column"],
        row_group=data["row_group"],
        row_index=data["row_index"],
        task_kind=data["task_kind"],
        group_key=data["group_key"],
        group_weight=data["group_weight"],
        execution_id=data["execution_id"],
        traced=data.get("traced", True),  # absent from files written before trace sampling
    )


def _decoder_for(annotation: Any) -> Decoder:
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        decode = _decoder_for(inner[0])
        return lambda value: None if value is None else decode(value)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if not issubclass(annotation, enum.StrEnum):
            # event_to_dict writes enum members as they are, which is right for StrEnum only.
            raise TypeError(f"event field enum {annotation.__name__} must be a StrEnum")
        return annotation
    if annotation is float:
        # A non-finite float was written as null.
        return lambda value: math.nan if value is None else float(value)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        return lambda value: MappingProxyType(dict(value))
    return _as_is


def _as_is(value: Any) -> Any:
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class _ClassCodec:
    names: tuple[str, ...]
    plain_names: tuple[str, ...]
    mapping_names: frozenset[str]
    float_names: frozenset[str]
    decoders: Mapping[str, Decoder]


_CODECS: dict[type[Event], _ClassCodec] = {}


def _codec(cls: type[Event]) -> _ClassCodec:
    codec = _CODECS.get(cls)
    if codec is None:
        codec = _CODECS[cls] = _build_codec(cls)
    return codec


def event_field_names(cls: type[Event]) -> tuple[str, ...]:
    """The class's own fields (every dataclass field but the base ones), in declaration order."""
    return _codec(cls).names


def event_field_decoders(cls: type[Event]) -> Mapping[str, Decoder | None]:
    """Per own field, what turns its JSON value back into the field's type (None: as it is)."""
    return {
        name: None if decode is _as_is else decode for name, decode in _codec(cls).decoders.items()
    }


def _build_codec(cls: type[Event]) -> _ClassCodec:
    hints = typing.get_type_hints(cls)
    names = tuple(f.name for f in dataclasses.fields(cls) if f.name not in _BASE_FIELDS)
    decoders = {name: _decoder_for(hints[name]) for name in names}
    mapping_names = frozenset(
        name
        for name in names
        if isinstance(typing.get_origin(hints[name]), type)
        and issubclass(typing.get_origin(hints[name]), Mapping)
    )
    float_names = frozenset(
        name for name in names if hints[name] is float or hints[name] == (float | None)
    )
    plain_names = tuple(name for name in names if name not in mapping_names | float_names)
    return _ClassCodec(names, plain_names, mapping_names, float_names, MappingProxyType(decoders))


def _float_or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def event_to_dict(event: Event) -> dict[str, Any]:
    """Plain JSON data for ``event``: ``stream``, ``kind``, ``sequence``, ``captured_at``,
    ``correlation`` (or null), then the class's own fields."""
    codec = _codec(type(event))
    correlation = event.correlation
    data: dict[str, Any] = {
        "stream": event.stream.value,
        "kind": event.kind.value,
        "sequence": event.sequence,
        "captured_at": _finite(event.captured_at),
        "correlation": None if correlation is None else correlation_to_dict(correlation),
    }
    # Every enum of the event model is a StrEnum: already a JSON string, equal to its value.
    for name in codec.plain_names:
        data[name] = getattr(event, name)
    for name in codec.float_names:
        data[name] = _finite(getattr(event, name))
    for name in codec.mapping_names:
        data[name] = dict(getattr(event, name))
    return data


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """The event ``event_to_dict`` described. Raises ``KeyError``/``ValueError``/``TypeError``
    on data of another shape."""
    cls = EVENT_TYPES[EventKind(data["kind"])]
    codec = _codec(cls)
    kwargs = {name: codec.decoders[name](data[name]) for name in codec.names}
    correlation = data.get("correlation")
    return cls(
        captured_at=_float_or_nan(data["captured_at"]),
        sequence=int(data["sequence"]),
        correlation=None if correlation is None else correlation_from_dict(correlation),
        **kwargs,
    )


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_event(event: Event) -> str:
    """One compact JSON object (without a newline): the JSON of ``event_to_dict(event)``."""
    return _ENCODER.encode(event_to_dict(event))


def decode_event(line: str, *, where: str = "event line") -> Event:
    """The event on one JSON line; ``StorageError`` naming ``where`` if it is not one."""
    try:
        return event_from_dict(json.loads(line))
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(
            f"{where} is not a Sluiceway event ({type(exc).__name__}: {exc}); the file is "
            "damaged or was written by another program or version."
        ) from exc
