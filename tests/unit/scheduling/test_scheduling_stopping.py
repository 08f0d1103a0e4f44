"""Scheduler contracts for stalls, retry budgets and the adaptive horizon."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sluiceway.scheduling.admission import TaskAdmissionController
from sluiceway.scheduling.resolver import TaskSchedulingResolver
from sluiceway.scheduling.row_group_admission import RowGroupAdmissionReason, RowGroupHorizonMode
from sluiceway.scheduling.scheduler import (
    SUCCEEDED,
    AsyncTaskScheduler,
    RowGroupHandler,
    SchedulerSettings,
    TaskOutcome,
    TaskOutcomeKind,
)
from sluiceway.scheduling.tasks import SchedulableTask, TaskKind
from sluiceway.scheduling.tracker import CompletionTracker, TrackerNode

NODES = [
    TrackerNode(name="root", kind=TaskKind.FROM_SCRATCH, dependencies=()),
    TrackerNode(name="cell", kind=TaskKind.CELL, dependencies=(0,)),
]


class Named:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_scheduling_metadata(self) -> None:
        return None


class Handler(RowGroupHandler):
    def __init__(self) -> None:
        self.checkpoints: list[int] = []
        self.dropped: list[tuple[int, tuple[int, ...], str]] = []
        self.gate = asyncio.Event()
        self.stalled_row_group: int | None = None
        self.retry_forever: set[str] = set()

    def admit(self, row_group: int, first_record: int, size: int) -> None:
        pass

    async def run_task(self, task: SchedulableTask) -> TaskOutcome:
        if task.task.row_group == self.stalled_row_group and task.task.kind is TaskKind.CELL:
            await self.gate.wait()
        if task.task_id in self.retry_forever:
            return TaskOutcome(kind=TaskOutcomeKind.RETRY, reason="overloaded")
        await asyncio.sleep(0)
        return SUCCEEDED

    def rows_dropped(self, row_group: int, rows: Sequence[int], column: str, reason: str) -> None:
        self.dropped.append((row_group, tuple(rows), reason))

    async def checkpoint(self, row_group: int, live_rows: Sequence[int]) -> None:
        self.checkpoints.append(row_group)
        if self.stalled_row_group is not None and len(self.checkpoints) == 3:
            self.gate.set()  # the others finished while the stalled group waited


def _scheduler(
    handler: Handler,
    *,
    num_records: int = 8,
    limits: dict[str, int] | None = None,
    clock: list[float] | None = None,
    **settings: object,
) -> AsyncTaskScheduler:
    resolver = TaskSchedulingResolver()
    options: dict[str, object] = {"max_concurrent_row_groups": 2, "max_task_attempts": 3}
    options.update(settings)
    now = clock if clock is not None else [0.0]
    return AsyncTaskScheduler(
        SchedulerSettings(num_records=num_records, buffer_size=2, run_id="t", **options),  # type: ignore[arg-type]
        tracker=CompletionTracker(NODES),
        scheduling=[resolver.resolve(Named(n.name)) for n in NODES],
        admission=TaskAdmissionController(limits or {"submission": 4, "local": 4}),
        handler=handler,
        clock=lambda: now[0],
    )


async def test_a_stalled_row_group_does_not_stop_others_from_checkpointing() -> None:
    handler = Handler()
    handler.stalled_row_group = 0
    scheduler = _scheduler(handler, num_records=8)
    await scheduler.run()
    # Row groups 1, 2 and 3 were written while row group 0 waited; then it finished too.
    assert handler.checkpoints[:3] == [1, 2, 3] and handler.checkpoints[3] == 0


async def test_the_wall_time_budget_drops_a_task_that_keeps_failing() -> None:
    handler = Handler()
    handler.retry_forever = {"cell/0/1"}
    now = [0.0]

    scheduler = _scheduler(
        handler, num_records=2, max_task_attempts=100, max_task_wall_seconds=5.0, clock=now
    )
    original = handler.run_task

    async def advancing(task: SchedulableTask) -> TaskOutcome:
        now[0] += 2.0
        return await original(task)

    handler.run_task = advancing  # type: ignore[method-assign]
    await scheduler.run()
    ((row_group, rows, reason),) = handler.dropped
    assert (row_group, rows) == (0, (1,))
    assert "retry budget of 5s exhausted" in reason


async def test_the_adaptive_horizon_admits_row_groups_within_the_row_budget() -> None:
    handler = Handler()
    scheduler = _scheduler(
        handler,
        num_records=40,
        max_concurrent_row_groups=1,
        horizon_mode=RowGroupHorizonMode.ADAPTIVE,
        max_rows_in_flight=6,
    )
    await scheduler.run()
    stats = scheduler.statistics()
    assert stats.row_groups_checkpointed == 20
    assert 1 < stats.max_row_groups_in_flight <= 3
    assert stats.max_rows_in_flight <= 6
    assert stats.row_group_admission[RowGroupAdmissionReason.ADMITTED_IDLE_CAPACITY] > 0


async def test_a_fixed_horizon_never_goes_beyond_the_minimum() -> None:
    handler = Handler()
    scheduler = _scheduler(handler, num_records=20, max_concurrent_row_groups=2)
    await scheduler.run()
    stats = scheduler.statistics()
    assert stats.max_row_groups_in_flight == 2
    assert RowGroupAdmissionReason.ADMITTED_IDLE_CAPACITY not in stats.row_group_admission
