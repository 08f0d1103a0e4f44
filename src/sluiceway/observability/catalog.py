"""The event class of every kind: the registry the JSON codec and the tests read."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from sluiceway.errors import EngineError
from sluiceway.observability import request_events, scheduler_events
from sluiceway.observability.events import Event
from sluiceway.observability.kinds import EventKind


def _collect() -> dict[EventKind, type[Event]]:
    found: dict[EventKind, type[Event]] = {}
    for module in (scheduler_events, request_events):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Event) and "kind" in vars(value):
                if value.__module__ != module.__name__:
                    continue
                kind = value.kind
                if kind in found:
                    raise EngineError(f"two event classes declare kind {kind!s}")
                found[kind] = value
    missing = sorted(set(EventKind) - set(found))
    if missing:
        raise EngineError(f"event kinds without a class: {', '.join(missing)}")
    return {kind: found[kind] for kind in EventKind}


EVENT_TYPES: Mapping[EventKind, type[Event]] = MappingProxyType(_collect())
"""Every canonical kind and its event class, in ``EventKind`` declaration order."""
