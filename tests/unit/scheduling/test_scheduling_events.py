"""Scheduler-stream events: every kind the dispatch loop and task admission can produce, in the
order of one task attempt, on success, retry, drop, blocking, cancellation, early shutdown, the
adaptive horizon and a failed spawn."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from types import MappingProxyType
from typing import Any

import pytest

from sluiceway.context import current_task
from sluiceway.fair_queue import QueueEntry, WeightedFairQueue
from sluiceway.observability import (
    SCHEDULER_KINDS,
    TRACED_KINDS,
    Event,
    EventBus,
    EventKind,
    MemoryEventSink,
    TaskEvent,
    TraceSampler,
)
from sluiceway.observability.codes import (
    CancelCode,
    JobStatus,
    ReleaseDiagnosticCode,
    TaskDenialCode,
    TaskOutcomeCode,
)
from sluiceway.observability.scheduler_events import (
    AdmissionDenied,
    Cancelled,
    NonRetryableDropped,
    ReleaseDiagnostic,
    RetryDeferred,
    RowGroupAdmissionTargetChanged,
    SchedulerJobCompleted,
    StaleSelection,
    TaskCompleted,
    WorkerSpawned,
    WorkerSpawnFailed,
)
from sluiceway.scheduling.admission import TaskAdmissionController, TaskAdmissionLease
from sluiceway.scheduling.failures import EarlyShutdownSettings
from sluiceway.scheduling.metadata import DEFAULT_METADATA
from sluiceway.scheduling.policies import StrictFairTaskAdmissionPolicy
from sluiceway.scheduling.resolver import ResolvedTaskScheduling
from sluiceway.scheduling.row_group_admission import RowGroupHorizonMode
from sluiceway.scheduling.scheduler import (
    SUCCEEDED,
    AsyncTaskScheduler,
    RowGroupHandler,
    SchedulerSettings,
    TaskOutcome,
    TaskOutcomeKind,
    commit_selection,
)
from sluiceway.scheduling.tasks import (
    SchedulableTask,
    SchedulerResourceRequest,
    TaskGroupSpec,
    TaskKind,
    make_task,
)
from sluiceway.scheduling.tracker import CompletionTracker, TrackerNode

# Needs a request-pressure advisory, which these runs do not pass (the engine run test in
# tests/integration/test_run_events.py covers it).
NOT_EMITTED = frozenset({EventKind.REQUEST_PRESSURE_ADVISORY_SKIPPED})

NODES = [
    TrackerNode(name="root", kind=TaskKind.FROM_SCRATCH, dependencies=()),
    TrackerNode(name="a", kind=TaskKind.CELL, dependencies=(0,)),
    TrackerNode(name="b", kind=TaskKind.CELL, dependencies=(0,)),
]


def _resolved(key: str, amounts: dict[str, int]) -> ResolvedTaskScheduling:
    return ResolvedTaskScheduling(
        metadata=DEFAULT_METADATA,
        group=TaskGroupSpec(key=key, weight=1),
        request=SchedulerResourceRequest(amounts=MappingProxyType(amounts)),
    )


# Group "b" needs the one local slot, so "a" runs under peer pressure and gets capped.
SCHEDULING = [
    _resolved("root", {"submission": 1, "local": 1}),
    _resolved("a", {"submission": 1}),
    _resolved("b", {"submission": 1, "local": 1}),
]


class Handler(RowGroupHandler):
    """Succeeds after a few yields; ``outcomes`` scripts the first attempts of chosen tasks."""

    def __init__(self) -> None:
        self.outcomes: dict[str, TaskOutcome] = {}
        self.gate: asyncio.Event | None = None  # cells wait on it when set
        self.cell_started = asyncio.Event()

    def admit(self, row_group: int, first_record: int, size: int) -> None:
        pass

    async def run_task(self, task: SchedulableTask) -> TaskOutcome:
        if self.gate is not None and task.task.kind is TaskKind.CELL:
            self.cell_started.set()
            await self.gate.wait()
        for _ in range((task.task.row_index or 0) % 3):
            await asyncio.sleep(0)
        if task.attempt == 1:
            return self.outcomes.get(task.task_id, SUCCEEDED)
        return SUCCEEDED

    def rows_dropped(self, row_group: int, rows: Sequence[int], column: str, reason: str) -> None:
        pass

    async def checkpoint(self, row_group: int, live_rows: Sequence[int]) -> None:
        pass


def _scheduler(
    handler: Handler, *, limits: dict[str, int] | None = None, **settings: Any
) -> tuple[AsyncTaskScheduler, MemoryEventSink]:
    sink = MemoryEventSink()
    bus = EventBus([sink])
    options: dict[str, Any] = {
        "num_records": 40,
        "buffer_size": 10,
        "max_concurrent_row_groups": 2,
        "max_task_attempts": 3,
    }
    options.update(settings)
    scheduler = AsyncTaskScheduler(
        SchedulerSettings(run_id="run-1", **options),
        tracker=CompletionTracker(NODES),
        scheduling=SCHEDULING,
        admission=TaskAdmissionController(
            limits or {"submission": 4, "local": 1},
            policy=StrictFairTaskAdmissionPolicy(),
            events=bus,
        ),
        handler=handler,
        events=bus,
    )
    return scheduler, sink


def _kinds(events: Sequence[Event]) -> set[EventKind]:
    return {event.kind for event in events}


def _attempt(event: Event) -> tuple[str, int]:
    assert isinstance(event, TaskEvent)
    return event.task_id, event.attempt


TASK_ORDER = (
    EventKind.DEPENDENCY_READY,
    EventKind.READY_ENQUEUED,
    EventKind.SELECTED,
    EventKind.TASK_LEASE_ACQUIRED,
    EventKind.WORKER_SPAWNED,
    EventKind.TASK_COMPLETED,
    EventKind.TASK_LEASE_RELEASED,
)


def _assert_well_formed(events: Sequence[Event]) -> None:
    """Sequences count from 0 without gaps; every attempt's events come in timeline order,
    each once; a spawned attempt ran with its ``execution_id``; every lease went back."""
    assert [event.sequence for event in events] == list(range(len(events)))
    positions: dict[tuple[str, int], dict[EventKind, int]] = {}
    for index, event in enumerate(events):
        if event.kind in TASK_ORDER:
            seen = positions.setdefault(_attempt(event), {})
            assert event.kind not in seen, (event, seen)
            seen[event.kind] = index
    for attempt, seen in positions.items():
        order = [seen[kind] for kind in TASK_ORDER if kind in seen]
        assert order == sorted(order), attempt
        if EventKind.WORKER_SPAWNED in seen:
            assert EventKind.TASK_LEASE_ACQUIRED in seen
    spawned = {
        _attempt(event): event.execution_id for event in events if isinstance(event, WorkerSpawned)
    }
    for event in events:
        if isinstance(event, TaskCompleted) and _attempt(event) in spawned:
            assert event.execution_id == spawned[_attempt(event)]
            if event.correlation is not None:  # built inside the task
                assert event.correlation.execution_id == event.execution_id
                assert event.correlation.task_id == event.task_id
    acquired = [e for e in events if e.kind is EventKind.TASK_LEASE_ACQUIRED]
    released = [e for e in events if e.kind is EventKind.TASK_LEASE_RELEASED]
    assert len(acquired) == len(released)


def _completed(events: Sequence[Event]) -> SchedulerJobCompleted:
    (completed,) = [e for e in events if isinstance(e, SchedulerJobCompleted)]
    return completed


async def _run_success() -> tuple[Event, ...]:
    scheduler, sink = _scheduler(Handler())
    await scheduler.run()
    return sink.events


async def _run_with_failures() -> tuple[Event, ...]:
    handler = Handler()
    handler.outcomes["a/0/1"] = TaskOutcome(
        kind=TaskOutcomeKind.RETRY, reason="overloaded", error_type="ProviderOverloadedError"
    )
    handler.outcomes["b/1/2"] = TaskOutcome(
        kind=TaskOutcomeKind.DROPPED, reason="bad request", error_type="BadRequestError"
    )
    scheduler, sink = _scheduler(handler)
    await scheduler.run()
    return sink.events


async def _run_cancelled() -> tuple[Event, ...]:
    handler = Handler()
    handler.gate = asyncio.Event()  # cells never finish on their own
    scheduler, sink = _scheduler(handler)

    async def cancel_once_cells_run() -> None:
        await handler.cell_started.wait()
        scheduler.cancel()

    canceller = asyncio.create_task(cancel_once_cells_run())
    with pytest.raises(Exception, match="cancelled"):
        await scheduler.run()
    await canceller
    return sink.events


async def _run_early_shutdown() -> tuple[Event, ...]:
    handler = Handler()
    for row_group in range(4):
        for row in range(10):
            handler.outcomes[f"a/{row_group}/{row}"] = TaskOutcome(
                kind=TaskOutcomeKind.DROPPED, reason="bad", error_type="BadRequestError"
            )
    scheduler, sink = _scheduler(
        handler,
        early_shutdown=EarlyShutdownSettings(window=4, min_outcomes=2, max_error_rate=0.5),
    )
    with pytest.raises(Exception, match="stopped early"):
        await scheduler.run()
    return sink.events


async def _run_adaptive() -> tuple[Event, ...]:
    scheduler, sink = _scheduler(
        Handler(),
        limits={"submission": 8, "local": 8},
        num_records=60,
        buffer_size=3,
        max_concurrent_row_groups=1,
        horizon_mode=RowGroupHorizonMode.ADAPTIVE,
        max_rows_in_flight=9,
    )
    await scheduler.run()
    return sink.events


async def _run_refusing_workers(
    refuse: Callable[[], bool],
) -> tuple[tuple[Event, ...], pytest.ExceptionInfo[ExceptionGroup[Exception]]]:
    """Runs a scheduler whose loop refuses to start a worker when ``refuse()`` says so (a fatal
    error for the run); returns its events and the error group it ended with."""
    loop = asyncio.get_running_loop()

    def factory(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Task[Any]:
        if getattr(coro, "__name__", "") == "_work" and refuse():
            coro.close()
            raise RuntimeError("no more tasks")
        return asyncio.Task(coro, loop=loop, **kwargs)

    scheduler, sink = _scheduler(Handler())
    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        with pytest.raises(ExceptionGroup) as caught:
            await scheduler.run()
    finally:
        loop.set_task_factory(None)
    return sink.events, caught


async def _run_spawn_failure() -> tuple[Event, ...]:
    """The loop refuses the second worker the dispatcher starts (for the second batch of
    attempts)."""
    started = 0

    def second_from_dispatch() -> bool:
        nonlocal started
        if not _called_from("_dispatch"):
            return False
        started += 1
        return started == 2

    events, _ = await _run_refusing_workers(second_from_dispatch)
    return events


def _called_from(function: str) -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _controller_events() -> tuple[Event, ...]:
    """Denial, stale selection and diagnostic releases come from task admission itself."""
    sink = MemoryEventSink()
    bus = EventBus([sink])
    controller = TaskAdmissionController({"submission": 1}, events=bus)
    request = SchedulerResourceRequest(amounts=MappingProxyType({"submission": 1}))

    def item(n: int, group: str) -> SchedulableTask:
        return SchedulableTask(
            make_task(1, "a", 0, n, TaskKind.CELL), TaskGroupSpec(key=group, weight=1), request
        )

    queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
    first = item(0, "g")
    queue.enqueue([QueueEntry(item_id=first.task_id, group="g", weight=1, item=first)])
    selection = queue.select_next()
    assert selection is not None
    lease = controller.try_acquire(selection.entry.item)
    assert isinstance(lease, TaskAdmissionLease)
    assert not isinstance(controller.try_acquire(item(1, "g")), TaskAdmissionLease)
    other = item(2, "h")
    queue.enqueue([QueueEntry(item_id=other.task_id, group="h", weight=1, item=other)])
    assert commit_selection(queue, controller, selection, lease) is None  # stale: released
    assert not controller.release(lease).released  # released twice: a diagnostic
    return sink.events


async def test_a_run_emits_each_attempt_in_timeline_order() -> None:
    events = await _run_success()
    _assert_well_formed(events)
    assert events[0].kind is EventKind.SCHEDULER_JOB_STARTED
    assert events[-1].kind is EventKind.SCHEDULER_JOB_COMPLETED
    completed = _completed(events)
    assert (completed.status, completed.records_written) == (JobStatus.COMPLETED, 40)
    assert {
        EventKind.SCHEDULER_HEALTH_SNAPSHOT,
        EventKind.ROW_GROUP_ADMITTED,
        EventKind.ROW_GROUP_ADMISSION_BLOCKED,
        EventKind.ROW_GROUP_CHECKPOINTED,
        EventKind.QUEUE_EMPTY,
        EventKind.QUEUE_DRAINED,
        EventKind.ADMISSION_BLOCKED,
        EventKind.GROUP_CAPPED,
    } <= _kinds(events)
    # 4 row groups x (1 root + 10 + 10 cells), each attempted once.
    assert sum(e.kind is EventKind.TASK_COMPLETED for e in events) == 84


async def test_retries_and_drops_name_the_error_type_only() -> None:
    events = await _run_with_failures()
    _assert_well_formed(events)
    (retry,) = [e for e in events if isinstance(e, RetryDeferred)]
    assert (retry.task_id, retry.attempt, retry.error_type) == (
        "a/0/1",
        1,
        "ProviderOverloadedError",
    )
    assert any(_attempt(e) == ("a/0/1", 2) for e in events if e.kind is EventKind.SELECTED)
    (dropped,) = [e for e in events if isinstance(e, NonRetryableDropped)]
    assert (dropped.task_id, dropped.error_type, dropped.rows_dropped) == (
        "b/1/2",
        "BadRequestError",
        1,
    )
    outcomes = {(e.task_id, e.attempt): e.outcome for e in events if isinstance(e, TaskCompleted)}
    assert outcomes[("a/0/1", 1)] is TaskOutcomeCode.RETRY
    assert outcomes[("b/1/2", 1)] is TaskOutcomeCode.DROPPED
    assert _completed(events).records_dropped == 1


async def test_cancel_emits_cancelled_and_releases_every_lease() -> None:
    events = await _run_cancelled()
    _assert_well_formed(events)
    (cancelled,) = [e for e in events if isinstance(e, Cancelled)]
    assert cancelled.reason is CancelCode.RUN_CANCELLED and cancelled.running_tasks > 0
    assert any(
        isinstance(e, TaskCompleted) and e.outcome is TaskOutcomeCode.CANCELLED for e in events
    )
    assert _completed(events).status is JobStatus.CANCELLED


async def test_early_shutdown_is_a_failed_job() -> None:
    events = await _run_early_shutdown()
    _assert_well_formed(events)
    (cancelled,) = [e for e in events if isinstance(e, Cancelled)]
    assert cancelled.reason is CancelCode.EARLY_SHUTDOWN
    assert _completed(events).status is JobStatus.FAILED


async def test_the_adaptive_horizon_reports_its_target() -> None:
    events = await _run_adaptive()
    _assert_well_formed(events)
    changes = [e for e in events if isinstance(e, RowGroupAdmissionTargetChanged)]
    assert changes and changes[0].previous_target == 1 and changes[0].target > 1
    assert max(change.target for change in changes) <= 3  # 9 rows / 3 per row group


async def test_a_failed_spawn_gives_the_lease_back_after_saying_so() -> None:
    events = await _run_spawn_failure()
    _assert_well_formed(events)
    (failed,) = [e for e in events if isinstance(e, WorkerSpawnFailed)]
    assert failed.error_type == "RuntimeError"
    after = [e for e in events[events.index(failed) :] if _attempt_of(e) == _attempt(failed)]
    assert [e.kind for e in after] == [
        EventKind.WORKER_SPAWN_FAILED,
        EventKind.TASK_LEASE_RELEASED,
    ]
    assert _completed(events).status is JobStatus.FAILED


async def test_a_worker_refused_while_an_attempt_waits_fails_the_run_and_releases_all() -> None:
    """The workers a waiting attempt starts for those behind it come from a loop callback; a
    refused one still ends the run with its error, and every lease acquired is released."""
    events, caught = await _run_refusing_workers(lambda: _called_from("_start_workers_for_pending"))
    assert caught.group_contains(RuntimeError, match="no more tasks")
    acquired = [e for e in events if e.kind is EventKind.TASK_LEASE_ACQUIRED]
    released = [e for e in events if e.kind is EventKind.TASK_LEASE_RELEASED]
    assert acquired and len(released) == len(acquired)
    assert _completed(events).status is JobStatus.FAILED


def _attempt_of(event: Event) -> tuple[str, int] | None:
    return _attempt(event) if isinstance(event, TaskEvent) else None


def test_task_admission_emits_denials_stale_selections_and_diagnostics() -> None:
    events = _controller_events()
    assert [e.kind for e in events] == [
        EventKind.TASK_LEASE_ACQUIRED,
        EventKind.ADMISSION_DENIED,
        EventKind.STALE_SELECTION,
        EventKind.TASK_LEASE_RELEASED,
        EventKind.RELEASE_DIAGNOSTIC,
    ]
    denied, stale, diagnostic = events[1], events[2], events[4]
    assert isinstance(denied, AdmissionDenied) and denied.reason is TaskDenialCode.NO_CAPACITY
    assert isinstance(stale, StaleSelection) and stale.lease_id == 1
    assert isinstance(diagnostic, ReleaseDiagnostic)
    assert diagnostic.code is ReleaseDiagnosticCode.DUPLICATE


async def test_every_scheduler_kind_is_emitted_in_some_run() -> None:
    seen: set[EventKind] = set()
    for scenario in (
        _run_success,
        _run_with_failures,
        _run_cancelled,
        _run_early_shutdown,
        _run_adaptive,
        _run_spawn_failure,
    ):
        seen |= _kinds(await scenario())
    seen |= _kinds(_controller_events())
    assert seen == SCHEDULER_KINDS - NOT_EMITTED


async def test_without_a_sink_the_bus_delivers_nothing() -> None:
    bus = EventBus()
    handler = Handler()
    scheduler = AsyncTaskScheduler(
        SchedulerSettings(
            num_records=20,
            buffer_size=10,
            max_concurrent_row_groups=2,
            max_task_attempts=2,
            run_id="run-1",
        ),
        tracker=CompletionTracker(NODES),
        scheduling=SCHEDULING,
        admission=TaskAdmissionController({"submission": 4, "local": 1}, events=bus),
        handler=handler,
        events=bus,
    )
    await scheduler.run()
    assert sum(bus.statistics().emitted_by_stream.values()) == 0


# -- trace sampling -------------------------------------------------------------------------------


class RecordingHandler(Handler):
    """``Handler`` that notes every attempt it runs: its id, its ``traced`` flag and the
    ``traced`` flag of the correlation it runs under."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[tuple[tuple[str, int], bool, bool]] = []

    async def run_task(self, task: SchedulableTask) -> TaskOutcome:
        correlation = current_task.get()
        assert correlation is not None and correlation.task_id == task.task_id
        self.attempts.append(((task.task_id, task.attempt), task.traced, correlation.traced))
        return await super().run_task(task)


