"""Request admission events: every request kind at its emission point, zero-length waits,
correlation from the calling task (child tasks and worker threads included), no payload text."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

from sluiceway.context import TaskCorrelation, current_task
from sluiceway.errors import ProviderUnavailableError, RateLimitedError, RequestAdmissionError
from sluiceway.observability import (
    ALWAYS_RECORDED_KINDS,
    REQUEST_KINDS,
    TRACED_KINDS,
    Event,
    EventBus,
    EventKind,
    EventStream,
    MemoryEventSink,
)
from sluiceway.observability.codec import encode_event
from sluiceway.observability.codes import (
    LimitChangeCode,
    ReleaseDiagnosticCode,
    RequestDenialCode,
    RequestDomainCode,
    RequestOutcomeCode,
)
from sluiceway.observability.request_events import (
    ModelRequestCompleted,
    RequestAcquireDenied,
    RequestEffectiveCapChanged,
    RequestLeaseAcquired,
    RequestLeaseReleased,
    RequestLimitDecreased,
    RequestLimitIncreased,
    RequestRateLimited,
    RequestReleaseDiagnostic,
    RequestResourceRegistered,
    RequestWaitCompleted,
    RequestWaitStarted,
)
from sluiceway.providers.base import (
    ChatMessage,
    GenerationKind,
    ModelRequest,
    ModelResponse,
    TokenUsage,
)
from sluiceway.rate_limits import RateLimitHeaders, RateLimitWindow
from sluiceway.requests import (
    ModelRequestExecutor,
    ProviderModelKey,
    RequestAdmissionController,
    RequestAdmissionItem,
    RequestAdmissionLease,
    RequestDomain,
    RequestReleaseOutcome,
    RequestResourceKey,
    RetryPolicy,
)
from sluiceway.requests.admission import (
    AdaptiveRequestAdmissionController,
    RequestAdmissionSettings,
)
from sluiceway.requests.latency import StragglerSettings
from sluiceway.requests.limits import AdaptiveLimitSettings
from sluiceway.testing import FakeClock
from sluiceway.testing.providers import Hang, Reply, ScriptedProviderClient

KEY = ProviderModelKey(provider="p", model_id="m")
CHAT = RequestResourceKey(provider_model=KEY, domain=RequestDomain.CHAT)
OK = RequestReleaseOutcome.SUCCESS
LIMITED = RequestReleaseOutcome.RATE_LIMITED
CANARY = "CANARY-5d1b7e02"

Scenario = Callable[[], Awaitable[MemoryEventSink]]
E = TypeVar("E", bound=Event)


def _correlation(execution_id: int, task_id: str = "t") -> TaskCorrelation:
    return TaskCorrelation(
        run_id="run",
        task_id=f"{task_id}-{execution_id}",
        column="c",
        row_group=0,
        row_index=execution_id,
        task_kind="cell",
        group_key="model:p/m",
        group_weight=1,
        execution_id=execution_id,
    )


@contextmanager
def _running_as(correlation: TaskCorrelation) -> Iterator[None]:
    token = current_task.set(correlation)
    try:
        yield
    finally:
        current_task.reset(token)


def _bus() -> tuple[EventBus, MemoryEventSink]:
    sink = MemoryEventSink()
    return EventBus([sink]), sink


def _adaptive(
    bus: EventBus,
    cap: int = 4,
    *,
    settings: RequestAdmissionSettings | None = None,
    **limit_settings: object,
) -> tuple[AdaptiveRequestAdmissionController, FakeClock]:
    clock = FakeClock(start=10.0)
    controller = AdaptiveRequestAdmissionController(
        {KEY: cap},
        limit_settings=AdaptiveLimitSettings(**limit_settings),  # type: ignore[arg-type]
        clock=clock,
        timers=clock,
        settings=settings,
        events=bus,
    )
    return controller, clock


def _item(attempt_id: int = 0, *, timeout: float | None = None) -> RequestAdmissionItem:
    return RequestAdmissionItem.capture(
        CHAT, attempt_id=attempt_id, queue_wait_timeout_seconds=timeout
    )


def _lease(result: object) -> RequestAdmissionLease:
    assert isinstance(result, RequestAdmissionLease), result
    return result


def _kinds(sink: MemoryEventSink) -> list[EventKind]:
    return [event.kind for event in sink.events]


def _one(sink: MemoryEventSink, kind: EventKind, cls: type[E]) -> E:
    found = sink.of_kind(kind)
    assert len(found) == 1, found
    event = found[0]
    assert isinstance(event, cls)
    return event


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


# -- scenarios (each returns its sink; the union test runs them all) ----------------------------


async def _immediate_acquire() -> MemoryEventSink:
    bus, sink = _bus()
    controller, _ = _adaptive(bus)
    with _running_as(_correlation(1)):
        lease = await controller.acquire(_item(1))
        controller.release(lease, OK)
    return sink


async def _queued_wait() -> MemoryEventSink:
    bus, sink = _bus()
    controller, clock = _adaptive(bus, cap=1)
    with _running_as(_correlation(1)):
        held = await controller.acquire(_item(1))

    async def second() -> RequestAdmissionLease:
        with _running_as(_correlation(2)):
            return await controller.acquire(_item(2))

    waiter = asyncio.create_task(second())
    await _settle()
    clock.advance(1.5)
    with _running_as(_correlation(1)):
        controller.release(held, OK)
    controller.release(await waiter, OK)
    return sink


async def _wait_ends_without_a_lease() -> MemoryEventSink:
    bus, sink = _bus()
    controller, clock = _adaptive(bus, cap=1)
    held = _lease(controller.try_acquire(_item(1)))
    with pytest.raises(RequestAdmissionError, match="waited 0s"):
        await controller.acquire(_item(2, timeout=0.0))
    timed_out = asyncio.create_task(controller.acquire(_item(3, timeout=0.001)))
    await _settle()
    clock.advance(0.001)  # nothing releases: the controller's timer ends the wait
    with pytest.raises(RequestAdmissionError, match="waited"):
        await timed_out
    cancelled = asyncio.create_task(controller.acquire(_item(4)))
    await _settle()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    shut_out = asyncio.create_task(controller.acquire(_item(5)))
    await _settle()
    controller.shutdown()
    with pytest.raises(RequestAdmissionError, match="shut down"):
        await shut_out
    with pytest.raises(RequestAdmissionError, match="shut down"):
        await controller.acquire(_item(6))
    controller.release(held, OK)
    return sink


async def _rate_limit_and_recovery() -> MemoryEventSink:
    bus, sink = _bus()
    controller, clock = _adaptive(bus, cap=4, max_hold_seconds=0.0)
    leases = [_lease(controller.try_acquire(_item(n))) for n in range(1, 5)]
    controller.release(leases[0], LIMITED, retry_after_seconds=3.0)
    assert not isinstance(controller.try_acquire(_item(5)), RequestAdmissionLease)  # cooldown
    clock.advance(3.0)
    # Three in flight at the limit of 3: the limit is in use, so successes probe above it,
    # one more per round trip of three successes.
    held = leases[1:]
    for n in range(6, 10):
        controller.release(held.pop(0), OK)
        held.append(_lease(controller.try_acquire(_item(n))))
    for lease in held:
        controller.release(lease, OK)
    return sink


async def _startup_ramp() -> MemoryEventSink:
    bus, sink = _bus()
    controller, clock = _adaptive(bus, cap=4, startup_ramp_seconds=3.0)
    controller.release(_lease(controller.try_acquire(_item(1))), OK)
    clock.advance(4.0)  # past the ramp's end: its timers fire one step at a time
    return sink


async def _breaker_and_clamp() -> MemoryEventSink:
    bus, sink = _bus()
    controller, clock = _adaptive(
        bus,
        cap=4,
        max_limit=2,
        settings=RequestAdmissionSettings(
            breaker_open_after_seconds=10.0, breaker_probe_interval_seconds=5.0
        ),
    )
    failing = RequestReleaseOutcome.PROVIDER_FAILURE
    controller.release(_lease(controller.try_acquire(_item(1))), failing)
    clock.advance(11.0)
    controller.release(_lease(controller.try_acquire(_item(2))), failing)
    with pytest.raises(RequestAdmissionError, match="unavailable"):
        await controller.acquire(_item(3))
    clock.advance(5.0)
    probe = _lease(controller.try_acquire(_item(4)))
    controller.release(probe, OK)
    assert not controller.release(probe, OK).released
    return sink


async def _executor_attempts() -> MemoryEventSink:
    bus, sink = _bus()
    controller, _ = _adaptive(bus, cap=2)
    client = ScriptedProviderClient(
        [
            RateLimitedError(f"slow down {CANARY}", retry_after_seconds=0.0),
            Reply(text=f"answer {CANARY}", usage=TokenUsage(prompt_tokens=7, completion_tokens=3)),
        ]
    )
    executor = _executor(controller, bus)
    request = ModelRequest(
        model_id="m",
        kind=GenerationKind.TEXT,
        messages=(ChatMessage(role="user", content=f"prompt {CANARY}"),),
        parameters={"api_key": f"sk-{CANARY}"},
    )
    with _running_as(_correlation(1)):
        await executor.execute(CHAT, client, request)
    return sink


async def _executor_stragglers() -> MemoryEventSink:
    """An attempt hangs past its adaptive deadline; another hangs past its hedge delay and
    its hedge answers."""
    bus, sink = _bus()
    controller, clock = _adaptive(bus, cap=4)

    async def no_sleep(seconds: float) -> None:
        return None

    executor = ModelRequestExecutor(
        controller,
        retry=RetryPolicy(max_attempts=3),
        rng=random.Random(3),
        clock=controller.clock,
        sleep=no_sleep,
        events=bus,
        stragglers=StragglerSettings(min_samples=1, hedging=True, hedge_budget_ratio=1.0),
        timers=clock,
    )

    def slow(request: ModelRequest) -> ModelResponse:
        clock.advance(0.2)
        return ModelResponse(text=f"answer {CANARY}")

    first, second = Hang(), Hang()
    client = ScriptedProviderClient(
        [slow, first, ProviderUnavailableError(f"hedge failed {CANARY}"), slow, second, slow]
    )
    request = ModelRequest(
        model_id="m",
        kind=GenerationKind.TEXT,
        messages=(ChatMessage(role="user", content=f"prompt {CANARY}"),),
        timeout_seconds=30.0,
    )
    with _running_as(_correlation(1)):
        await executor.execute(CHAT, client, request)
        for hang in (first, second):
            call = asyncio.create_task(executor.execute(CHAT, client, request))
            await hang.started.wait()
            clock.advance(0.5)  # the hedge delay (0.4 s) passes: a hedge starts
            await asyncio.sleep(0)
            clock.advance(0.6)  # the deadline (1 s) passes, unless the hedge answered
            await call
    return sink


def _executor(controller: RequestAdmissionController, bus: EventBus) -> ModelRequestExecutor:
    async def no_sleep(seconds: float) -> None:
        return None

    return ModelRequestExecutor(
        controller,
        retry=RetryPolicy(max_attempts=3),
        rng=random.Random(3),
        clock=controller.clock,
        sleep=no_sleep,
        events=bus,
    )


async def _paced_by_reported_window() -> MemoryEventSink:
    bus, sink = _bus()
    controller, clock = _adaptive(bus, cap=4)
    lease = _lease(controller.try_acquire(_item(1)))
    spent = RateLimitWindow(limit=10, remaining=0, reset_seconds=1.0)
    controller.release(lease, OK, rate_limit=RateLimitHeaders(requests=spent))
    assert not isinstance(controller.try_acquire(_item(2)), RequestAdmissionLease)
    clock.advance(0.1)
    controller.release(_lease(controller.try_acquire(_item(3))), OK)
    return sink


SCENARIOS: tuple[Scenario, ...] = (
    _immediate_acquire,
    _queued_wait,
    _wait_ends_without_a_lease,
    _rate_limit_and_recovery,
    _paced_by_reported_window,
    _startup_ramp,
    _breaker_and_clamp,
    _executor_attempts,
    _executor_stragglers,
)


# -- tests --------------------------------------------------------------------------------------


async def test_every_request_kind_is_emitted_and_only_request_kinds() -> None:
    seen: set[EventKind] = set()
    for scenario in SCENARIOS:
        sink = await scenario()
        assert all(event.stream is EventStream.REQUEST for event in sink.events)
        seen.update(_kinds(sink))
    assert seen == REQUEST_KINDS


async def test_an_immediate_acquire_is_a_zero_length_wait() -> None:
    sink = await _immediate_acquire()
    assert _kinds(sink) == [
        EventKind.REQUEST_RESOURCE_REGISTERED,
        EventKind.REQUEST_WAIT_STARTED,
        EventKind.REQUEST_WAIT_COMPLETED,
        EventKind.REQUEST_LEASE_ACQUIRED,
        EventKind.REQUEST_LEASE_RELEASED,
    ]
    started = _one(sink, EventKind.REQUEST_WAIT_STARTED, RequestWaitStarted)
    completed = _one(sink, EventKind.REQUEST_WAIT_COMPLETED, RequestWaitCompleted)
    acquired = _one(sink, EventKind.REQUEST_LEASE_ACQUIRED, RequestLeaseAcquired)
    assert started.captured_at == completed.captured_at == acquired.captured_at
    assert completed.waited_seconds == 0.0 and started.waiters_ahead == 0
    assert (acquired.in_flight, acquired.limit, acquired.cap) == (1, 4, 4)
    assert (acquired.provider, acquired.model, acquired.domain) == (
        "p",
        "m",
        RequestDomainCode.CHAT,
    )
    released = _one(sink, EventKind.REQUEST_LEASE_RELEASED, RequestLeaseReleased)
    assert (released.lease_id, released.outcome, released.in_flight) == (
        acquired.lease_id,
        RequestOutcomeCode.SUCCESS,
        0,
    )
    registered = _one(sink, EventKind.REQUEST_RESOURCE_REGISTERED, RequestResourceRegistered)
    assert (registered.static_cap, registered.initial_limit) == (4, 4)
    assert [event.sequence for event in sink.events] == list(range(5))


async def test_a_queued_wait_is_reported_by_the_waiter_in_its_own_task() -> None:
    sink = await _queued_wait()
    waited = [e for e in sink.events if isinstance(e, RequestWaitCompleted) and e.attempt_id == 2]
    assert len(waited) == 1 and waited[0].waited_seconds == 1.5
    assert EventKind.REQUEST_QUEUE_FORMED in _kinds(sink)
    assert EventKind.REQUEST_QUEUE_DRAINED in _kinds(sink)
    # Granted inside the first task's release, reported under the second task's correlation.
    for event in sink.events:
        attempt_id = getattr(event, "attempt_id", None)
        if attempt_id in (1, 2) and event.kind is not EventKind.REQUEST_LEASE_RELEASED:
            assert event.correlation == _correlation(attempt_id), event
    acquired = [e for e in sink.events if isinstance(e, RequestLeaseAcquired)]
    assert [(e.attempt_id, e.in_flight) for e in acquired] == [(1, 1), (2, 1)]


async def test_waits_that_end_without_a_lease_each_end_once() -> None:
    sink = await _wait_ends_without_a_lease()
    ends = {
        EventKind.REQUEST_WAIT_COMPLETED,
        EventKind.REQUEST_WAIT_TIMEOUT,
        EventKind.REQUEST_WAIT_CANCELLED,
        EventKind.REQUEST_ACQUIRE_DENIED,
    }
    by_attempt: dict[int, list[EventKind]] = {}
    for event in sink.events:
        if event.kind is EventKind.REQUEST_WAIT_STARTED or event.kind in ends:
            by_attempt.setdefault(getattr(event, "attempt_id", -1), []).append(event.kind)
    assert by_attempt == {
        1: [EventKind.REQUEST_WAIT_STARTED, EventKind.REQUEST_WAIT_COMPLETED],
        2: [EventKind.REQUEST_WAIT_STARTED, EventKind.REQUEST_WAIT_TIMEOUT],
        3: [EventKind.REQUEST_WAIT_STARTED, EventKind.REQUEST_WAIT_TIMEOUT],
        4: [EventKind.REQUEST_WAIT_STARTED, EventKind.REQUEST_WAIT_CANCELLED],
        5: [EventKind.REQUEST_WAIT_STARTED, EventKind.REQUEST_ACQUIRE_DENIED],
        6: [EventKind.REQUEST_WAIT_STARTED, EventKind.REQUEST_ACQUIRE_DENIED],
    }
    denials = [e.reason for e in sink.events if isinstance(e, RequestAcquireDenied)]
    assert denials == [RequestDenialCode.SHUTDOWN, RequestDenialCode.SHUTDOWN]


async def test_try_acquire_reports_why_it_refused() -> None:
    bus, sink = _bus()
    controller, _ = _adaptive(bus, cap=1)
    held = _lease(controller.try_acquire(_item(1)))
    controller.try_acquire(_item(2))
    controller.try_acquire(
        RequestAdmissionItem(
            resource=RequestResourceKey(
                provider_model=ProviderModelKey(provider="p", model_id="other"),
                domain=RequestDomain.CHAT,
            ),
            attempt_id=3,
        )
    )
    controller.release(held, LIMITED)
    controller.try_acquire(_item(4))
    denials = [(e.attempt_id, e.reason) for e in sink.events if isinstance(e, RequestAcquireDenied)]
    assert denials == [
        (2, RequestDenialCode.NO_CAPACITY),
        (3, RequestDenialCode.UNKNOWN_RESOURCE),
        (4, RequestDenialCode.COOLDOWN),
    ]


async def test_a_rate_limit_reports_cooldown_decrease_and_recovery() -> None:
    sink = await _rate_limit_and_recovery()
    limited = _one(sink, EventKind.REQUEST_RATE_LIMITED, RequestRateLimited)
    assert (limited.attempt_id, limited.retry_after_seconds, limited.cooldown_seconds) == (
        1,
        3.0,
        3.0,
    )
    decreased = _one(sink, EventKind.REQUEST_LIMIT_DECREASED, RequestLimitDecreased)
    assert (decreased.previous_limit, decreased.limit, decreased.reason) == (
        4,
        3,
        LimitChangeCode.RATE_LIMITED,
    )
    increased = _one(sink, EventKind.REQUEST_LIMIT_INCREASED, RequestLimitIncreased)
    assert (increased.previous_limit, increased.limit, increased.reason) == (
        3,
        4,
        LimitChangeCode.PROBE,
    )
    kinds = _kinds(sink)
    assert kinds.index(EventKind.REQUEST_RATE_LIMITED) < kinds.index(
        EventKind.REQUEST_LIMIT_DECREASED
    )
    assert EventKind.REQUEST_SOFT_CEILING_RECOVERED in kinds
    assert EventKind.REQUEST_FULLY_RECOVERED in kinds


async def test_the_startup_ramp_moves_the_limit_with_its_own_reason() -> None:
    sink = await _startup_ramp()
    changes = [
        (e.kind, e.previous_limit, e.limit, e.reason)
        for e in sink.events
        if isinstance(e, RequestLimitDecreased | RequestLimitIncreased)
    ]
    assert changes[0] == (EventKind.REQUEST_LIMIT_DECREASED, 4, 1, LimitChangeCode.STARTUP_RAMP)
    assert changes[-1][2] == 4
    assert all(reason is LimitChangeCode.STARTUP_RAMP for *_, reason in changes)
    # A ramp is not a setback: reaching the target is not a recovery.
    assert EventKind.REQUEST_FULLY_RECOVERED not in _kinds(sink)
    # Timer-driven changes belong to no task.
    assert all(e.correlation is None for e in sink.events)


async def test_the_breaker_and_a_clamp_change_the_effective_cap() -> None:
    sink = await _breaker_and_clamp()
    caps = [
        (e.previous_cap, e.cap) for e in sink.events if isinstance(e, RequestEffectiveCapChanged)
    ]
    assert caps == [(4, 2), (4, 0), (0, 1), (1, 4)]
    denied = _one(sink, EventKind.REQUEST_ACQUIRE_DENIED, RequestAcquireDenied)
    assert denied.reason is RequestDenialCode.BREAKER_OPEN
    diagnostic = _one(sink, EventKind.REQUEST_RELEASE_DIAGNOSTIC, RequestReleaseDiagnostic)
    assert diagnostic.code is ReleaseDiagnosticCode.DUPLICATE


async def test_the_executor_reports_each_attempt_with_its_outcome() -> None:
    sink = await _executor_attempts()
    completed = [e for e in sink.events if isinstance(e, ModelRequestCompleted)]
    assert [(e.attempt_id, e.outcome) for e in completed] == [
        (1, RequestOutcomeCode.RATE_LIMITED),
        (2, RequestOutcomeCode.SUCCESS),
    ]
    assert (completed[0].input_tokens, completed[1].input_tokens) == (None, 7)
    assert completed[1].output_tokens == 3
    per_attempt = [
        e.kind
        for e in sink.events
        if getattr(e, "attempt_id", None) == 2 and e.kind is not EventKind.REQUEST_QUEUE_DRAINED
    ]
    assert per_attempt == [
        EventKind.REQUEST_WAIT_STARTED,
        EventKind.REQUEST_WAIT_COMPLETED,
        EventKind.REQUEST_LEASE_ACQUIRED,
        EventKind.MODEL_REQUEST_STARTED,
        EventKind.MODEL_REQUEST_COMPLETED,
        EventKind.REQUEST_LEASE_RELEASED,
    ]
    assert all(e.correlation == _correlation(1) for e in sink.events if e.kind in REQUEST_KINDS)


async def test_no_event_carries_prompts_completions_or_secrets() -> None:
    for scenario in SCENARIOS:
        sink = await scenario()
        for event in sink.events:
            assert CANARY not in encode_event(event)
            assert CANARY not in repr(event)


async def test_calls_from_child_tasks_carry_the_parent_task_correlation() -> None:
    bus, sink = _bus()
    controller, _ = _adaptive(bus, cap=1)
    executor = _executor(controller, bus)
    hang = Hang()
    client = ScriptedProviderClient([hang], default=Reply())
    request = ModelRequest(model_id="m", kind=GenerationKind.TEXT)

    async def custom_column() -> None:
        calls = [executor.execute(CHAT, client, request) for _ in range(3)]
        gathered = asyncio.gather(*calls)
        await hang.started.wait()
        hang.release()
        await gathered

    with _running_as(_correlation(7)):
        task = asyncio.create_task(custom_column())
    with _running_as(_correlation(8)):
        other = asyncio.create_task(executor.execute(CHAT, client, request))
    await asyncio.gather(task, other)
    attempts: dict[int, set[int]] = {}
    for event in sink.events:
        attempt_id = getattr(event, "attempt_id", None)
        if attempt_id is not None:
            assert event.correlation is not None, event
            attempts.setdefault(attempt_id, set()).add(event.correlation.execution_id)
    assert sorted(attempts) == [1, 2, 3, 4]
    assert all(len(ids) == 1 for ids in attempts.values()), attempts
    assert sorted(next(iter(ids)) for ids in attempts.values()) == [7, 7, 7, 8]


async def test_a_worker_thread_acquire_carries_the_thread_task_correlation() -> None:
    bus, sink = _bus()
    queued = _WaitStartedSignal(attempt_id=2)
    bus.add_sink(queued)
    controller, _ = _adaptive(bus, cap=1)
    loop = asyncio.get_running_loop()
    held = _lease(controller.try_acquire(_item(1)))

    def in_thread() -> None:
        # A plain executor thread starts from an empty context; the task sets its own.
        current_task.set(_correlation(9))
        lease = controller.acquire_sync(_item(2), loop=loop)
        controller.release_threadsafe(lease, OK)

    worker = loop.run_in_executor(None, contextvars.Context().run, in_thread)
    await queued.seen.wait()  # the thread's request is queued behind the held lease
    controller.release(held, OK)
    await worker
    await _settle()
    # Through asyncio.to_thread the context is copied from the calling task.
    with _running_as(_correlation(10)):
        lease = await asyncio.to_thread(controller.acquire_sync, _item(3), loop=loop)
    controller.release(lease, OK)
    for attempt_id, execution_id in ((2, 9), (3, 10)):
        events = [e for e in sink.events if getattr(e, "attempt_id", None) == attempt_id]
        kinds = {e.kind for e in events}
        assert EventKind.REQUEST_WAIT_STARTED in kinds
        assert EventKind.REQUEST_LEASE_ACQUIRED in kinds
        for event in events:
            if event.kind is EventKind.REQUEST_LEASE_RELEASED and attempt_id == 3:
                continue  # released by the loop task itself, outside that correlation
            assert event.correlation == _correlation(execution_id), event


class _WaitStartedSignal:
    """A sink that sets ``seen`` when the given attempt starts waiting (on the loop thread)."""

    def __init__(self, attempt_id: int) -> None:
        self.attempt_id = attempt_id
        self.seen = asyncio.Event()

    @property
    def kinds(self) -> frozenset[EventKind]:
        return frozenset({EventKind.REQUEST_WAIT_STARTED})

    def handle(self, event: Event) -> None:
        if getattr(event, "attempt_id", None) == self.attempt_id:
            self.seen.set()

    def close(self) -> None:
        pass


async def test_without_a_sink_no_event_is_built() -> None:
    bus = EventBus()
    controller, _ = _adaptive(bus, cap=1)
    lease = await controller.acquire(_item(1))
    controller.release(lease, LIMITED)
    assert bus.statistics().emitted_by_stream[EventStream.REQUEST] == 0
    default = RequestAdmissionController({KEY: 1})
    assert default.events.sinks == ()


# -- trace sampling -------------------------------------------------------------------------------


def _untraced(execution_id: int) -> TaskCorrelation:
    return dataclasses.replace(_correlation(execution_id, task_id="u"), traced=False)


async def _mixed_run() -> MemoryEventSink:
    """A traced and an untraced task call through the executor (a rate limit, then success)
    and queue on one lease; an untraced wait times out; a call outside any task."""
    bus, sink = _bus()
    controller, _ = _adaptive(bus, cap=1, default_cooldown_seconds=0.0)
    executor = _executor(controller, bus)
    request = ModelRequest(
        model_id="m",
        kind=GenerationKind.TEXT,
        messages=(ChatMessage(role="user", content="hello"),),
    )

    async def call(correlation: TaskCorrelation) -> None:
        client = ScriptedProviderClient(
            [RateLimitedError("slow down", retry_after_seconds=0.0), Reply(text="ok")]
        )
        with _running_as(correlation):
            await executor.execute(CHAT, client, request)

    async with asyncio.TaskGroup() as group:
        group.create_task(call(_correlation(1)))
        group.create_task(call(_untraced(2)))
    held = _lease(controller.try_acquire(_item(10)))  # outside any task: traced
    with _running_as(_untraced(3)), pytest.raises(RequestAdmissionError, match="waited"):
        await controller.acquire(_item(11, timeout=0.0))
    controller.release(held, OK)
    return sink


async def test_an_untraced_task_emits_no_request_detail_but_every_aggregate() -> None:
    sink = await _mixed_run()
    detail = [e for e in sink.events if e.kind in TRACED_KINDS]
    # Detail events come from the traced task and from the call outside any task only.
    assert {e.correlation.execution_id if e.correlation else None for e in detail} == {1, None}
    assert all(e.correlation is None or e.correlation.traced for e in detail)
    traced_kinds = {e.kind for e in detail if e.correlation is not None}
    assert traced_kinds == TRACED_KINDS & REQUEST_KINDS
    # Wait timeouts and rate limits of the untraced tasks are still recorded.
    untraced = [e for e in sink.events if e.correlation is not None and not e.correlation.traced]
    assert untraced and {e.kind for e in untraced} <= ALWAYS_RECORDED_KINDS
    assert {EventKind.REQUEST_RATE_LIMITED, EventKind.REQUEST_WAIT_TIMEOUT} <= {
        e.kind for e in untraced
    }
    assert sum(e.kind is EventKind.REQUEST_RATE_LIMITED for e in sink.events) == 2
    assert EventKind.REQUEST_RESOURCE_REGISTERED in _kinds(sink)
    # The traced request attempts still pair each lease acquired with its release.
    acquired = {e.attempt_id for e in sink.of_kind(EventKind.REQUEST_LEASE_ACQUIRED)}
    released = {e.attempt_id for e in sink.of_kind(EventKind.REQUEST_LEASE_RELEASED)}
    assert acquired == released and len(acquired) == 3
