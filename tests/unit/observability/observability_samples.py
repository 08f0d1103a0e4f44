"""Shared builders for the observability tests: one sample event per kind and a small synthetic
run whose per-layer times are known exactly."""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Mapping
from dataclasses import fields

from sluiceway.context import TaskCorrelation
from sluiceway.observability import EVENT_TYPES, Event, EventKind
from sluiceway.observability.codes import (
    JobStatus,
    RequestDomainCode,
    RequestOutcomeCode,
    TaskOutcomeCode,
)
from sluiceway.observability.request_events import (
    ModelRequestCompleted,
    ModelRequestStarted,
    RequestLeaseAcquired,
    RequestLeaseReleased,
    RequestRateLimited,
    RequestResourceRegistered,
    RequestWaitCompleted,
    RequestWaitStarted,
)
from sluiceway.observability.scheduler_events import (
    DependencyReady,
    ReadyEnqueued,
    RowGroupAdmitted,
    RowGroupCheckpointed,
    SchedulerJobCompleted,
    SchedulerJobStarted,
    Selected,
    TaskCompleted,
    TaskLeaseAcquired,
    TaskLeaseReleased,
    WorkerSpawned,
)

_BASE = {"captured_at", "correlation", "sequence"}

CORRELATION = TaskCorrelation(
    run_id="run-1",
    task_id="text/0/0",
    column="text",
    row_group=0,
    row_index=0,
    task_kind="cell",
    group_key="model:sim:sim-writer:text",
    group_weight=4,
    execution_id=7,
)


def _sample_value(annotation: object) -> object:
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _sample_value(inner[0])
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return next(iter(annotation))
    if annotation is int:
        return 3
    if annotation is float:
        return 0.25
    if annotation is str:
        return "sample"
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return {"local": 2}
    raise AssertionError(f"no sample for {annotation!r}")


def sample_event(kind: EventKind, *, correlation: TaskCorrelation | None = CORRELATION) -> Event:
    """An instance of the kind's class with a plain value in every field."""
    cls = EVENT_TYPES[kind]
    hints = typing.get_type_hints(cls)
    values = {f.name: _sample_value(hints[f.name]) for f in fields(cls) if f.name not in _BASE}
    return cls(captured_at=12.5, correlation=correlation, **values)  # type: ignore[arg-type]


# -- a synthetic run ---------------------------------------------------------------------------

WRITER = "model:sim:sim-writer:text"
T0 = 100.0


def _correlation(task_id: str, row_index: int, execution_id: int) -> TaskCorrelation:
    return TaskCorrelation(
        run_id="run-1",
        task_id=task_id,
        column="text",
        row_group=0,
        row_index=row_index,
        task_kind="cell",
        group_key=WRITER,
        group_weight=4,
        execution_id=execution_id,
    )


def _task_events(
    task_id: str,
    column: str,
    group: str,
    *,
    ready: float,
    selected: float,
    completed: float,
    execution_id: int,
) -> list[Event]:
    common = {"task_id": task_id, "column": column, "row_group": 0, "group": group}
    return [
        DependencyReady(captured_at=ready, correlation=None, **common),
        ReadyEnqueued(captured_at=ready, correlation=None, group_depth=1, queued_total=1, **common),
        Selected(captured_at=selected, correlation=None, **common),
        TaskLeaseAcquired(captured_at=selected, correlation=None, lease_id=execution_id, **common),
        WorkerSpawned(
            captured_at=selected,
            correlation=None,
            lease_id=execution_id,
            execution_id=execution_id,
            **common,
        ),
        TaskCompleted(
            captured_at=completed,
            correlation=None,
            execution_id=execution_id,
            outcome=TaskOutcomeCode.SUCCEEDED,
            **common,
        ),
        TaskLeaseReleased(captured_at=completed, correlation=None, lease_id=execution_id, **common),
    ]


