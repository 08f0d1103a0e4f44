"""Row-group admission (SPEC §5.6): the fixed minimum, the adaptive horizon bounded by its row
budget, and the ``row_group_admission_*`` reason recorded for every decision."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from sluiceway.scheduling.admission import TaskAdmissionController
from sluiceway.scheduling.metadata import SchedulingMetadata
from sluiceway.scheduling.resolver import TaskSchedulingResolver
from sluiceway.scheduling.row_group_admission import (
    RowGroupAdmissionReason,
    RowGroupHorizon,
    RowGroupHorizonMode,
    decide_row_group_admission,
    is_admitted,
)
from sluiceway.scheduling.scheduler import (
    SUCCEEDED,
    AsyncTaskScheduler,
    RowGroupHandler,
    SchedulerSettings,
    TaskOutcome,
)
from sluiceway.scheduling.tasks import SchedulableTask, TaskKind
from sluiceway.scheduling.tracker import CompletionTracker, TrackerNode

ADAPTIVE = RowGroupHorizon(
    mode=RowGroupHorizonMode.ADAPTIVE, max_concurrent_row_groups=2, max_rows_in_flight=10
)


@pytest.mark.parametrize(
    ("horizon", "in_flight", "rows", "idle", "stopping", "expected"),
    [
        (ADAPTIVE, 1, 4, False, False, RowGroupAdmissionReason.ADMITTED_WITHIN_MINIMUM),
        (ADAPTIVE, 2, 6, True, False, RowGroupAdmissionReason.ADMITTED_IDLE_CAPACITY),
        (ADAPTIVE, 2, 8, False, False, RowGroupAdmissionReason.DEFERRED_NO_IDLE_CAPACITY),
        (ADAPTIVE, 3, 12, True, False, RowGroupAdmissionReason.DEFERRED_ROW_BUDGET),
        (ADAPTIVE, 0, 0, True, True, RowGroupAdmissionReason.DEFERRED_STOPPING),
        (RowGroupHorizon(), 4, 16, True, False, RowGroupAdmissionReason.DEFERRED_NO_IDLE_CAPACITY),
    ],
)
def test_each_decision_has_its_reason(
    horizon: RowGroupHorizon,
    in_flight: int,
    rows: int,
    idle: bool,
    stopping: bool,
    expected: RowGroupAdmissionReason,
) -> None:
    reason = decide_row_group_admission(
        horizon,
        in_flight_row_groups=in_flight,
        rows_in_flight=rows,
        next_size=4,
        capacity_idle=idle,
        stopping=stopping,
    )
    assert reason is expected
    assert reason.value.startswith("row_group_admission_")
    assert is_admitted(reason) == reason.name.startswith("ADMITTED")


# root -> "slow" (provider A, stalled) and root -> "fast" (provider B), in every row.
NODES = [
    TrackerNode(name="root", kind=TaskKind.FROM_SCRATCH, dependencies=()),
    TrackerNode(name="slow", kind=TaskKind.CELL, dependencies=(0,)),
    TrackerNode(name="fast", kind=TaskKind.CELL, dependencies=(0,)),
]


class Generator:
    def __init__(self, name: str, metadata: SchedulingMetadata | None = None) -> None:
        self.name = name
        self._metadata = metadata

    def get_scheduling_metadata(self) -> SchedulingMetadata | None:
        return self._metadata


def _model(model_id: str) -> SchedulingMetadata:
    return SchedulingMetadata.model(
        provider="p", model_id=model_id, generation_kind="text", weight=4
    )


GENERATORS = [Generator("root"), Generator("slow", _model("a")), Generator("fast", _model("b"))]


class StalledProvider(RowGroupHandler):
    """``slow`` tasks wait until ``fast`` has finished ``release_after`` rows (provider A stalls
    while B could work); records which row groups ``fast`` served meanwhile."""

    def __init__(self, release_after: int) -> None:
        self.release_after = release_after
        self.gate = asyncio.Event()
        self.fast_rows_while_stalled: list[int] = []
        self.fast_done = 0

    def admit(self, row_group: int, first_record: int, size: int) -> None:
        pass

    async def run_task(self, task: SchedulableTask) -> TaskOutcome:
        if task.task.column == "slow":
            await self.gate.wait()
        elif task.task.column == "fast":
            await asyncio.sleep(0)
            if not self.gate.is_set():
                self.fast_rows_while_stalled.append(task.task.row_group)
            self.fast_done += 1
            if self.fast_done == self.release_after:
                self.gate.set()
        return SUCCEEDED

    def rows_dropped(self, row_group: int, rows: Sequence[int], column: str, reason: str) -> None:
        raise AssertionError("nothing is dropped here")

    async def checkpoint(self, row_group: int, live_rows: Sequence[int]) -> None:
        assert len(live_rows) == 2


async def _run(
    handler: StalledProvider, mode: RowGroupHorizonMode, max_rows: int | None
) -> AsyncTaskScheduler:
    resolver = TaskSchedulingResolver()
    scheduler = AsyncTaskScheduler(
        SchedulerSettings(
            num_records=20,
            buffer_size=2,
            max_concurrent_row_groups=1,
            max_task_attempts=1,
            run_id="t",
            horizon_mode=mode,
            max_rows_in_flight=max_rows,
        ),
        tracker=CompletionTracker(NODES),
        scheduling=[resolver.resolve(generator) for generator in GENERATORS],
        admission=TaskAdmissionController({"submission": 16, "local": 4}),
        handler=handler,
    )
    await asyncio.wait_for(scheduler.run(), timeout=30)
    return scheduler


async def test_the_adaptive_horizon_keeps_the_other_provider_busy_within_the_row_budget() -> None:
    # Provider A stalls until B has done 6 rows: only reachable because row groups beyond the
    # fixed minimum (1) are admitted while B idles, up to the budget of 6 rows (3 row groups).
    handler = StalledProvider(release_after=6)
    scheduler = await _run(handler, RowGroupHorizonMode.ADAPTIVE, max_rows=6)
    assert sorted(handler.fast_rows_while_stalled) == [0, 0, 1, 1, 2, 2]
    stats = scheduler.statistics()
    assert stats.row_groups_checkpointed == 10
    assert stats.max_row_groups_in_flight == 3 and stats.max_rows_in_flight == 6
    reasons = stats.row_group_admission
    assert reasons[RowGroupAdmissionReason.ADMITTED_IDLE_CAPACITY] >= 2
    assert reasons[RowGroupAdmissionReason.DEFERRED_ROW_BUDGET] >= 1


async def test_a_fixed_horizon_leaves_the_other_provider_idle_while_one_stalls() -> None:
    handler = StalledProvider(release_after=2)  # B can only ever do row group 0's two rows
    scheduler = await _run(handler, RowGroupHorizonMode.FIXED, max_rows=None)
    assert handler.fast_rows_while_stalled == [0, 0]
    stats = scheduler.statistics()
    assert stats.row_groups_checkpointed == 10 and stats.max_row_groups_in_flight == 1
    assert RowGroupAdmissionReason.ADMITTED_IDLE_CAPACITY not in stats.row_group_admission