async def _run_sampled(rate: float) -> tuple[RecordingHandler, tuple[Event, ...]]:
    handler = RecordingHandler()
    # Both fail on their first attempt, which is outside the sample at rate 0.25.
    handler.outcomes["a/0/1"] = TaskOutcome(
        kind=TaskOutcomeKind.RETRY, reason="overloaded", error_type="ProviderOverloadedError"
    )
    handler.outcomes["b/1/2"] = TaskOutcome(
        kind=TaskOutcomeKind.DROPPED, reason="bad request", error_type="BadRequestError"
    )
    scheduler, sink = _scheduler(handler, trace_sample_rate=rate)
    await scheduler.run()
    return handler, sink.events


async def test_only_traced_attempts_emit_their_timeline_and_aggregates_always_appear() -> None:
    handler, events = await _run_sampled(0.25)
    sampler = TraceSampler(0.25)
    traced = {key for key, item_traced, _ in handler.attempts if item_traced}
    for key, item_traced, correlation_traced in handler.attempts:
        assert item_traced is correlation_traced is sampler.traces(*key), key
    assert 0 < len(traced) < len(handler.attempts)
    assert not TraceSampler(0.25).traces("a/0/1", 1) and not sampler.traces("b/1/2", 1)
    _assert_well_formed(events)
    detail = [e for e in events if e.kind in TRACED_KINDS]
    # Every traced attempt has its whole timeline, an untraced one no detail event at all.
    by_attempt: dict[tuple[str, int], set[EventKind]] = {}
    for event in detail:
        by_attempt.setdefault(_attempt(event), set()).add(event.kind)
    assert set(by_attempt) == traced
    assert all(kinds == set(TASK_ORDER) for kinds in by_attempt.values())
    # The aggregate and state events of the run, and the failures of untraced attempts.
    kinds = _kinds(events)
    assert {
        EventKind.SCHEDULER_JOB_STARTED,
        EventKind.SCHEDULER_JOB_COMPLETED,
        EventKind.SCHEDULER_HEALTH_SNAPSHOT,
        EventKind.ROW_GROUP_ADMITTED,
        EventKind.ROW_GROUP_CHECKPOINTED,
        EventKind.QUEUE_DRAINED,
        EventKind.ADMISSION_BLOCKED,
        EventKind.GROUP_CAPPED,
    } <= kinds
    (retry,) = [e for e in events if isinstance(e, RetryDeferred)]
    assert (retry.task_id, retry.attempt) == ("a/0/1", 1)
    (redispatched,) = [e for e in events if e.kind is EventKind.SALVAGE_REDISPATCHED]
    assert _attempt(redispatched) == ("a/0/1", 2)
    (dropped,) = [e for e in events if isinstance(e, NonRetryableDropped)]
    assert (dropped.task_id, dropped.rows_dropped) == ("b/1/2", 1)
    assert _completed(events).records_written == 39


async def test_sampling_is_deterministic_and_rate_one_traces_every_attempt() -> None:
    first_handler, first = await _run_sampled(0.25)
    second_handler, second = await _run_sampled(0.25)
    assert sorted(first_handler.attempts) == sorted(second_handler.attempts)
    assert {_attempt(e) for e in first if e.kind in TRACED_KINDS} == {
        _attempt(e) for e in second if e.kind in TRACED_KINDS
    }
    handler, events = await _run_sampled(1.0)
    assert all(item and correlation for _, item, correlation in handler.attempts)
    spawned = {_attempt(e) for e in events if isinstance(e, WorkerSpawned)}
    assert spawned == {key for key, _, _ in handler.attempts}
    _, none = await _run_sampled(0.0)
    assert not [e for e in none if e.kind in TRACED_KINDS]
    assert EventKind.RETRY_DEFERRED in _kinds(none)
