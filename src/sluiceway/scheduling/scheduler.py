"""The dispatch loop: the only owner of task execution (SPEC §5.3 to §5.6).

One synchronous step selects the fairest eligible ready task, takes its task lease and commits the
selection; the task then runs under a ``TaskGroup`` and releases its lease in ``finally``. The loop
sleeps on one event that is set by lease release, checkpoint, cancellation and stop; it never
polls. Row groups are admitted in order (``row_group_admission``); each is checkpointed as soon as
it is complete, independently of the others (there is no global drain barrier).

Stopping: ``cancel()`` stops admission, cancels running tasks (each releases its lease on the way
out) and lets checkpoints already started finish; row groups in flight are not written. An early
shutdown (error window) or a stop error raised by a task stops admission, lets (early shutdown) or
makes (stop error) running tasks end, salvages every finished row of the row groups in flight,
checkpoints them, and then ``run`` raises the ``RunStoppedError``.

Task code is user code (custom columns, generator classes): a ``CancelledError`` it raises while
nothing cancelled its worker fails that task (its rows are dropped), and a ``KeyboardInterrupt`` or
``SystemExit`` stops the run like ``cancel()`` and comes out of ``run`` as ``RunInterruptedError``.
Every attempt starts from the context ``run`` was called in, whatever an earlier one set.

Every scheduler-stream event of SPEC §9.1 that this loop can produce is emitted at its state
change, built only when a sink of ``events`` listens (task admission emits the lease events).
Episodes that repeat on every wakeup (queue empty, admission blocked, row-group admission
blocked) are emitted once when they begin; a health snapshot goes out at job start, at every
checkpoint and at job end (and whenever ``emit_health_snapshot`` is called).

Trace sampling (``observability.sampling``): each task attempt is decided once, when it becomes
ready (``SchedulerSettings.trace_sample_rate``), and carries the decision as
``SchedulableTask.traced`` and ``TaskCorrelation.traced``. The per-attempt detail kinds
(``sampling.TRACED_KINDS``) are built for traced attempts only; every other kind always.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import enum
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from sluiceway.context import TaskCorrelation, current_task
from sluiceway.errors import (
    EarlyShutdownError,
    EngineError,
    RunCancelledError,
    RunInterruptedError,
    RunStoppedError,
)
from sluiceway.fair_queue import QueueEntry, QueueSelection, WeightedFairQueue
from sluiceway.observability.bus import EventBus
from sluiceway.observability.codes import CancelCode, JobStatus, TaskDenialCode, TaskOutcomeCode
from sluiceway.observability.events import TaskEvent
from sluiceway.observability.kinds import EventKind
from sluiceway.observability.sampling import TraceSampler
from sluiceway.observability.scheduler_events import (
    AdmissionBlocked,
    Cancelled,
    DependencyReady,
    GroupCapped,
    NonRetryableDropped,
    QueueDrained,
    QueueEmpty,
    ReadyEnqueued,
    RequestPressureAdvisorySkipped,
    RetryDeferred,
    RowGroupAdmissionBlocked,
    RowGroupAdmissionTargetChanged,
    RowGroupAdmitted,
    RowGroupCheckpointed,
    SalvageRedispatched,
    SchedulerHealthSnapshot,
    SchedulerJobCompleted,
    SchedulerJobStarted,
    Selected,
    StaleSelection,
    TaskCompleted,
    WorkerSpawned,
    WorkerSpawnFailed,
)
from sluiceway.scheduling.admission import (
    TaskAdmissionBlockSummary,
    TaskAdmissionController,
    TaskAdmissionLease,
    TaskDenialReason,
)
from sluiceway.scheduling.failures import (
    EarlyShutdownSettings,
    ErrorRateWindow,
    TaskRetryBudget,
)
from sluiceway.scheduling.resolver import ResolvedTaskScheduling
from sluiceway.scheduling.row_group_admission import (
    RowGroupAdmissionReason,
    RowGroupHorizon,
    RowGroupHorizonMode,
    decide_row_group_admission,
    is_admitted,
)
from sluiceway.scheduling.tasks import SchedulableTask, SchedulerResourceRequest, Task
from sluiceway.scheduling.tracker import CompletionTracker

_TaskEventT = TypeVar("_TaskEventT", bound=TaskEvent)


class TaskOutcomeKind(enum.Enum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"
    DROPPED = "dropped"
    STOP = "stop"  # the task raised a RunStoppedError: stop the run in order


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOutcome:
    """What a task run produced. ``DROPPED`` lists the rows (indices in the row group) to drop.
    ``error_type`` is the class name of the error behind a failure (events carry only that)."""

    kind: TaskOutcomeKind
    dropped_rows: tuple[int, ...] = ()
    reason: str | None = None
    error: RunStoppedError | None = None
    error_type: str | None = None


SUCCEEDED = TaskOutcome(kind=TaskOutcomeKind.SUCCEEDED)


class StopReason(enum.Enum):
    CANCELLED = "cancelled"
    EARLY_SHUTDOWN = "early_shutdown"
    STOP_ERROR = "stop_error"


_CANCEL_CODE = {
    StopReason.CANCELLED: CancelCode.RUN_CANCELLED,
    StopReason.EARLY_SHUTDOWN: CancelCode.EARLY_SHUTDOWN,
    StopReason.STOP_ERROR: CancelCode.FATAL_ERROR,
}


def _task_event(cls: type[_TaskEventT], item: SchedulableTask, **fields: Any) -> _TaskEventT:
    """Build a task event naming ``item``'s attempt; ``fields`` are the class's own fields."""
    task = item.task
    return cls(
        task_id=task.task_id,
        column=task.column,
        row_group=task.row_group,
        group=item.group.key,
        attempt=item.attempt,
        **fields,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerSettings:
    num_records: int
    buffer_size: int
    max_concurrent_row_groups: int
    max_task_attempts: int
    run_id: str
    max_task_wall_seconds: float | None = None
    horizon_mode: RowGroupHorizonMode = RowGroupHorizonMode.FIXED
    max_rows_in_flight: int | None = None
    early_shutdown: EarlyShutdownSettings | None = None
    # Row groups already written by an earlier run (resume): never admitted again.
    completed_row_groups: frozenset[int] = frozenset()
    # Share of task attempts whose detail events are emitted (observability.sampling).
    trace_sample_rate: float = 1.0


class RowGroupHandler:
    """Engine hooks around row groups; the scheduler calls them, the engine implements them."""

    def admit(self, row_group: int, first_record: int, size: int) -> None:
        raise NotImplementedError

    async def run_task(self, task: SchedulableTask) -> TaskOutcome:
        raise NotImplementedError

    def rows_dropped(self, row_group: int, rows: Sequence[int], column: str, reason: str) -> None:
        raise NotImplementedError

    async def checkpoint(self, row_group: int, live_rows: Sequence[int]) -> None:
        raise NotImplementedError

    def row_group_salvaged(self, row_group: int) -> None:
        """Called before the checkpoint of a row group written incomplete because the run
        stopped (its unfinished rows were dropped); a resumed run generates it again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerStatistics:
    """A frozen snapshot of the scheduler's counters (``AsyncTaskScheduler.statistics()``)."""

    row_groups_total: int
    row_groups_admitted: int
    row_groups_checkpointed: int
    row_groups_resumed: int
    row_groups_salvaged: int
    row_groups_in_flight: int
    max_row_groups_in_flight: int
    max_rows_in_flight: int
    tasks_dispatched: int
    tasks_running: int
    tasks_succeeded: int
    tasks_retried: int
    tasks_dropped: int
    tasks_cancelled: int
    rows_dropped: int
    queued_tasks: int
    max_queued_tasks: int
    stale_selections: int
    blocked_dispatches: int
    max_queued_by_group: Mapping[str, int]
    row_group_admission: Mapping[RowGroupAdmissionReason, int]
    stop_reason: StopReason | None


