"""``CorrelatedRuntimeView``: joins the scheduler and request streams into per-task timelines.

Scheduler task events name their attempt as ``(task_id, attempt)``; ``worker_spawned`` adds the
attempt's ``execution_id``, which every request event made inside the attempt carries in its
captured correlation (child asyncio tasks included). Request events are grouped by
``attempt_id`` and attached to the task attempt whose ``execution_id`` they carry. The view is
also a sink, so it can be fed live or from a file (``from_events``).

Timestamps of one task attempt, in SPEC §9.1 order: dependency ready -> enqueued -> selected ->
task lease -> spawn -> (per request: wait start -> wait end -> request lease -> model start ->
model end -> request release) -> task complete -> task lease release.

Trace sampling (``observability.sampling``): a run with ``run.events.trace_sample_rate`` below 1
emits these events for a sample of task attempts only, so the view holds the timelines of the
traced task attempts (and of request attempts made outside any task); an untraced attempt has
no timeline at all, never a partial one. Its always-recorded request events (rate limits, wait
timeouts and cancellations, denials) carry its correlation but no ``worker_spawned`` of it
exists, so they are in ``unattributed_requests``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sluiceway.observability.codes import RequestDomainCode, RequestOutcomeCode, TaskOutcomeCode
from sluiceway.observability.events import AttemptEvent, Event, TaskEvent
from sluiceway.observability.kinds import EventKind
from sluiceway.observability.request_events import (
    ModelRequestCompleted,
    RequestLeaseAcquired,
    RequestLeaseReleased,
    RequestRateLimited,
)
from sluiceway.observability.scheduler_events import (
    RowGroupAdmitted,
    TaskCompleted,
    WorkerSpawned,
)


class WaitResult(enum.StrEnum):
    """How a request attempt's wait for a lease ended."""

    GRANTED = "granted"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    DENIED = "denied"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestTimeline:
    """One request attempt. Times are ``captured_at`` values; None where no event came."""

    attempt_id: int
    provider: str
    model: str
    domain: RequestDomainCode
    execution_id: int | None
    lease_id: int | None
    wait_started_at: float | None
    wait_ended_at: float | None
    wait_result: WaitResult | None
    lease_acquired_at: float | None
    model_started_at: float | None
    model_completed_at: float | None
    lease_released_at: float | None
    outcome: RequestOutcomeCode | None
    rate_limited_at: float | None
    cooldown_seconds: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskTimeline:
    """One task attempt and the request attempts made while it ran."""

    task_id: str
    column: str
    row_group: int
    group: str
    attempt: int
    execution_id: int | None
    row_group_admitted_at: float | None
    dependency_ready_at: float | None
    enqueued_at: float | None
    selected_at: float | None
    lease_acquired_at: float | None
    spawned_at: float | None
    completed_at: float | None
    lease_released_at: float | None
    outcome: TaskOutcomeCode | None
    requests: tuple[RequestTimeline, ...]

    @property
    def is_complete(self) -> bool:
        """Every task-level timestamp from dependency ready to lease release is known."""
        return None not in (
            self.dependency_ready_at,
            self.selected_at,
            self.lease_acquired_at,
            self.spawned_at,
            self.completed_at,
            self.lease_released_at,
        )

    def stages(self) -> tuple[tuple[str, float], ...]:
        """The known timestamps as ``(stage, time)`` in SPEC §9.1 order (requests by start)."""
        found: list[tuple[str, float | None]] = [
            ("dependency_ready", self.dependency_ready_at),
            ("enqueued", self.enqueued_at),
            ("selected", self.selected_at),
            ("task_lease_acquired", self.lease_acquired_at),
            ("worker_spawned", self.spawned_at),
        ]
        for request in sorted(self.requests, key=_request_start):
            found.extend(
                [
                    ("request_wait_started", request.wait_started_at),
                    ("request_wait_ended", request.wait_ended_at),
                    ("request_lease_acquired", request.lease_acquired_at),
                    ("model_request_started", request.model_started_at),
                    ("model_request_completed", request.model_completed_at),
                    ("request_lease_released", request.lease_released_at),
                ]
            )
        found.extend(
            [
                ("task_completed", self.completed_at),
                ("task_lease_released", self.lease_released_at),
            ]
        )
        return tuple((name, at) for name, at in found if at is not None)


