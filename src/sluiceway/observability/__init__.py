"""Observability (SPEC §9.1): typed scheduler and request admission events, the bus that
routes them to sinks only when a sink listens, the in-memory and JSONL sinks, per-task trace
sampling, and the correlated per-task timeline. The OpenTelemetry sink lives in
``sluiceway.observability.otel`` and the run report in ``sluiceway.observability.report``
(both import heavier packages)."""

from __future__ import annotations

from sluiceway.observability.bus import ALL_KINDS, EventBus, EventBusStatistics, EventSink
from sluiceway.observability.catalog import EVENT_TYPES
from sluiceway.observability.codec import event_from_dict, event_to_dict
from sluiceway.observability.events import (
    AttemptEvent,
    Event,
    LeaseEvent,
    RequestEvent,
    SchedulerEvent,
    TaskEvent,
)
from sluiceway.observability.jsonl_sink import (
    EVENTS_FILE_NAME,
    JsonlEventSink,
    read_events,
    read_events_header,
)
from sluiceway.observability.kinds import (
    KIND_STREAM,
    REQUEST_KINDS,
    SCHEDULER_KINDS,
    EventKind,
    EventStream,
)
from sluiceway.observability.memory_sink import MemoryEventSink
from sluiceway.observability.sampling import (
    ALWAYS_RECORDED_KINDS,
    DEFAULT_TRACE_SAMPLE_RATE,
    TRACED_KINDS,
    TraceSampler,
)
from sluiceway.observability.timeline import (
    CorrelatedRuntimeView,
    RequestTimeline,
    TaskTimeline,
    WaitResult,
)

__all__ = [
    "ALL_KINDS",
    "ALWAYS_RECORDED_KINDS",
    "DEFAULT_TRACE_SAMPLE_RATE",
    "EVENTS_FILE_NAME",
    "EVENT_TYPES",
    "KIND_STREAM",
    "REQUEST_KINDS",
    "SCHEDULER_KINDS",
    "TRACED_KINDS",
    "AttemptEvent",
    "CorrelatedRuntimeView",
    "Event",
    "EventBus",
    "EventBusStatistics",
    "EventKind",
    "EventSink",
    "EventStream",
    "JsonlEventSink",
    "LeaseEvent",
    "MemoryEventSink",
    "RequestEvent",
    "RequestTimeline",
    "SchedulerEvent",
    "TaskEvent",
    "TaskTimeline",
    "TraceSampler",
    "WaitResult",
    "event_from_dict",
    "event_to_dict",
    "read_events",
    "read_events_header",
]