class _Counters:
    """The scheduler's mutable counters; only ``statistics()`` lets them out, frozen."""

    __slots__ = (
        "blocked_dispatches",
        "max_queued_by_group",
        "max_queued_tasks",
        "max_row_groups_in_flight",
        "max_rows_in_flight",
        "row_group_admission",
        "row_groups_admitted",
        "row_groups_checkpointed",
        "row_groups_salvaged",
        "rows_dropped",
        "rows_written",
        "stale_selections",
        "tasks_cancelled",
        "tasks_dispatched",
        "tasks_dropped",
        "tasks_retried",
        "tasks_succeeded",
    )

    def __init__(self) -> None:
        self.row_groups_admitted = 0
        self.row_groups_checkpointed = 0
        self.row_groups_salvaged = 0
        self.max_row_groups_in_flight = 0
        self.max_rows_in_flight = 0
        self.tasks_dispatched = 0
        self.tasks_succeeded = 0
        self.tasks_retried = 0
        self.tasks_dropped = 0
        self.tasks_cancelled = 0
        self.rows_dropped = 0
        self.rows_written = 0  # live rows handed to checkpoints by this run
        self.max_queued_tasks = 0
        self.stale_selections = 0
        self.blocked_dispatches = 0
        self.max_queued_by_group: dict[str, int] = {}
        self.row_group_admission: dict[RowGroupAdmissionReason, int] = {}


def commit_selection(
    queue: WeightedFairQueue[SchedulableTask],
    admission: TaskAdmissionController,
    selection: QueueSelection[SchedulableTask],
    lease: TaskAdmissionLease,
) -> SchedulableTask | None:
    """Commit a selection whose lease is held; a stale selection gives the lease back at once
    (after ``stale_selection`` on the admission controller's event bus)."""
    item = queue.commit(selection)
    if item is None:
        events = admission.events
        if events.wants(EventKind.STALE_SELECTION):
            events.emit(_task_event(StaleSelection, selection.entry.item, lease_id=lease.lease_id))
        admission.release(lease)
    return item


def _stuck_message(summary: TaskAdmissionBlockSummary) -> str:
    """Why queued work cannot start while nothing runs, and what to change."""
    head = "ready tasks can never be admitted while nothing runs: " + summary.describe()
    if summary.admissible_groups:
        return (
            f"{head}\ntask admission selected nothing although the heads of "
            f"{list(summary.admissible_groups)} may start; this is an engine bug, please report it"
        )
    if summary.active_leases:
        return (
            f"{head}\n{summary.active_leases} task lease(s) are held although no task runs; "
            "they were leaked (an engine bug, please report it)"
        )
    if any(group.can_never_fit for group in summary.blocked):
        return (
            f"{head}\nraise the scheduler limits in the run config (max_in_flight_tasks, "
            "max_local_tasks) to at least what a single task needs"
        )
    return (
        f"{head}\nthe task admission policy denies every queued head although nothing is in "
        "flight; a policy must admit work when no lease is held (a bug in the policy)"
    )


def _stray_cancellation(column: str) -> TaskOutcome:
    """The outcome of a task whose code raised ``CancelledError`` though nothing cancelled it."""
    return TaskOutcome(
        kind=TaskOutcomeKind.DROPPED,
        reason=(
            f"CancelledError: column {column!r} raised asyncio.CancelledError although its task "
            "was not cancelled (it awaited a future or task that something else cancelled?); "
            "catch it in the column's code to return a value instead"
        ),
        error_type="CancelledError",
    )


