"""Scheduler admission events: one class per scheduler kind of SPEC §9.1.

Task-level classes (subclasses of :class:`TaskEvent`) name the task attempt; the others describe
the job, row groups or the ready queue as a whole. ``error_type`` fields hold an exception class
name only, never its message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

from sluiceway.observability.codes import (
    CancelCode,
    JobStatus,
    ReleaseDiagnosticCode,
    TaskDenialCode,
    TaskOutcomeCode,
)
from sluiceway.observability.events import SchedulerEvent, TaskEvent
from sluiceway.observability.kinds import EventKind
from sluiceway.values import fast_init


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerJobStarted(SchedulerEvent):
    kind: ClassVar[EventKind] = EventKind.SCHEDULER_JOB_STARTED
    run_id: str
    records_total: int
    row_groups_total: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerJobCompleted(SchedulerEvent):
    kind: ClassVar[EventKind] = EventKind.SCHEDULER_JOB_COMPLETED
    run_id: str
    status: JobStatus
    records_written: int
    records_dropped: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerHealthSnapshot(SchedulerEvent):
    """Counters at one moment; the mappings are copied, so the emitter may pass live dicts."""

    kind: ClassVar[EventKind] = EventKind.SCHEDULER_HEALTH_SNAPSHOT
    running_tasks: int
    queued_tasks: int
    row_groups_in_flight: int
    queued_by_group: Mapping[str, int] = field(default_factory=dict)
    leases_by_resource: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "queued_by_group", MappingProxyType(dict(self.queued_by_group)))
        object.__setattr__(
            self, "leases_by_resource", MappingProxyType(dict(self.leases_by_resource))
        )


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class DependencyReady(TaskEvent):
    kind: ClassVar[EventKind] = EventKind.DEPENDENCY_READY


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ReadyEnqueued(TaskEvent):
    """``group_depth`` and ``queued_total`` count the ready queue after the enqueue."""

    kind: ClassVar[EventKind] = EventKind.READY_ENQUEUED
    group_depth: int
    queued_total: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RowGroupAdmitted(SchedulerEvent):
    kind: ClassVar[EventKind] = EventKind.ROW_GROUP_ADMITTED
    row_group: int
    rows: int
    row_groups_in_flight: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RowGroupAdmissionBlocked(SchedulerEvent):
    """The next row group waits: ``row_groups_in_flight`` reached ``target``."""

    kind: ClassVar[EventKind] = EventKind.ROW_GROUP_ADMISSION_BLOCKED
    next_row_group: int
    row_groups_in_flight: int
    target: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RowGroupAdmissionTargetChanged(SchedulerEvent):
    kind: ClassVar[EventKind] = EventKind.ROW_GROUP_ADMISSION_TARGET_CHANGED
    previous_target: int
    target: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RowGroupCheckpointed(SchedulerEvent):
    kind: ClassVar[EventKind] = EventKind.ROW_GROUP_CHECKPOINTED
    row_group: int
    rows_written: int
    rows_dropped: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Selected(TaskEvent):
    kind: ClassVar[EventKind] = EventKind.SELECTED


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class QueueEmpty(SchedulerEvent):
    kind: ClassVar[EventKind] = EventKind.QUEUE_EMPTY
    running_tasks: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionBlocked(SchedulerEvent):
    """Tasks are queued but no group head may start now; dispatch waits for a release."""

    kind: ClassVar[EventKind] = EventKind.ADMISSION_BLOCKED
    queued_tasks: int
    running_tasks: int
    reason: TaskDenialCode


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupCapped(SchedulerEvent):
    kind: ClassVar[EventKind] = EventKind.GROUP_CAPPED
    group: str
    cap: int
    running_tasks: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestPressureAdvisorySkipped(TaskEvent):
    """Task admission skipped a request-pressure advisory for the provider/model (trace ids)."""

    kind: ClassVar[EventKind] = EventKind.REQUEST_PRESSURE_ADVISORY_SKIPPED
    provider: str
    model: str


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskLeaseAcquired(TaskEvent):
    kind: ClassVar[EventKind] = EventKind.TASK_LEASE_ACQUIRED
    lease_id: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionDenied(TaskEvent):
    kind: ClassVar[EventKind] = EventKind.ADMISSION_DENIED
    reason: TaskDenialCode


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpawned(TaskEvent):
    """The attempt runs; request events inside it carry ``execution_id`` in their correlation."""

    kind: ClassVar[EventKind] = EventKind.WORKER_SPAWNED
    lease_id: int
    execution_id: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpawnFailed(TaskEvent):
    kind: ClassVar[EventKind] = EventKind.WORKER_SPAWN_FAILED
    lease_id: int
    error_type: str


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class StaleSelection(TaskEvent):
    kind: ClassVar[EventKind] = EventKind.STALE_SELECTION
    lease_id: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RetryDeferred(TaskEvent):
    """Attempt ``attempt`` failed retryably; the task comes back as ``attempt + 1``."""

    kind: ClassVar[EventKind] = EventKind.RETRY_DEFERRED
    error_type: str | None = None


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class NonRetryableDropped(TaskEvent):
    kind: ClassVar[EventKind] = EventKind.NON_RETRYABLE_DROPPED
    error_type: str | None
    rows_dropped: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Cancelled(SchedulerEvent):
    kind: ClassVar[EventKind] = EventKind.CANCELLED
    reason: CancelCode
    running_tasks: int
    queued_tasks: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SalvageRedispatched(TaskEvent):
    kind: ClassVar[EventKind] = EventKind.SALVAGE_REDISPATCHED


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class QueueDrained(SchedulerEvent):
    """The ready queue (``group`` None) or one group of it became empty."""

    kind: ClassVar[EventKind] = EventKind.QUEUE_DRAINED
    group: str | None = None


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCompleted(TaskEvent):
    kind: ClassVar[EventKind] = EventKind.TASK_COMPLETED
    execution_id: int
    outcome: TaskOutcomeCode
    error_type: str | None = None


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskLeaseReleased(TaskEvent):
    kind: ClassVar[EventKind] = EventKind.TASK_LEASE_RELEASED
    lease_id: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseDiagnostic(SchedulerEvent):
    kind: ClassVar[EventKind] = EventKind.RELEASE_DIAGNOSTIC
    lease_id: int
    code: ReleaseDiagnosticCode
    task_id: str | None = None
