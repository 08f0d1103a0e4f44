"""Liveness (SPEC §5.3, issue 3): a run that can never make progress fails with an explanation
naming the waiting tasks and the resources they wait on, instead of hanging."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import MappingProxyType

import pytest

from sluiceway.errors import EngineError
from sluiceway.fair_queue import QueueSelection, QueueView, WeightedFairQueue
from sluiceway.scheduling.admission import TaskAdmissionController
from sluiceway.scheduling.metadata import SchedulingMetadata
from sluiceway.scheduling.policies import (
    NO_POLICY_CHANGE,
    PolicyDecision,
    PolicyStateDelta,
    TaskAdmissionPolicyKind,
    TaskDenialReason,
    TaskLedgerReader,
)
from sluiceway.scheduling.resolver import ResolvedTaskScheduling, TaskSchedulingResolver
from sluiceway.scheduling.scheduler import (
    SUCCEEDED,
    AsyncTaskScheduler,
    RowGroupHandler,
    SchedulerSettings,
    TaskOutcome,
)
from sluiceway.scheduling.tasks import (
    SchedulableTask,
    SchedulerResourceRequest,
    Task,
    TaskGroupSpec,
    TaskKind,
)
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
        self.ran: list[str] = []

    def admit(self, row_group: int, first_record: int, size: int) -> None:
        pass

    async def run_task(self, task: SchedulableTask) -> TaskOutcome:
        self.ran.append(task.task_id)
        await asyncio.sleep(0)
        return SUCCEEDED

    def rows_dropped(self, row_group: int, rows: Sequence[int], column: str, reason: str) -> None:
        pass

    async def checkpoint(self, row_group: int, live_rows: Sequence[int]) -> None:
        pass


def _default_scheduling() -> list[ResolvedTaskScheduling]:
    resolver = TaskSchedulingResolver()
    return [resolver.resolve(Named(node.name)) for node in NODES]


def _scheduler(
    *,
    admission: TaskAdmissionController | None = None,
    scheduling: list[ResolvedTaskScheduling] | None = None,
    tracker: CompletionTracker | None = None,
) -> AsyncTaskScheduler:
    return AsyncTaskScheduler(
        SchedulerSettings(
            num_records=4,
            buffer_size=2,
            max_concurrent_row_groups=1,
            max_task_attempts=1,
            run_id="t",
        ),
        tracker=tracker or CompletionTracker(NODES),
        scheduling=scheduling or _default_scheduling(),
        admission=admission or TaskAdmissionController({"submission": 4, "local": 1}),
        handler=Handler(),
    )


async def _engine_error(scheduler: AsyncTaskScheduler) -> EngineError:
    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(scheduler.run(), timeout=30)
    (error,) = caught.value.exceptions
    assert isinstance(error, EngineError)
    return error


async def test_a_task_larger_than_a_scheduler_limit_is_named_with_the_resource() -> None:
    scheduling = _default_scheduling()
    # The cells ask for 2 local slots; the run allows 1: no release can ever make room.
    scheduling[1] = ResolvedTaskScheduling(
        metadata=SchedulingMetadata.local(),
        group=TaskGroupSpec(key="local:default", weight=1),
        request=SchedulerResourceRequest(amounts=MappingProxyType({"submission": 1, "local": 2})),
    )
    error = await _engine_error(_scheduler(scheduling=scheduling))
    text = str(error)
    assert "can never be admitted while nothing runs" in text
    assert "cell/0/0" in text and "no_capacity on 'local' (asks 2" in text
    assert "max_local_tasks" in text


class AdmitNothing:
    """A (broken) custom policy that denies every task."""

    @property
    def kind(self) -> TaskAdmissionPolicyKind:
        return TaskAdmissionPolicyKind.STRICT_FAIR

    def evaluate(
        self,
        item: SchedulableTask,
        queue_view: QueueView[SchedulableTask],
        ledger: TaskLedgerReader,
    ) -> PolicyDecision:
        return PolicyDecision(
            allowed=False, reason=TaskDenialReason.POLICY_DENIAL, detail="closed for the day"
        )

    def on_acquire(
        self,
        item: SchedulableTask,
        queue_view: QueueView[SchedulableTask],
        ledger: TaskLedgerReader,
    ) -> PolicyStateDelta:
        return NO_POLICY_CHANGE

    def on_release(self, group: str, ledger: TaskLedgerReader) -> PolicyStateDelta:
        return NO_POLICY_CHANGE


async def test_a_policy_that_admits_nothing_is_explained_not_waited_on() -> None:
    admission = TaskAdmissionController({"submission": 4, "local": 4}, policy=AdmitNothing())
    error = await _engine_error(_scheduler(admission=admission))
    text = str(error)
    assert "root/0/*" in text and "policy_denial" in text and "closed for the day" in text
    assert "a policy must admit work when no lease is held" in text


class ForgetfulTracker(CompletionTracker):
    """Loses the completion of one cell: its row never finishes and nothing becomes ready."""

    def mark_complete(self, task: Task) -> list[int]:
        if task.task_id == "cell/0/1":
            return []
        return super().mark_complete(task)


async def test_nothing_ready_queued_or_running_while_rows_are_unfinished_is_an_error() -> None:
    error = await _engine_error(_scheduler(tracker=ForgetfulTracker(NODES)))
    text = str(error)
    assert "can make no progress" in text
    assert "row group 0: 1 unfinished row(s), waiting on ['cell']" in text


class BlindController(TaskAdmissionController):
    """Selects nothing once the first task ran, although heads are admissible."""

    def __init__(self) -> None:
        super().__init__({"submission": 4, "local": 4})
        self.selections = 0

    def select_next(
        self, queue: WeightedFairQueue[SchedulableTask]
    ) -> QueueSelection[SchedulableTask] | None:
        self.selections += 1
        return super().select_next(queue) if self.selections == 1 else None


async def test_an_admissible_head_that_is_never_selected_is_an_error_not_a_hang() -> None:
    error = await _engine_error(_scheduler(admission=BlindController()))
    text = str(error)
    assert "task admission selected nothing although the heads of" in text
    assert "'local:default'" in text