def _interrupted(column: str, interrupt: KeyboardInterrupt | SystemExit) -> TaskOutcome:
    """The outcome of a task whose code raised ``KeyboardInterrupt`` or ``SystemExit``: stop the
    run as if cancelled (its output stays resumable); ``run`` raises the error."""
    name = type(interrupt).__name__
    return TaskOutcome(
        kind=TaskOutcomeKind.STOP,
        reason=f"{name} raised by column {column!r}",
        error=RunInterruptedError(
            f"the run was interrupted: column {column!r} raised {name}; row groups already "
            "written are kept, and the run can be resumed",
            interrupt=interrupt,
        ),
        error_type=name,
    )


class AsyncTaskScheduler:
    """Runs every task of a plan through readiness -> fair queue -> task admission -> execution.

    ``run`` returns when every row group is checkpointed, raises the ``RunStoppedError`` of an
    orderly stop (cancellation, early shutdown, a stop error from a task) once every task has
    ended and every started checkpoint has finished, and lets any other error of a task or a
    checkpoint propagate (wrapped in an ``ExceptionGroup`` by the task group).
    """

    def __init__(
        self,
        settings: SchedulerSettings,
        *,
        tracker: CompletionTracker,
        scheduling: Sequence[ResolvedTaskScheduling],
        admission: TaskAdmissionController,
        handler: RowGroupHandler,
        on_progress: Callable[[], None] | None = None,
        clock: Callable[[], float] | None = None,
        events: EventBus | None = None,
        request_pressure: Callable[[ResolvedTaskScheduling], tuple[str, str] | None] | None = None,
    ) -> None:
        self._settings = settings
        # Read-only advisory from request admission: the (provider, model) of a task whose
        # model has no request capacity now, else None. Read only for its event (see
        # ``_note_request_pressure``); dispatch never acts on it.
        self._request_pressure = request_pressure
        # Pass the bus of ``admission`` too, so lease events land in the same streams.
        self._events = events if events is not None else EventBus()
        self._sampler = TraceSampler(settings.trace_sample_rate)
        self._tracker = tracker
        self._scheduling = scheduling
        self._admission = admission
        self._handler = handler
        self._on_progress = on_progress
        self._clock = clock
        self._horizon = RowGroupHorizon(
            mode=settings.horizon_mode,
            max_concurrent_row_groups=settings.max_concurrent_row_groups,
            max_rows_in_flight=settings.max_rows_in_flight,
        )
        self._budget = TaskRetryBudget(
            max_attempts=settings.max_task_attempts,
            max_wall_seconds=settings.max_task_wall_seconds,
        )
        self._errors = ErrorRateWindow(settings.early_shutdown) if settings.early_shutdown else None
        self._root_requests: list[SchedulerResourceRequest] = [
            scheduling[index].request for index in tracker.root_generators()
        ]
        self._queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
        self._wake = asyncio.Event()
        self._attempts: dict[str, int] = {}
        self._first_started: dict[str, float] = {}  # task id -> clock at its first attempt
        self._next_row_group = 0
        self._row_groups_total = -(-settings.num_records // settings.buffer_size)
        self._in_flight_row_groups = 0
        self._rows_in_flight = 0
        self._row_group_sizes: dict[int, int] = {}
        self._running = 0  # running tasks
        self._checkpointing = 0  # checkpoints in progress
        # Running tasks per row group: a group is checkpointed only once none of its tasks
        # runs (a task of a dropped row may still be finishing).
        self._running_by_group: dict[int, int] = {}
        self._checkpoint_pending: set[int] = set()
        # Dispatched attempts wait in ``_pending`` for a worker: a task that runs attempts one
        # after another while they finish without waiting, so an attempt costs no task of its
        # own. ``_free_workers`` counts workers spawned but not yet running (each will take an
        # attempt or end). The dispatcher starts one when none is free; a worker whose attempt
        # waits (on a model, a lease, a timer) starts one for every attempt still pending, on
        # the loop's next turn, so no attempt waits behind another. A worker that cannot be
        # started there is kept in ``_worker_error`` and raised by the dispatch loop.
        self._pending: collections.deque[tuple[SchedulableTask, TaskAdmissionLease, int]] = (
            collections.deque()
        )
        self._workers: set[asyncio.Task[None]] = set()
        self._free_workers = 0
        self._worker_error: BaseException | None = None
        self._execution_ids = 0
        self._task_group: asyncio.TaskGroup | None = None
        # The context ``run`` was called in: every worker starts in a copy of it.
        self._run_context: contextvars.Context | None = None
        self._stop: StopReason | None = None
        self._stop_error: RunStoppedError | None = None
        self._cancelling_workers = False
        self._salvaged = False
        self._counters = _Counters()
        self._row_groups_resumed = 0
        # Episode flags: these events go out once when the situation begins, not per wakeup.
        self._noted_queue_empty = False
        self._noted_blocked = False
        self._noted_row_groups_blocked = False
        self._row_group_target = settings.max_concurrent_row_groups
        self._skip_completed_row_groups()

    @property
    def queue(self) -> WeightedFairQueue[SchedulableTask]:
        return self._queue

    @property
    def row_groups_total(self) -> int:
        return self._row_groups_total

    @property
    def stop_reason(self) -> StopReason | None:
        return self._stop

    @property
    def events(self) -> EventBus:
        return self._events

    def statistics(self) -> SchedulerStatistics:
        counters = self._counters
        return SchedulerStatistics(
            row_groups_total=self._row_groups_total,
            row_groups_admitted=counters.row_groups_admitted,
            row_groups_checkpointed=counters.row_groups_checkpointed,
            row_groups_resumed=self._row_groups_resumed,
            row_groups_salvaged=counters.row_groups_salvaged,
            row_groups_in_flight=self._in_flight_row_groups,
            max_row_groups_in_flight=counters.max_row_groups_in_flight,
            max_rows_in_flight=counters.max_rows_in_flight,
            tasks_dispatched=counters.tasks_dispatched,
            tasks_running=self._running,
            tasks_succeeded=counters.tasks_succeeded,
            tasks_retried=counters.tasks_retried,
            tasks_dropped=counters.tasks_dropped,
            tasks_cancelled=counters.tasks_cancelled,
            rows_dropped=counters.rows_dropped,
            queued_tasks=len(self._queue),
            max_queued_tasks=counters.max_queued_tasks,
            stale_selections=counters.stale_selections,
            blocked_dispatches=counters.blocked_dispatches,
            max_queued_by_group=MappingProxyType(dict(counters.max_queued_by_group)),
            row_group_admission=MappingProxyType(dict(counters.row_group_admission)),
            stop_reason=self._stop,
        )

    def cancel(self) -> None:
        """Stop admission and cancel running tasks; started checkpoints finish. Idempotent."""
        self._begin_stop(
            StopReason.CANCELLED,
            RunCancelledError("the run was cancelled; row groups already written are kept"),
            cancel_workers=True,
        )

    async def run(self) -> None:
        """Run until every row group is checkpointed or the run stops (see the class doc)."""
        if self._clock is None:
            self._clock = asyncio.get_running_loop().time
        self._run_context = contextvars.copy_context()
        events = self._events
        if events.wants(EventKind.SCHEDULER_JOB_STARTED):
            events.emit(
                SchedulerJobStarted(
                    run_id=self._settings.run_id,
                    records_total=self._settings.num_records,
                    row_groups_total=self._row_groups_total,
                )
            )
        self._emit_health()
        status = JobStatus.FAILED
        try:
            async with asyncio.TaskGroup() as task_group:
                self._task_group = task_group
                self._admit_row_groups()
                while not self._is_finished():
                    if self._worker_error is not None:
                        raise self._worker_error
                    if self._stop is None:
                        self._dispatch()
                        if self._extend_horizon():
                            continue
                    elif not self._running and not self._salvaged:
                        self._salvage()
                        continue
                    if self._is_finished():
                        break
                    self._check_liveness()
                    await self._wake.wait()
                    self._wake.clear()
            if self._stop is None:
                status = JobStatus.COMPLETED
        except asyncio.CancelledError:
            status = JobStatus.CANCELLED
            raise
        finally:
            self._task_group = None
            self._drop_pending()  # left by workers the task group cancelled after a failure
            if self._stop is StopReason.CANCELLED:
                status = JobStatus.CANCELLED
            self._emit_job_completed(status)
        if self._stop_error is not None:
            raise self._stop_error

    # -- events ------------------------------------------------------------------------------

    def emit_health_snapshot(self) -> None:
        """Emit a ``scheduler_health_snapshot`` now (if a sink listens): for a periodic one,
        beside those at job start, checkpoints and job end. Call it on the loop's thread."""
        self._emit_health()

    def _emit_health(self) -> None:
        events = self._events
        if not events.wants(EventKind.SCHEDULER_HEALTH_SNAPSHOT):
            return
        view = self._queue.view()
        events.emit(
            SchedulerHealthSnapshot(
                running_tasks=self._running,
                queued_tasks=len(self._queue),
                row_groups_in_flight=self._in_flight_row_groups,
                queued_by_group={
                    str(group): view.queued_in_group(group) for group in view.backlogged_groups()
                },
                leases_by_resource=self._admission.view().leased,
            )
        )

    def _emit_job_completed(self, status: JobStatus) -> None:
        self._emit_health()
        events = self._events
        if events.wants(EventKind.SCHEDULER_JOB_COMPLETED):
            events.emit(
                SchedulerJobCompleted(
                    run_id=self._settings.run_id,
                    status=status,
                    records_written=self._counters.rows_written,
                    records_dropped=self._counters.rows_dropped,
                )
            )

    def _note_blocked(self) -> None:
        """Queued work, nothing selectable: say why, once per blocked episode."""
        if self._noted_blocked:
            return
        self._noted_blocked = True
        events = self._events
        wants_blocked = events.wants(EventKind.ADMISSION_BLOCKED)
        wants_capped = events.wants(EventKind.GROUP_CAPPED)
        if not (wants_blocked or wants_capped):
            return
        summary = self._admission.explain_blocked(self._queue.view())
        if wants_capped:
            for blocked in summary.blocked:
                if blocked.reason is TaskDenialReason.GROUP_CAP:
                    events.emit(
                        GroupCapped(
                            group=blocked.group,
                            cap=blocked.group_leased,
                            running_tasks=self._running,
                        )
                    )
        if wants_blocked:
            reason = (
                TaskDenialReason.SHUTDOWN
                if summary.shutting_down
                else summary.blocked[0].reason
                if summary.blocked
                else TaskDenialReason.POLICY_DENIAL
            )
            events.emit(
                AdmissionBlocked(
                    queued_tasks=summary.queued_total,
                    running_tasks=self._running,
                    reason=TaskDenialCode(reason.value),
                )
            )

    def _note_row_groups_blocked(self, reason: RowGroupAdmissionReason) -> None:
        """The next row group must wait: say so once per wait, and follow the target."""
        if reason is RowGroupAdmissionReason.DEFERRED_STOPPING:
            return
        target = max(self._horizon.max_concurrent_row_groups, self._in_flight_row_groups)
        self._set_row_group_target(target)
        if self._noted_row_groups_blocked:
            return
        self._noted_row_groups_blocked = True
        events = self._events
        if events.wants(EventKind.ROW_GROUP_ADMISSION_BLOCKED):
            events.emit(
                RowGroupAdmissionBlocked(
                    next_row_group=self._next_row_group,
                    row_groups_in_flight=self._in_flight_row_groups,
                    target=target,
                )
            )

    def _set_row_group_target(self, target: int) -> None:
        """The adaptive horizon's target: row groups it lets in flight now (fixed: the minimum)."""
        previous = self._row_group_target
        if target == previous:
            return
        self._row_group_target = target
        events = self._events
        if events.wants(EventKind.ROW_GROUP_ADMISSION_TARGET_CHANGED):
            events.emit(RowGroupAdmissionTargetChanged(previous_target=previous, target=target))

    # -- the loop ----------------------------------------------------------------------------

    def _is_finished(self) -> bool:
        if self._stop is not None:
            return (
                self._running == 0
                and self._checkpointing == 0
                and (self._salvaged or self._stop is StopReason.CANCELLED)
            )
        return (
            self._next_row_group >= self._row_groups_total
            and self._in_flight_row_groups == 0
            and self._running == 0
            and self._checkpointing == 0
        )

    def _begin_stop(
        self, reason: StopReason, error: RunStoppedError, *, cancel_workers: bool
    ) -> None:
        if self._stop is None:
            self._stop = reason
            self._stop_error = error
            self._admission.shutdown()
            events = self._events
            if events.wants(EventKind.CANCELLED):
                events.emit(
                    Cancelled(
                        reason=_CANCEL_CODE[reason],
                        running_tasks=self._running,
                        queued_tasks=len(self._queue),
                    )
                )
        if cancel_workers and not self._cancelling_workers:
            self._cancelling_workers = True
            for worker in list(self._workers):
                worker.cancel()
            self._drop_pending()
        self._wake.set()

    def _admit_row_groups(self) -> None:
        while self._next_row_group < self._row_groups_total:
            reason = self._row_group_decision(capacity_idle=False)
            if not is_admitted(reason):
                self._note_row_groups_blocked(reason)
                return
            self._admit_next_row_group()

    def _extend_horizon(self) -> bool:
        """Adaptive horizon: admit one more row group while capacity idles. True if admitted."""
        if (
            self._horizon.mode is not RowGroupHorizonMode.ADAPTIVE
            or self._next_row_group >= self._row_groups_total
        ):
            return False
        has_capacity = self._admission.has_capacity
        idle = bool(self._root_requests) and all(has_capacity(r) for r in self._root_requests)
        reason = self._row_group_decision(capacity_idle=idle)
        if not is_admitted(reason):
            self._note_row_groups_blocked(reason)
            return False
        self._admit_next_row_group()
        self._set_row_group_target(max(self._row_group_target, self._in_flight_row_groups))
        return True

    def _row_group_decision(self, *, capacity_idle: bool) -> RowGroupAdmissionReason:
        first = self._next_row_group * self._settings.buffer_size
        reason = decide_row_group_admission(
            self._horizon,
            in_flight_row_groups=self._in_flight_row_groups,
            rows_in_flight=self._rows_in_flight,
            next_size=min(self._settings.buffer_size, self._settings.num_records - first),
            capacity_idle=capacity_idle,
            stopping=self._stop is not None,
        )
        counts = self._counters.row_group_admission
        counts[reason] = counts.get(reason, 0) + 1
        return reason

    def _admit_next_row_group(self) -> None:
        settings = self._settings
        row_group = self._next_row_group
        first = row_group * settings.buffer_size
        size = min(settings.buffer_size, settings.num_records - first)
        self._next_row_group += 1
        self._skip_completed_row_groups()
        self._in_flight_row_groups += 1
        self._rows_in_flight += size
        self._row_group_sizes[row_group] = size
        counters = self._counters
        counters.row_groups_admitted += 1
        counters.max_row_groups_in_flight = max(
            counters.max_row_groups_in_flight, self._in_flight_row_groups
        )
        counters.max_rows_in_flight = max(counters.max_rows_in_flight, self._rows_in_flight)
        self._noted_row_groups_blocked = False
        events = self._events
        if events.wants(EventKind.ROW_GROUP_ADMITTED):
            events.emit(
                RowGroupAdmitted(
                    row_group=row_group,
                    rows=size,
                    row_groups_in_flight=self._in_flight_row_groups,
                )
            )
        self._handler.admit(row_group, first, size)
        self._tracker.add_row_group(row_group, size)

    def _skip_completed_row_groups(self) -> None:
        completed = self._settings.completed_row_groups
        while self._next_row_group in completed:
            self._next_row_group += 1
            self._row_groups_resumed += 1

    def _dispatch(self) -> None:
        tracker = self._tracker
        queue = self._queue
        events = self._events
        if tracker.has_ready():
            entries = self._entries(tracker.ready_frontier())
            if events.wants(EventKind.DEPENDENCY_READY):
                for entry in entries:
                    if entry.item.traced:
                        events.emit(_task_event(DependencyReady, entry.item))
            accepted = queue.enqueue(entries)
            tracker.mark_enqueued(accepted)  # type: ignore[arg-type]
            self._note_queue_depth()
            if events.wants(EventKind.READY_ENQUEUED):
                self._emit_enqueued(entries, accepted)
            if events.wants(EventKind.SALVAGE_REDISPATCHED):
                self._emit_redispatched(entries, accepted)
        admission = self._admission
        task_group = self._task_group
        assert task_group is not None
        view = queue.view()
        while True:
            selection = admission.select_next(queue)
            if selection is None:
                if len(queue):
                    self._counters.blocked_dispatches += 1
                    self._note_blocked()
                elif not self._noted_queue_empty:
                    self._noted_queue_empty = True
                    if events.wants(EventKind.QUEUE_EMPTY):
                        events.emit(QueueEmpty(running_tasks=self._running))
                return
            self._noted_blocked = False
            self._noted_queue_empty = False
            if selection.entry.item.traced and events.wants(EventKind.SELECTED):
                events.emit(_task_event(Selected, selection.entry.item))
            lease = admission.try_acquire(selection.entry.item, view)
            if not isinstance(lease, TaskAdmissionLease):
                return
            item = commit_selection(queue, admission, selection, lease)
            if item is None:
                self._counters.stale_selections += 1
                continue
            if events.wants(EventKind.QUEUE_DRAINED):
                self._emit_drained(item)
            self._running += 1
            row_group = item.task.row_group
            self._running_by_group[row_group] = self._running_by_group.get(row_group, 0) + 1
            self._counters.tasks_dispatched += 1
            self._execution_ids += 1
            execution_id = self._execution_ids
            if item.task.task_id not in self._first_started:
                assert self._clock is not None
                self._first_started[item.task.task_id] = self._clock()
            if (
                item.traced
                and self._request_pressure is not None
                and events.wants(EventKind.REQUEST_PRESSURE_ADVISORY_SKIPPED)
            ):
                self._note_request_pressure(item)
            self._pending.append((item, lease, execution_id))
            if not self._free_workers:
                try:
                    self._spawn_worker(task_group)
                except BaseException as error:
                    self._pending.pop()
                    if events.wants(EventKind.WORKER_SPAWN_FAILED):
                        events.emit(
                            _task_event(
                                WorkerSpawnFailed,
                                item,
                                lease_id=lease.lease_id,
                                error_type=type(error).__name__,
                            )
                        )
                    self._task_finished(row_group)
                    admission.release(lease)
                    raise
            # After task_lease_acquired (emitted by try_acquire); the attempt has not run yet,
            # so this precedes every request event carrying ``execution_id``.
            if item.traced and events.wants(EventKind.WORKER_SPAWNED):
                events.emit(
                    _task_event(
                        WorkerSpawned, item, lease_id=lease.lease_id, execution_id=execution_id
                    )
                )

    def _spawn_worker(self, task_group: asyncio.TaskGroup) -> None:
        assert self._run_context is not None
        work = self._work()
        try:
            worker = task_group.create_task(work, context=self._run_context.copy())
        except BaseException:
            # A task group that is shutting down refuses new tasks; Python 3.11 leaves the
            # coroutine unawaited (a RuntimeWarning when it is collected), so close it here.
            work.close()
            raise
        self._free_workers += 1
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)

    async def _work(self) -> None:
        """Runs dispatched attempts until none is pending, each from the run's context: it
        starts in a copy of it, and ends once an attempt leaves a context variable changed."""
        self._free_workers -= 1
        pending = self._pending
        run_context = self._run_context
        call_soon = asyncio.get_running_loop().call_soon
        while pending:
            attempt = pending.popleft()
            # Runs only if the attempt waits: the loop turns before it returns.
            waiting = call_soon(self._start_workers_for_pending) if pending else None
            try:
                await self._run_one(*attempt)
            finally:
                if waiting is not None:
                    waiting.cancel()
            if pending and contextvars.copy_context() != run_context:
                # The attempt set a context variable and did not reset it (custom code, or a
                # library it uses): the next attempt would see it. Fresh workers take the rest.
                self._start_workers_for_pending()
                return

    def _start_workers_for_pending(self) -> None:
        """A worker's attempt waits: every attempt still pending gets a worker of its own."""
        task_group = self._task_group
        if task_group is None or self._worker_error is not None:
            return
        try:
            for _ in range(len(self._pending) - self._free_workers):
                self._spawn_worker(task_group)
        except BaseException as error:  # fatal; a loop callback cannot raise it to the run
            self._worker_error = error
            self._wake.set()

    def _entries(self, tasks: Sequence[Task]) -> list[QueueEntry[SchedulableTask]]:
        entries = []
        scheduling = self._scheduling
        attempts = self._attempts
        traces_all = self._sampler.traces_all
        traces = self._sampler.traces
        for task in tasks:
            resolved = scheduling[task.generator]
            attempt = attempts.get(task.task_id, 1)
            item = SchedulableTask(
                task,
                resolved.group,
                resolved.request,
                attempt,
                traces_all or traces(task.task_id, attempt),
            )
            entries.append(
                QueueEntry(
                    item_id=task.task_id,
                    group=resolved.group.key,
                    weight=resolved.group.weight,
                    item=item,
                    demand=resolved.request.amounts,
                )
            )
        return entries

    def _emit_enqueued(
        self, entries: Sequence[QueueEntry[SchedulableTask]], accepted: Sequence[Hashable]
    ) -> None:
        """``ready_enqueued`` per accepted task, with the depths as each one joined the queue."""
        view = self._queue.view()
        by_id: dict[Hashable, QueueEntry[SchedulableTask]] = {
            entry.item_id: entry for entry in entries
        }
        added: dict[Hashable, int] = {}
        for task_id in accepted:
            added[by_id[task_id].group] = added.get(by_id[task_id].group, 0) + 1
        queued_total = len(self._queue) - len(accepted)
        depth = {group: view.queued_in_group(group) - count for group, count in added.items()}
        events = self._events
        for task_id in accepted:
            entry = by_id[task_id]
            depth[entry.group] += 1
            queued_total += 1
            if not entry.item.traced:
                continue
            events.emit(
                _task_event(
                    ReadyEnqueued,
                    entry.item,
                    group_depth=depth[entry.group],
                    queued_total=queued_total,
                )
            )

    def _emit_redispatched(
        self, entries: Sequence[QueueEntry[SchedulableTask]], accepted: Sequence[Hashable]
    ) -> None:
        """``salvage_redispatched`` per retry attempt (deferred by ``retry_deferred``) that is
        back in the ready queue."""
        taken = set(accepted)
        events = self._events
        for entry in entries:
            if entry.item.attempt > 1 and entry.item_id in taken:
                events.emit(_task_event(SalvageRedispatched, entry.item))

    def _note_request_pressure(self, item: SchedulableTask) -> None:
        """``request_pressure_advisory_skipped`` when a task got its lease although request
        admission has no capacity for its model now: task admission is not provider-aware
        (SPEC §5.7), so the task goes ahead and waits for a request lease holding its task lease."""
        assert self._request_pressure is not None
        pressured = self._request_pressure(self._scheduling[item.task.generator])
        if pressured is not None:
            provider, model = pressured
            self._events.emit(
                _task_event(RequestPressureAdvisorySkipped, item, provider=provider, model=model)
            )

    def _emit_drained(self, item: SchedulableTask) -> None:
        """``queue_drained`` for the group the committed ``item`` left empty, and the queue."""
        queue = self._queue
        group = item.group.key
        events = self._events
        if not queue.view().queued_in_group(group):
            events.emit(QueueDrained(group=group))
        if not len(queue):
            events.emit(QueueDrained(group=None))

    def _note_queue_depth(self) -> None:
        counters = self._counters
        queued = len(self._queue)
        if queued > counters.max_queued_tasks:
            counters.max_queued_tasks = queued
        view = self._queue.view()
        maxima = counters.max_queued_by_group
        for group in view.backlogged_groups():
            depth = view.queued_in_group(group)
            key = str(group)
            if depth > maxima.get(key, 0):
                maxima[key] = depth

    def _check_liveness(self) -> None:
        """Called before the loop sleeps. With nothing running, checkpointing or stopping,
        nothing can wake it again: an unfinished run is stuck, and that is an error that says
        which tasks wait on what, not a hang."""
        if self._running or self._checkpointing or self._stop is not None:
            return
        if len(self._queue):
            summary = self._admission.explain_blocked(self._queue.view())
            raise EngineError(_stuck_message(summary))
        if self._is_finished():
            return
        tracker = self._tracker
        waiting = {
            row_group: tracker.unfinished_rows(row_group)
            for row_group in tracker.tracked_row_groups()
        }
        detail = "; ".join(
            f"row group {row_group}: {len(rows)} unfinished row(s), waiting on "
            f"{sorted(set(rows.values()))}"
            for row_group, rows in waiting.items()
            if rows
        )
        raise EngineError(
            "the run can make no progress: no task is ready, queued or running, yet "
            f"{self._in_flight_row_groups} row group(s) in flight are unfinished "
            f"({detail or 'no unfinished rows tracked'}); this is an engine bug, please report it"
        )

    # -- one task ----------------------------------------------------------------------------

    async def _run_one(
        self, item: SchedulableTask, lease: TaskAdmissionLease, execution_id: int
    ) -> None:
        task = item.task
        token = current_task.set(
            TaskCorrelation(
                run_id=self._settings.run_id,
                task_id=task.task_id,
                column=task.column,
                row_group=task.row_group,
                row_index=task.row_index,
                task_kind=task.kind.value,
                group_key=item.group.key,
                group_weight=item.group.weight,
                execution_id=execution_id,
                traced=item.traced,
            )
        )
        finished = False
        code = TaskOutcomeCode.CANCELLED
        error_type: str | None = None
        try:
            try:
                outcome = await self._handler.run_task(item)
            except asyncio.CancelledError:
                worker = asyncio.current_task()
                if self._cancelling_workers or worker is None or worker.cancelling():
                    raise
                # Nothing cancelled this worker: the column's code raised it (e.g. it awaited
                # a future something else cancelled). A failure of this task, not of the run.
                outcome = _stray_cancellation(task.column)
            except (KeyboardInterrupt, SystemExit) as interrupt:
                # Letting it out of the task would stop the event loop mid-run: stop the run
                # in order instead, and hand the interrupt to whoever runs it at the end.
                outcome = _interrupted(task.column, interrupt)
            finished = True
            code = TaskOutcomeCode(outcome.kind.value)
            error_type = outcome.error_type
        except BaseException as error:
            if not isinstance(error, asyncio.CancelledError):
                code = TaskOutcomeCode.STOP  # a fatal error: it propagates and ends the run
                error_type = type(error).__name__
            raise
        finally:
            # Inside the task's context, before its lease goes back.
            self._emit_completed(item, execution_id, code, error_type)
            current_task.reset(token)
            self._admission.release(lease)
            self._task_finished(task.row_group)
            self._wake.set()
            if not finished and self._cancelling_workers:
                # Cancelled by ``cancel()``: a complete row group that only waited for this
                # task is still written.
                self._counters.tasks_cancelled += 1
                self._checkpoint_if_pending(task.row_group)
        self._settle(item, outcome)
        self._checkpoint_if_pending(task.row_group)

    def _emit_completed(
        self,
        item: SchedulableTask,
        execution_id: int,
        code: TaskOutcomeCode,
        error_type: str | None,
    ) -> None:
        events = self._events
        if item.traced and events.wants(EventKind.TASK_COMPLETED):
            events.emit(
                _task_event(
                    TaskCompleted,
                    item,
                    execution_id=execution_id,
                    outcome=code,
                    error_type=error_type,
                )
            )

    def _drop_pending(self) -> None:
        """Attempts dispatched but never started (their workers were cancelled): each goes back
        as cancelled, with its lease."""
        pending = self._pending
        while pending:
            item, lease, execution_id = pending.popleft()
            self._emit_completed(item, execution_id, TaskOutcomeCode.CANCELLED, None)
            self._admission.release(lease)
            self._task_finished(item.task.row_group)
            self._counters.tasks_cancelled += 1
            if self._cancelling_workers:
                self._checkpoint_if_pending(item.task.row_group)
        self._wake.set()

    def _checkpoint_if_pending(self, row_group: int) -> None:
        if row_group in self._checkpoint_pending and not self._running_by_group.get(row_group):
            self._checkpoint_pending.discard(row_group)
            self._start_checkpoint(row_group)

    def _task_finished(self, row_group: int) -> None:
        self._running -= 1
        left = self._running_by_group[row_group] - 1
        if left:
            self._running_by_group[row_group] = left
        else:
            del self._running_by_group[row_group]

    def _settle(self, item: SchedulableTask, outcome: TaskOutcome) -> None:
        task = item.task
        tracker = self._tracker
        counters = self._counters
        completed: list[int]
        if outcome.kind is TaskOutcomeKind.STOP:
            assert outcome.error is not None
            if (
                self._stop is not None
                and isinstance(outcome.error, RunInterruptedError)
                and not isinstance(self._stop_error, RunInterruptedError)
            ):
                self._stop_error = outcome.error  # outranks the stop under way: ``run`` raises it
            stop = (
                StopReason.CANCELLED
                if isinstance(outcome.error, RunCancelledError)
                else StopReason.STOP_ERROR
            )
            self._begin_stop(stop, outcome.error, cancel_workers=True)
            return
        if outcome.kind is TaskOutcomeKind.SUCCEEDED:
            counters.tasks_succeeded += 1
            self._forget_attempts(task.task_id)
            completed = tracker.mark_complete(task)
            self._record_outcome(failed=False, reason=None)
        else:
            exhausted: str | None = None
            if outcome.kind is TaskOutcomeKind.RETRY:
                assert self._clock is not None
                elapsed = self._clock() - self._first_started.get(task.task_id, self._clock())
                exhausted = self._budget.exhausted_reason(
                    attempt=item.attempt, elapsed_seconds=elapsed
                )
                if exhausted is None:
                    if self._stop is not None:
                        return  # not retried while stopping; salvage accounts for the row
                    counters.tasks_retried += 1
                    self._attempts[task.task_id] = item.attempt + 1
                    tracker.mark_ready_again(task)
                    if self._events.wants(EventKind.RETRY_DEFERRED):
                        self._events.emit(
                            _task_event(RetryDeferred, item, error_type=outcome.error_type)
                        )
                    return
            counters.tasks_dropped += 1
            self._forget_attempts(task.task_id)
            rows: Sequence[int]
            if exhausted is not None:
                reason = exhausted + (f": {outcome.reason}" if outcome.reason else "")
                rows = (task.row_index,) if task.row_index is not None else ()
            else:
                reason = outcome.reason or "dropped"
                rows = outcome.dropped_rows
            if not rows:
                rows = (
                    tracker.live_rows(task.row_group)
                    if task.row_index is None
                    else (task.row_index,)
                )
            rows = [row for row in rows if tracker.is_live(task.row_group, row)]
            self._handler.rows_dropped(task.row_group, rows, task.column, reason)
            counters.rows_dropped += len(rows)
            if self._events.wants(EventKind.NON_RETRYABLE_DROPPED):
                self._events.emit(
                    _task_event(
                        NonRetryableDropped,
                        item,
                        error_type=outcome.error_type,
                        rows_dropped=len(rows),
                    )
                )
            withdrawn, completed = tracker.drop_rows(task.row_group, rows)
            for task_id in withdrawn:
                self._queue.remove(task_id)
            if task.row_index is None:
                completed = tracker.mark_complete(task)
            self._record_outcome(failed=True, reason=reason)
        for row_group in completed:
            if self._running_by_group.get(row_group):
                self._checkpoint_pending.add(row_group)
            else:
                self._start_checkpoint(row_group)

    def _forget_attempts(self, task_id: str) -> None:
        self._attempts.pop(task_id, None)
        self._first_started.pop(task_id, None)

    def _record_outcome(self, *, failed: bool, reason: str | None) -> None:
        window = self._errors
        if window is None:
            return
        window.record(failed=failed)
        if self._stop is None and window.is_tripped():
            settings = window.settings
            self._begin_stop(
                StopReason.EARLY_SHUTDOWN,
                EarlyShutdownError(
                    f"stopped early: {window.error_rate:.0%} of the last {window.observed} task "
                    f"outcomes were non-retryable failures (threshold "
                    f"{settings.max_error_rate:.0%} over a window of {settings.window}); last "
                    f"reason: {reason}. Fix the cause, or raise "
                    "run.early_shutdown.max_error_rate"
                ),
                cancel_workers=False,
            )

    def _salvage(self) -> None:
        """After an orderly stop: write every finished row of the row groups still in flight."""
        self._salvaged = True
        tracker = self._tracker
        reason = f"not finished: the run stopped ({self._stop.value if self._stop else ''})"
        for row_group in tracker.tracked_row_groups():
            if row_group in self._checkpoint_pending:
                continue
            by_column: dict[str, list[int]] = {}
            for row, column in tracker.unfinished_rows(row_group).items():
                by_column.setdefault(column, []).append(row)
            for column, rows in by_column.items():
                self._handler.rows_dropped(row_group, rows, column, reason)
                self._counters.rows_dropped += len(rows)
                withdrawn, _ = tracker.drop_rows(row_group, rows)
                for task_id in withdrawn:
                    self._queue.remove(task_id)
            self._counters.row_groups_salvaged += 1
            self._handler.row_group_salvaged(row_group)
            self._start_checkpoint(row_group, salvaged=True)
        self._wake.set()

    def _start_checkpoint(self, row_group: int, *, salvaged: bool = False) -> None:
        live_rows = self._tracker.live_rows(row_group)
        self._tracker.forget_row_group(row_group, salvaged=salvaged)
        assert self._task_group is not None
        self._checkpointing += 1
        self._task_group.create_task(self._checkpoint(row_group, live_rows))

    async def _checkpoint(self, row_group: int, live_rows: Sequence[int]) -> None:
        try:
            await self._handler.checkpoint(row_group, live_rows)
        finally:
            self._checkpointing -= 1
            self._wake.set()
        self._in_flight_row_groups -= 1
        size = self._row_group_sizes.pop(row_group)
        self._rows_in_flight -= size
        self._counters.row_groups_checkpointed += 1
        self._counters.rows_written += len(live_rows)
        events = self._events
        if events.wants(EventKind.ROW_GROUP_CHECKPOINTED):
            events.emit(
                RowGroupCheckpointed(
                    row_group=row_group,
                    rows_written=len(live_rows),
                    rows_dropped=size - len(live_rows),
                )
            )
        self._emit_health()
        if self._on_progress is not None:
            self._on_progress()
        if self._stop is None:
            self._admit_row_groups()