def _request_start(request: RequestTimeline) -> float:
    for at in (request.wait_started_at, request.lease_acquired_at, request.model_started_at):
        if at is not None:
            return at
    return float("inf")


class _RequestBuilder:
    __slots__ = (
        "attempt_id",
        "cooldown_seconds",
        "domain",
        "execution_id",
        "lease_acquired_at",
        "lease_id",
        "lease_released_at",
        "model",
        "model_completed_at",
        "model_started_at",
        "outcome",
        "provider",
        "rate_limited_at",
        "wait_ended_at",
        "wait_result",
        "wait_started_at",
    )

    def __init__(self, event: AttemptEvent) -> None:
        self.attempt_id = event.attempt_id
        self.provider = event.provider
        self.model = event.model
        self.domain = event.domain
        self.execution_id: int | None = None
        self.lease_id: int | None = None
        self.wait_started_at: float | None = None
        self.wait_ended_at: float | None = None
        self.wait_result: WaitResult | None = None
        self.lease_acquired_at: float | None = None
        self.model_started_at: float | None = None
        self.model_completed_at: float | None = None
        self.lease_released_at: float | None = None
        self.outcome: RequestOutcomeCode | None = None
        self.rate_limited_at: float | None = None
        self.cooldown_seconds: float | None = None

    def freeze(self) -> RequestTimeline:
        return RequestTimeline(
            attempt_id=self.attempt_id,
            provider=self.provider,
            model=self.model,
            domain=self.domain,
            execution_id=self.execution_id,
            lease_id=self.lease_id,
            wait_started_at=self.wait_started_at,
            wait_ended_at=self.wait_ended_at,
            wait_result=self.wait_result,
            lease_acquired_at=self.lease_acquired_at,
            model_started_at=self.model_started_at,
            model_completed_at=self.model_completed_at,
            lease_released_at=self.lease_released_at,
            outcome=self.outcome,
            rate_limited_at=self.rate_limited_at,
            cooldown_seconds=self.cooldown_seconds,
        )


class _TaskBuilder:
    __slots__ = (
        "attempt",
        "column",
        "completed_at",
        "dependency_ready_at",
        "enqueued_at",
        "execution_id",
        "group",
        "lease_acquired_at",
        "lease_released_at",
        "outcome",
        "row_group",
        "selected_at",
        "spawned_at",
        "task_id",
    )

    def __init__(self, event: TaskEvent) -> None:
        self.task_id = event.task_id
        self.column = event.column
        self.row_group = event.row_group
        self.group = event.group
        self.attempt = event.attempt
        self.execution_id: int | None = None
        self.dependency_ready_at: float | None = None
        self.enqueued_at: float | None = None
        self.selected_at: float | None = None
        self.lease_acquired_at: float | None = None
        self.spawned_at: float | None = None
        self.completed_at: float | None = None
        self.lease_released_at: float | None = None
        self.outcome: TaskOutcomeCode | None = None


_WAIT_ENDS: Mapping[EventKind, WaitResult] = MappingProxyType(
    {
        EventKind.REQUEST_WAIT_COMPLETED: WaitResult.GRANTED,
        EventKind.REQUEST_WAIT_TIMEOUT: WaitResult.TIMEOUT,
        EventKind.REQUEST_WAIT_CANCELLED: WaitResult.CANCELLED,
        EventKind.REQUEST_ACQUIRE_DENIED: WaitResult.DENIED,
    }
)