def _request_events(
    correlation: TaskCorrelation,
    attempt_id: int,
    *,
    wait: tuple[float, float],
    model: tuple[float, float],
    outcome: RequestOutcomeCode = RequestOutcomeCode.SUCCESS,
    cooldown_seconds: float | None = None,
) -> list[Event]:
    resource = {
        "provider": "sim",
        "model": "sim-writer",
        "domain": RequestDomainCode.CHAT,
        "attempt_id": attempt_id,
        "correlation": correlation,
    }
    lease = {**resource, "lease_id": 100 + attempt_id}
    events: list[Event] = [
        RequestWaitStarted(captured_at=wait[0], waiters_ahead=0, **resource),
        RequestWaitCompleted(captured_at=wait[1], waited_seconds=wait[1] - wait[0], **resource),
        RequestLeaseAcquired(captured_at=wait[1], in_flight=1, limit=4, cap=4, **lease),
        ModelRequestStarted(captured_at=model[0], **lease),
        ModelRequestCompleted(
            captured_at=model[1], outcome=outcome, latency_seconds=model[1] - model[0], **lease
        ),
    ]
    if outcome is RequestOutcomeCode.RATE_LIMITED:
        events.append(
            RequestRateLimited(
                captured_at=model[1],
                retry_after_seconds=cooldown_seconds,
                cooldown_seconds=cooldown_seconds,
                **resource,
            )
        )
    events.append(
        RequestLeaseReleased(captured_at=model[1], outcome=outcome, in_flight=0, limit=4, **lease)
    )
    return events


def synthetic_run() -> list[Event]:
    """Two sampler tasks and two model tasks in one row group; ``text/0/0`` is rate limited
    once (0.5 s cooldown) and retried. Expected seconds per layer are in ``EXPECTED_TEXT``."""
    events: list[Event] = [
        SchedulerJobStarted(
            captured_at=T0, correlation=None, run_id="run-1", records_total=2, row_groups_total=1
        ),
        RequestResourceRegistered(
            captured_at=T0,
            correlation=None,
            provider="sim",
            model="sim-writer",
            domain=RequestDomainCode.CHAT,
            static_cap=4,
            initial_limit=4,
        ),
        RowGroupAdmitted(
            captured_at=T0, correlation=None, row_group=0, rows=2, row_groups_in_flight=1
        ),
    ]
    for index in range(2):
        events += _task_events(
            f"topic/0/{index}",
            "topic",
            "local",
            ready=T0,
            selected=T0 + 0.1,
            completed=T0 + 0.2,
            execution_id=1 + index,
        )
    first = _correlation("text/0/0", 0, 3)
    second = _correlation("text/0/1", 1, 4)
    events += _task_events(
        "text/0/0",
        "text",
        WRITER,
        ready=T0 + 0.2,
        selected=T0 + 0.3,
        completed=T0 + 1.6,
        execution_id=3,
    )
    events += _request_events(
        first,
        1,
        wait=(T0 + 0.3, T0 + 0.3),
        model=(T0 + 0.3, T0 + 0.5),
        outcome=RequestOutcomeCode.RATE_LIMITED,
        cooldown_seconds=0.5,
    )
    events += _request_events(first, 2, wait=(T0 + 0.7, T0 + 1.0), model=(T0 + 1.0, T0 + 1.5))
    events += _task_events(
        "text/0/1",
        "text",
        WRITER,
        ready=T0 + 0.2,
        selected=T0 + 0.4,
        completed=T0 + 1.0,
        execution_id=4,
    )
    events += _request_events(second, 3, wait=(T0 + 0.4, T0 + 0.4), model=(T0 + 0.4, T0 + 0.9))
    events += [
        RowGroupCheckpointed(
            captured_at=T0 + 1.7, correlation=None, row_group=0, rows_written=2, rows_dropped=0
        ),
        SchedulerJobCompleted(
            captured_at=T0 + 1.8,
            correlation=None,
            run_id="run-1",
            status=JobStatus.COMPLETED,
            records_written=2,
            records_dropped=0,
        ),
    ]
    return sorted(events, key=lambda event: event.captured_at)


EXPECTED_TEXT = {
    "dependency_readiness": 0.4,
    "ready_queue": 0.3,
    "task_admission": 0.0,
    "request_admission": 0.0,
    "cooldown": 0.5,
    "provider_execution": 1.2,
    "generator": 0.2,
}
EXPECTED_TOPIC = {
    "dependency_readiness": 0.0,
    "ready_queue": 0.2,
    "task_admission": 0.0,
    "request_admission": 0.0,
    "cooldown": 0.0,
    "provider_execution": 0.0,
    "generator": 0.2,
}
