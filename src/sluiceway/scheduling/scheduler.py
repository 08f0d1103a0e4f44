"""The dispatch loop: the only owner of task execution (SPEC §5.3, §5.6 fixed mode).

One synchronous step selects the fairest eligible ready task, takes its task lease and commits the
selection; the task then runs under a ``TaskGroup`` and releases its lease in ``finally``. The loop
sleeps on one event that is set by enqueue, lease release, checkpoint and cancellation; it never
polls. Row groups are admitted in order, at most ``max_concurrent_row_groups`` at a time, and a slot
frees when the row group is checkpointed.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sluiceway.context import TaskCorrelation, current_task
from sluiceway.errors import EngineError
from sluiceway.fair_queue import QueueEntry, QueueSelection, WeightedFairQueue
from sluiceway.scheduling.admission import TaskAdmissionController, TaskAdmissionLease
from sluiceway.scheduling.resolver import ResolvedTaskScheduling
from sluiceway.scheduling.tasks import SchedulableTask, Task
from sluiceway.scheduling.tracker import CompletionTracker


class TaskOutcomeKind(enum.Enum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"
    DROPPED = "dropped"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOutcome:
    """What a task run produced. ``DROPPED`` lists the rows (indices in the row group) to drop."""

    kind: TaskOutcomeKind
    dropped_rows: tuple[int, ...] = ()
    reason: str | None = None


SUCCEEDED = TaskOutcome(kind=TaskOutcomeKind.SUCCEEDED)


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerSettings:
    num_records: int
    buffer_size: int
    max_concurrent_row_groups: int
    max_task_attempts: int
    run_id: str


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


@dataclass(slots=True, kw_only=True)
class SchedulerStatistics:
    row_groups_admitted: int = 0
    row_groups_checkpointed: int = 0
    max_row_groups_in_flight: int = 0
    tasks_dispatched: int = 0
    tasks_succeeded: int = 0
    tasks_retried: int = 0
    tasks_dropped: int = 0
    rows_dropped: int = 0
    max_queued_tasks: int = 0
    stale_selections: int = 0
    max_queued_by_group: dict[str, int] = field(default_factory=dict)


def commit_selection(
    queue: WeightedFairQueue[SchedulableTask],
    admission: TaskAdmissionController,
    selection: QueueSelection[SchedulableTask],
    lease: TaskAdmissionLease,
) -> SchedulableTask | None:
    """Commit a selection whose lease is held; a stale selection gives the lease back at once."""
    item = queue.commit(selection)
    if item is None:
        admission.release(lease)
    return item


class AsyncTaskScheduler:
    """Runs every task of a plan through readiness -> fair queue -> task admission -> execution."""

    def __init__(
        self,
        settings: SchedulerSettings,
        *,
        tracker: CompletionTracker,
        scheduling: Sequence[ResolvedTaskScheduling],
        admission: TaskAdmissionController,
        handler: RowGroupHandler,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._tracker = tracker
        self._scheduling = scheduling
        self._admission = admission
        self._handler = handler
        self._on_progress = on_progress
        self._queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
        self._wake = asyncio.Event()
        self._attempts: dict[str, int] = {}
        self._next_row_group = 0
        self._row_groups_total = -(-settings.num_records // settings.buffer_size)
        self._in_flight_row_groups = 0
        self._running = 0
        # Running tasks per row group: a group is checkpointed only once none of its tasks
        # runs (a task of a dropped row may still be finishing).
        self._running_by_group: dict[int, int] = {}
        self._checkpoint_pending: set[int] = set()
        self._execution_ids = 0
        self._task_group: asyncio.TaskGroup | None = None
        self._cancelled = False
        self.statistics = SchedulerStatistics()

    @property
    def queue(self) -> WeightedFairQueue[SchedulableTask]:
        return self._queue

    @property
    def row_groups_total(self) -> int:
        return self._row_groups_total

    def cancel(self) -> None:
        """Stop admitting work; running tasks are cancelled by the caller's cancellation."""
        self._cancelled = True
        self._admission.shutdown()
        self._wake.set()

    async def run(self) -> None:
        """Run until every row group is checkpointed. Exceptions from tasks propagate."""
        async with asyncio.TaskGroup() as task_group:
            self._task_group = task_group
            self._admit_row_groups()
            while not self._is_finished():
                self._dispatch()
                if self._is_finished():
                    break
                self._check_liveness()
                await self._wake.wait()
                self._wake.clear()
        self._task_group = None

    # -- the loop ----------------------------------------------------------------------------

    def _is_finished(self) -> bool:
        if self._cancelled:
            return self._running == 0
        return (
            self._next_row_group >= self._row_groups_total
            and self._in_flight_row_groups == 0
            and self._running == 0
        )

    def _admit_row_groups(self) -> None:
        settings = self._settings
        while (
            not self._cancelled
            and self._in_flight_row_groups < settings.max_concurrent_row_groups
            and self._next_row_group < self._row_groups_total
        ):
            row_group = self._next_row_group
            first = row_group * settings.buffer_size
            size = min(settings.buffer_size, settings.num_records - first)
            self._next_row_group += 1
            self._in_flight_row_groups += 1
            stats = self.statistics
            stats.row_groups_admitted += 1
            stats.max_row_groups_in_flight = max(
                stats.max_row_groups_in_flight, self._in_flight_row_groups
            )
            self._handler.admit(row_group, first, size)
            self._tracker.add_row_group(row_group, size)

    def _dispatch(self) -> None:
        tracker = self._tracker
        queue = self._queue
        if tracker.has_ready():
            accepted = queue.enqueue(self._entries(tracker.ready_frontier()))
            tracker.mark_enqueued(accepted)  # type: ignore[arg-type]
            self._note_queue_depth()
        admission = self._admission
        task_group = self._task_group
        assert task_group is not None
        is_eligible = self._is_eligible
        while True:
            selection = queue.select_next(is_eligible)
            if selection is None:
                return
            lease = admission.try_acquire(selection.entry.item)
            if not isinstance(lease, TaskAdmissionLease):
                return
            item = commit_selection(queue, admission, selection, lease)
            if item is None:
                self.statistics.stale_selections += 1
                continue
            self._running += 1
            row_group = item.task.row_group
            self._running_by_group[row_group] = self._running_by_group.get(row_group, 0) + 1
            self.statistics.tasks_dispatched += 1
            self._execution_ids += 1
            try:
                task_group.create_task(self._run_one(item, lease, self._execution_ids))
            except BaseException:
                self._task_finished(row_group)
                admission.release(lease)
                raise

    def _is_eligible(self, entry: QueueEntry[SchedulableTask]) -> bool:
        return self._admission.is_eligible(entry.item)

    def _entries(self, tasks: Sequence[Task]) -> list[QueueEntry[SchedulableTask]]:
        entries = []
        scheduling = self._scheduling
        attempts = self._attempts
        for task in tasks:
            resolved = scheduling[task.generator]
            item = SchedulableTask(
                task, resolved.group, resolved.request, attempts.get(task.task_id, 1)
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

    def _note_queue_depth(self) -> None:
        stats = self.statistics
        queued = len(self._queue)
        if queued > stats.max_queued_tasks:
            stats.max_queued_tasks = queued
        view = self._queue.view()
        maxima = stats.max_queued_by_group
        for group in view.backlogged_groups():
            depth = view.queued_in_group(group)
            key = str(group)
            if depth > maxima.get(key, 0):
                maxima[key] = depth

    def _check_liveness(self) -> None:
        if self._running or self._cancelled or not len(self._queue):
            return
        if self._queue.select_next(self._is_eligible) is not None:
            return
        view = self._admission.view()
        raise EngineError(
            f"{len(self._queue)} ready task(s) can never be admitted while nothing runs: "
            f"scheduler resource limits {dict(view.limits)} are below what a single task needs"
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
            )
        )
        try:
            outcome = await self._handler.run_task(item)
        finally:
            current_task.reset(token)
            self._admission.release(lease)
            self._task_finished(task.row_group)
            self._wake.set()
        self._settle(item, outcome)
        if task.row_group in self._checkpoint_pending and not self._running_by_group.get(
            task.row_group
        ):
            self._checkpoint_pending.discard(task.row_group)
            self._start_checkpoint(task.row_group)

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
        stats = self.statistics
        completed: list[int]
        if outcome.kind is TaskOutcomeKind.SUCCEEDED:
            stats.tasks_succeeded += 1
            self._attempts.pop(task.task_id, None)
            completed = tracker.mark_complete(task)
        elif (
            outcome.kind is TaskOutcomeKind.RETRY
            and item.attempt < self._settings.max_task_attempts
        ):
            stats.tasks_retried += 1
            self._attempts[task.task_id] = item.attempt + 1
            tracker.mark_ready_again(task)
            return
        else:
            stats.tasks_dropped += 1
            self._attempts.pop(task.task_id, None)
            rows: Sequence[int]
            if outcome.kind is TaskOutcomeKind.RETRY:
                reason = f"retry budget of {self._settings.max_task_attempts} attempts exhausted"
                reason += f": {outcome.reason}" if outcome.reason else ""
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
            stats.rows_dropped += len(rows)
            withdrawn, completed = tracker.drop_rows(task.row_group, rows)
            for task_id in withdrawn:
                self._queue.remove(task_id)
            if task.row_index is None:
                completed = tracker.mark_complete(task)
        for row_group in completed:
            if self._running_by_group.get(row_group):
                self._checkpoint_pending.add(row_group)
            else:
                self._start_checkpoint(row_group)

    def _start_checkpoint(self, row_group: int) -> None:
        live_rows = self._tracker.live_rows(row_group)
        self._tracker.forget_row_group(row_group)
        assert self._task_group is not None
        self._running += 1
        self._task_group.create_task(self._checkpoint(row_group, live_rows))

    async def _checkpoint(self, row_group: int, live_rows: Sequence[int]) -> None:
        try:
            await self._handler.checkpoint(row_group, live_rows)
        finally:
            self._running -= 1
            self._wake.set()
        self._in_flight_row_groups -= 1
        self.statistics.row_groups_checkpointed += 1
        if self._on_progress is not None:
            self._on_progress()
        self._admit_row_groups()