TIMELINE_KINDS: frozenset[EventKind] = frozenset(
    {
        EventKind.ROW_GROUP_ADMITTED,
        EventKind.DEPENDENCY_READY,
        EventKind.READY_ENQUEUED,
        EventKind.SELECTED,
        EventKind.TASK_LEASE_ACQUIRED,
        EventKind.WORKER_SPAWNED,
        EventKind.TASK_COMPLETED,
        EventKind.TASK_LEASE_RELEASED,
        EventKind.REQUEST_WAIT_STARTED,
        EventKind.REQUEST_LEASE_ACQUIRED,
        EventKind.MODEL_REQUEST_STARTED,
        EventKind.MODEL_REQUEST_COMPLETED,
        EventKind.REQUEST_RATE_LIMITED,
        EventKind.REQUEST_LEASE_RELEASED,
        *_WAIT_ENDS,
    }
)
"""The kinds the view reads; as a sink it listens for these only."""


class CorrelatedRuntimeView:
    """Per-task-attempt timelines built from both event streams, in any arrival order.

    Feed it with ``add``/``extend`` (or add it to an ``EventBus`` as a sink) and read
    ``timelines()``. Memory grows with the number of task and request attempts seen. It sees
    only the traced task attempts of a trace-sampled run (see the module docstring); run with
    ``run.events.trace_sample_rate: 1.0`` for every timeline."""

    def __init__(self) -> None:
        self._tasks: dict[tuple[str, int], _TaskBuilder] = {}
        self._requests: dict[int, _RequestBuilder] = {}
        self._attempt_by_execution: dict[int, tuple[str, int]] = {}
        self._row_groups: dict[int, float] = {}

    @classmethod
    def from_events(cls, events: Iterable[Event]) -> CorrelatedRuntimeView:
        view = cls()
        view.extend(events)
        return view

    # -- sink protocol -------------------------------------------------------------------------

    @property
    def kinds(self) -> frozenset[EventKind]:
        return TIMELINE_KINDS

    def handle(self, event: Event) -> None:
        self.add(event)

    def close(self) -> None:
        pass

    # -- feeding -------------------------------------------------------------------------------

    def extend(self, events: Iterable[Event]) -> None:
        for event in events:
            self.add(event)

    def add(self, event: Event) -> None:
        """Take one event into account; kinds outside ``TIMELINE_KINDS`` are ignored."""
        if isinstance(event, TaskEvent):
            self._add_task_event(event)
        elif isinstance(event, AttemptEvent):
            self._add_request_event(event)
        elif isinstance(event, RowGroupAdmitted):
            self._row_groups.setdefault(event.row_group, event.captured_at)

    def _add_task_event(self, event: TaskEvent) -> None:
        kind = event.kind
        if kind not in TIMELINE_KINDS:
            return
        key = (event.task_id, event.attempt)
        task = self._tasks.get(key)
        if task is None:
            task = self._tasks[key] = _TaskBuilder(event)
        at = event.captured_at
        if kind is EventKind.DEPENDENCY_READY:
            task.dependency_ready_at = at
        elif kind is EventKind.READY_ENQUEUED:
            task.enqueued_at = at
        elif kind is EventKind.SELECTED:
            task.selected_at = at  # a stale selection is followed by a new one: keep the last
        elif kind is EventKind.TASK_LEASE_ACQUIRED:
            task.lease_acquired_at = at
        elif kind is EventKind.WORKER_SPAWNED:
            assert isinstance(event, WorkerSpawned)
            task.spawned_at = at
            task.execution_id = event.execution_id
            self._attempt_by_execution[event.execution_id] = key
        elif kind is EventKind.TASK_COMPLETED:
            assert isinstance(event, TaskCompleted)
            task.completed_at = at
            task.outcome = event.outcome
            task.execution_id = event.execution_id
            self._attempt_by_execution.setdefault(event.execution_id, key)
        elif kind is EventKind.TASK_LEASE_RELEASED:
            task.lease_released_at = at

    def _add_request_event(self, event: AttemptEvent) -> None:
        kind = event.kind
        if kind not in TIMELINE_KINDS:
            return
        request = self._requests.get(event.attempt_id)
        if request is None:
            request = self._requests[event.attempt_id] = _RequestBuilder(event)
        if request.execution_id is None and event.correlation is not None:
            request.execution_id = event.correlation.execution_id
        at = event.captured_at
        if kind is EventKind.REQUEST_WAIT_STARTED:
            request.wait_started_at = at
        elif kind in _WAIT_ENDS:
            request.wait_ended_at = at
            request.wait_result = _WAIT_ENDS[kind]
        elif kind is EventKind.REQUEST_LEASE_ACQUIRED:
            assert isinstance(event, RequestLeaseAcquired)
            request.lease_acquired_at = at
            request.lease_id = event.lease_id
        elif kind is EventKind.MODEL_REQUEST_STARTED:
            request.model_started_at = at
        elif kind is EventKind.MODEL_REQUEST_COMPLETED:
            assert isinstance(event, ModelRequestCompleted)
            request.model_completed_at = at
            request.outcome = event.outcome
        elif kind is EventKind.REQUEST_RATE_LIMITED:
            assert isinstance(event, RequestRateLimited)
            request.rate_limited_at = at
            request.cooldown_seconds = event.cooldown_seconds
        elif kind is EventKind.REQUEST_LEASE_RELEASED:
            assert isinstance(event, RequestLeaseReleased)
            request.lease_released_at = at
            request.outcome = event.outcome

    # -- reading -------------------------------------------------------------------------------

    @property
    def row_group_admitted_at(self) -> Mapping[int, float]:
        return MappingProxyType(self._row_groups)

    def _requests_by_attempt(self) -> dict[tuple[str, int], list[RequestTimeline]]:
        found: dict[tuple[str, int], list[RequestTimeline]] = {}
        for request in self._requests.values():
            if request.execution_id is None:
                continue
            key = self._attempt_by_execution.get(request.execution_id)
            if key is not None:
                found.setdefault(key, []).append(request.freeze())
        return found

    def timelines(self) -> tuple[TaskTimeline, ...]:
        """Every task attempt seen, ordered by first timestamp, then task id and attempt."""
        requests = self._requests_by_attempt()
        built = [
            self._freeze(task, tuple(sorted(requests.get(key, ()), key=_request_start)))
            for key, task in self._tasks.items()
        ]
        return tuple(sorted(built, key=_timeline_order))

    def timeline(self, task_id: str, attempt: int = 1) -> TaskTimeline | None:
        task = self._tasks.get((task_id, attempt))
        if task is None:
            return None
        requests = self._requests_by_attempt().get((task_id, attempt), [])
        return self._freeze(task, tuple(sorted(requests, key=_request_start)))

    def unattributed_requests(self) -> tuple[RequestTimeline, ...]:
        """Request attempts made outside any task, or in a task attempt the view never saw."""
        return tuple(
            request.freeze()
            for request in self._requests.values()
            if request.execution_id is None
            or request.execution_id not in self._attempt_by_execution
        )

    def _freeze(self, task: _TaskBuilder, requests: tuple[RequestTimeline, ...]) -> TaskTimeline:
        return TaskTimeline(
            task_id=task.task_id,
            column=task.column,
            row_group=task.row_group,
            group=task.group,
            attempt=task.attempt,
            execution_id=task.execution_id,
            row_group_admitted_at=self._row_groups.get(task.row_group),
            dependency_ready_at=task.dependency_ready_at,
            enqueued_at=task.enqueued_at,
            selected_at=task.selected_at,
            lease_acquired_at=task.lease_acquired_at,
            spawned_at=task.spawned_at,
            completed_at=task.completed_at,
            lease_released_at=task.lease_released_at,
            outcome=task.outcome,
            requests=requests,
        )


def _timeline_order(timeline: TaskTimeline) -> tuple[float, str, int]:
    stages = timeline.stages()
    first = stages[0][1] if stages else float("inf")
    return (first, timeline.task_id, timeline.attempt)
