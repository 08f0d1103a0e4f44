"""Dispatch-loop contracts: leases before work, exactly-once release, drops and retries."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

import pytest

from sluiceway.context import current_task
from sluiceway.errors import RunCancelledError, RunInterruptedError
from sluiceway.fair_queue import QueueView
from sluiceway.scheduling.admission import (
    ReleaseResult,
    TaskAdmissionController,
    TaskAdmissionDenied,
    TaskAdmissionLease,
)
from sluiceway.scheduling.metadata import SchedulingMetadata
from sluiceway.scheduling.resolver import TaskSchedulingResolver
from sluiceway.scheduling.scheduler import (
    SUCCEEDED,
    AsyncTaskScheduler,
    RowGroupHandler,
    SchedulerSettings,
    StopReason,
    TaskOutcome,
    TaskOutcomeKind,
)
from sluiceway.scheduling.tasks import SchedulableTask, TaskKind
from sluiceway.scheduling.tracker import CompletionTracker, TrackerNode


class RecordingAdmission(TaskAdmissionController):
    """The real controller, recording every lease it grants and every release result."""

    def __init__(self, limits: dict[str, int]) -> None:
        super().__init__(limits)
        self.live: dict[str, TaskAdmissionLease] = {}
        self.granted: list[TaskAdmissionLease] = []
        self.results: list[ReleaseResult] = []

    def try_acquire(
        self, item: SchedulableTask, queue_view: QueueView[SchedulableTask] | None = None
    ) -> TaskAdmissionLease | TaskAdmissionDenied:
        lease = super().try_acquire(item, queue_view)
        if isinstance(lease, TaskAdmissionLease):
            self.live[item.task_id] = lease
            self.granted.append(lease)
        return lease

    def release(self, lease: TaskAdmissionLease) -> ReleaseResult:
        result = super().release(lease)
        self.results.append(result)
        self.live.pop(lease.task_id, None)
        return result


class Generator:
    def __init__(self, name: str, metadata: SchedulingMetadata | None = None) -> None:
        self.name = name
        self._metadata = metadata

    def get_scheduling_metadata(self) -> SchedulingMetadata | None:
        return self._metadata


class ScriptedHandler(RowGroupHandler):
    """Runs nothing real: records the order of events and answers with scripted outcomes."""

    def __init__(
        self, admission: RecordingAdmission, outcomes: dict[str, list[TaskOutcome]] | None = None
    ) -> None:
        self.admission = admission
        self.outcomes = outcomes or {}
        self.ran: list[str] = []
        self.ran_without_lease: list[str] = []
        self.checkpoints: list[tuple[int, list[int]]] = []
        self.dropped: list[tuple[int, tuple[int, ...], str]] = []
        self.admitted: list[tuple[int, int, int]] = []

    def admit(self, row_group: int, first_record: int, size: int) -> None:
        self.admitted.append((row_group, first_record, size))

    async def run_task(self, task: SchedulableTask) -> TaskOutcome:
        correlation = current_task.get()
        assert correlation is not None and correlation.task_id == task.task_id
        if task.task_id not in self.admission.live:
            self.ran_without_lease.append(task.task_id)
        self.ran.append(task.task_id)
        await asyncio.sleep(0)
        script = self.outcomes.get(task.task_id)
        return script.pop(0) if script else SUCCEEDED

    def rows_dropped(self, row_group: int, rows: Sequence[int], column: str, reason: str) -> None:
        self.dropped.append((row_group, tuple(rows), reason))

    async def checkpoint(self, row_group: int, live_rows: Sequence[int]) -> None:
        await asyncio.sleep(0)
        self.checkpoints.append((row_group, list(live_rows)))


NODES = [
    TrackerNode(name="root", kind=TaskKind.FROM_SCRATCH, dependencies=()),
    TrackerNode(name="text", kind=TaskKind.CELL, dependencies=(0,)),
    TrackerNode(name="summary", kind=TaskKind.BATCH, dependencies=(1,)),
]
GENERATORS = [
    Generator("root"),
    Generator(
        "text",
        SchedulingMetadata.model(provider="p", model_id="m", generation_kind="text", weight=4),
    ),
    Generator("summary"),
]


def _scheduler(
    num_records: int,
    buffer_size: int,
    *,
    limits: dict[str, int] | None = None,
    outcomes: dict[str, list[TaskOutcome]] | None = None,
    max_concurrent_row_groups: int = 2,
    handler_type: Callable[[RecordingAdmission], ScriptedHandler] | None = None,
) -> tuple[AsyncTaskScheduler, ScriptedHandler, RecordingAdmission]:
    resolver = TaskSchedulingResolver()
    admission = RecordingAdmission(limits or {"submission": 3, "local": 1})
    handler = (
        ScriptedHandler(admission, outcomes) if handler_type is None else handler_type(admission)
    )
    scheduler = AsyncTaskScheduler(
        SchedulerSettings(
            num_records=num_records,
            buffer_size=buffer_size,
            max_concurrent_row_groups=max_concurrent_row_groups,
            max_task_attempts=3,
            run_id="test",
        ),
        tracker=CompletionTracker(NODES),
        scheduling=[resolver.resolve(g) for g in GENERATORS],
        admission=admission,
        handler=handler,
    )
    return scheduler, handler, admission


async def test_every_task_runs_under_a_lease_released_exactly_once() -> None:
    scheduler, handler, admission = _scheduler(10, 4)
    await scheduler.run()
    assert handler.ran_without_lease == []
    # 3 row groups: per group 1 root + its cells + 1 batch.
    assert len(handler.ran) == 3 * 2 + 10
    assert len(admission.granted) == len(handler.ran)
    assert all(result.released for result in admission.results)
    assert Counter(result.lease_id for result in admission.results) == Counter(
        lease.lease_id for lease in admission.granted
    )
    assert admission.active_leases == 0
    assert sorted(handler.checkpoints) == [(0, [0, 1, 2, 3]), (1, [0, 1, 2, 3]), (2, [0, 1])]
    assert handler.admitted == [(0, 0, 4), (1, 4, 4), (2, 8, 2)]
    assert scheduler.statistics().max_row_groups_in_flight <= 2
    assert admission.view().max_leased["local"] <= 1


async def test_non_retryable_drop_removes_the_row_and_the_batch_still_runs() -> None:
    drop = TaskOutcome(kind=TaskOutcomeKind.DROPPED, reason="bad answer")
    scheduler, handler, admission = _scheduler(3, 3, outcomes={"text/0/1": [drop]})
    await scheduler.run()
    assert handler.dropped == [(0, (1,), "bad answer")]
    assert "summary/0/*" in handler.ran
    assert handler.checkpoints == [(0, [0, 2])]
    assert admission.active_leases == 0


async def test_retryable_outcome_re_enters_and_exhausted_retries_drop_the_row() -> None:
    retry = TaskOutcome(kind=TaskOutcomeKind.RETRY, reason="rate limited")
    outcomes = {"text/0/0": [retry, SUCCEEDED], "text/0/1": [retry, retry, retry]}
    scheduler, handler, admission = _scheduler(2, 2, outcomes=outcomes)
    await scheduler.run()
    assert handler.ran.count("text/0/0") == 2
    assert handler.ran.count("text/0/1") == 3
    ((row_group, rows, reason),) = handler.dropped
    assert (row_group, rows) == (0, (1,))
    assert "retry budget of 3 attempts exhausted" in reason
    assert scheduler.statistics().tasks_retried == 3
    assert admission.active_leases == 0


async def test_failing_task_propagates_and_still_releases_its_lease() -> None:
    class Exploding(ScriptedHandler):
        async def run_task(self, task: SchedulableTask) -> TaskOutcome:
            if task.task.kind is TaskKind.CELL:
                raise RuntimeError("storage is gone")
            return await super().run_task(task)

    resolver = TaskSchedulingResolver()
    admission = RecordingAdmission({"submission": 2, "local": 2})
    scheduler = AsyncTaskScheduler(
        SchedulerSettings(
            num_records=4,
            buffer_size=2,
            max_concurrent_row_groups=1,
            max_task_attempts=1,
            run_id="t",
        ),
        tracker=CompletionTracker(NODES),
        scheduling=[resolver.resolve(g) for g in GENERATORS],
        admission=admission,
        handler=Exploding(admission),
    )
    with pytest.raises(ExceptionGroup) as caught:
        await scheduler.run()
    assert caught.group_contains(RuntimeError, match="storage is gone")
    assert admission.active_leases == 0


async def test_a_row_dropped_while_a_sibling_task_runs_is_checkpointed_after_it_finishes() -> None:
    # `text` fans out into two cell columns; one fails while the other is still running.
    nodes = [
        TrackerNode(name="root", kind=TaskKind.FROM_SCRATCH, dependencies=()),
        TrackerNode(name="left", kind=TaskKind.CELL, dependencies=(0,)),
        TrackerNode(name="right", kind=TaskKind.CELL, dependencies=(0,)),
    ]
    gate = asyncio.Event()

    class Gated(ScriptedHandler):
        async def run_task(self, task: SchedulableTask) -> TaskOutcome:
            if task.task_id == "right/0/0":
                await gate.wait()
                return SUCCEEDED
            if task.task_id == "left/0/0":
                gate.set()
                return TaskOutcome(kind=TaskOutcomeKind.DROPPED, reason="left failed")
            return await super().run_task(task)

    resolver = TaskSchedulingResolver()
    admission = RecordingAdmission({"submission": 4, "local": 4})
    handler = Gated(admission)
    scheduler = AsyncTaskScheduler(
        SchedulerSettings(
            num_records=1,
            buffer_size=1,
            max_concurrent_row_groups=1,
            max_task_attempts=1,
            run_id="t",
        ),
        tracker=CompletionTracker(nodes),
        scheduling=[resolver.resolve(Generator(n.name)) for n in nodes],
        admission=admission,
        handler=handler,
    )
    await scheduler.run()
    assert handler.checkpoints == [(0, [])]
    assert handler.dropped == [(0, (0,), "left failed")]
    assert admission.active_leases == 0


class StopAfterCheckpoints(ScriptedHandler):
    """Cancels the run once a few row groups are checkpointed."""

    scheduler: AsyncTaskScheduler
    stop_after = 3

    async def checkpoint(self, row_group: int, live_rows: Sequence[int]) -> None:
        await super().checkpoint(row_group, live_rows)
        if len(self.checkpoints) == self.stop_after:
            self.scheduler.cancel()


async def test_a_ten_million_record_plan_allocates_per_admitted_row_group_only() -> None:
    import tracemalloc

    resolver = TaskSchedulingResolver()
    admission = RecordingAdmission({"submission": 8, "local": 2})
    handler = StopAfterCheckpoints(admission)
    tracemalloc.start()
    try:
        scheduler = AsyncTaskScheduler(
            SchedulerSettings(
                num_records=10_000_000,
                buffer_size=100,
                max_concurrent_row_groups=2,
                max_task_attempts=1,
                run_id="big",
            ),
            tracker=CompletionTracker(NODES),
            scheduling=[resolver.resolve(g) for g in GENERATORS],
            admission=admission,
            handler=handler,
        )
        handler.scheduler = scheduler
        with pytest.raises(RunCancelledError):
            await scheduler.run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scheduler.row_groups_total == 100_000
    # Checkpoints already started when the run was cancelled still finish.
    assert 3 <= len(handler.checkpoints) <= 3 + 2
    assert scheduler.statistics().row_groups_admitted <= 3 + 2
    # One pointer per planned record alone would be 80 MB; the run touched a few row groups.
    assert peak < 8 * 1024 * 1024, peak
    assert admission.active_leases == 0


async def test_attempts_that_finish_at_once_share_workers() -> None:
    """Attempts that never wait run one after another in a worker: far fewer tasks than
    attempts (each batch of dispatched attempts starts one worker)."""

    class Immediate(ScriptedHandler):
        async def run_task(self, task: SchedulableTask) -> TaskOutcome:
            self.ran.append(task.task_id)
            return SUCCEEDED

    scheduler, handler, admission = _scheduler(
        200, 100, limits={"submission": 64, "local": 64}, handler_type=Immediate
    )
    loop = asyncio.get_running_loop()
    workers = 0

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        nonlocal workers
        workers += getattr(coro, "__name__", "") == "_work"
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)  # type: ignore[arg-type]
    try:
        await scheduler.run()
    finally:
        loop.set_task_factory(None)
    assert len(handler.ran) == 2 * 2 + 200
    assert 0 < workers <= len(handler.ran) // 10
    assert admission.active_leases == 0


async def test_an_attempt_that_waits_never_holds_up_the_next_one() -> None:
    """Every cell of a row group waits until all of them run at once: it finishes only if each
    waiting attempt has a worker of its own."""
    cells = 8

    class Gathering(ScriptedHandler):
        def __init__(self, admission: RecordingAdmission) -> None:
            super().__init__(admission)
            self.barrier = asyncio.Barrier(cells)

        async def run_task(self, task: SchedulableTask) -> TaskOutcome:
            if task.task.kind is TaskKind.CELL:
                async with asyncio.timeout(10):  # a failure, not a hang, if one is held up
                    await self.barrier.wait()
            return await super().run_task(task)

    scheduler, handler, admission = _scheduler(
        cells,
        cells,
        limits={"submission": cells, "local": 1},
        max_concurrent_row_groups=1,
        handler_type=Gathering,
    )
    await scheduler.run()
    assert sum(task.startswith("text/") for task in handler.ran) == cells
    assert admission.active_leases == 0


@pytest.mark.timeout(30)  # the worker used to die with attempts pending on it: a hang
@pytest.mark.parametrize("after_await", [False, True])
async def test_a_cancelled_error_raised_by_task_code_drops_its_row_and_the_run_goes_on(
    after_await: bool,
) -> None:
    """Task code that raises CancelledError though nothing cancelled its worker (it awaited a
    future something else cancelled) fails that task; the worker and the run go on."""

    class StrayCancellation(ScriptedHandler):
        async def run_task(self, task: SchedulableTask) -> TaskOutcome:
            if task.task_id in ("text/0/1", "text/1/0"):
                self.ran.append(task.task_id)
                if after_await:
                    await asyncio.sleep(0)
                raise asyncio.CancelledError
            return await super().run_task(task)

    scheduler, handler, admission = _scheduler(
        8, 4, limits={"submission": 8, "local": 8}, handler_type=StrayCancellation
    )
    await scheduler.run()
    assert sorted(rows for _, rows, _ in handler.dropped) == [(0,), (1,)]
    assert all("CancelledError" in reason and "'text'" in reason for *_, reason in handler.dropped)
    assert sorted(handler.checkpoints) == [(0, [0, 2, 3]), (1, [1, 2, 3])]
    assert scheduler.statistics().tasks_dropped == 2
    assert scheduler.stop_reason is None
    assert admission.active_leases == 0


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), SystemExit(3)])
async def test_an_interrupt_raised_by_task_code_stops_the_run_like_a_cancellation(
    interrupt: BaseException,
) -> None:
    """KeyboardInterrupt or SystemExit out of a task would stop the event loop mid-run; the
    scheduler stops the run in order instead and raises it wrapped, once every task ended."""

    class Interrupting(ScriptedHandler):
        async def run_task(self, task: SchedulableTask) -> TaskOutcome:
            if task.task_id == "text/1/2":
                raise interrupt
            return await super().run_task(task)

    scheduler, _, admission = _scheduler(
        12, 4, limits={"submission": 4, "local": 4}, handler_type=Interrupting
    )
    with pytest.raises(RunInterruptedError) as caught:
        await scheduler.run()
    assert caught.value.interrupt is interrupt
    assert isinstance(caught.value, RunCancelledError)
    assert "'text'" in str(caught.value) and type(interrupt).__name__ in str(caught.value)
    assert scheduler.stop_reason is StopReason.CANCELLED
    assert scheduler.statistics().tasks_running == 0
    assert admission.active_leases == 0


VISIBLE: ContextVar[str] = ContextVar("visible", default="unset")


async def test_every_attempt_starts_from_the_runs_context() -> None:
    """Task code that sets a context variable and does not reset it (a tracing library, say)
    must not show it to the next attempt, whether attempts wait or finish at once."""

    class Leaky(ScriptedHandler):
        def __init__(self, admission: RecordingAdmission) -> None:
            super().__init__(admission)
            self.seen: dict[str, str] = {}

        async def run_task(self, task: SchedulableTask) -> TaskOutcome:
            self.seen[task.task_id] = VISIBLE.get()
            VISIBLE.set(task.task_id)
            if task.task.row_index is not None and task.task.row_index % 2:
                await asyncio.sleep(0)
            self.ran.append(task.task_id)
            return SUCCEEDED

    scheduler, handler, admission = _scheduler(
        40, 10, limits={"submission": 16, "local": 16}, handler_type=Leaky
    )
    token = VISIBLE.set("run")
    try:
        await scheduler.run()
        assert VISIBLE.get() == "run"
    finally:
        VISIBLE.reset(token)
    assert isinstance(handler, Leaky)
    assert len(handler.seen) == 4 * 2 + 40
    assert set(handler.seen.values()) == {"run"}
    assert admission.active_leases == 0
