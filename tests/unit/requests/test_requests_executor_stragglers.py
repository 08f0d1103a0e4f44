"""The executor's adaptive timeouts and hedged attempts, on a fake clock that also runs the
deadline timers: a hanging attempt is abandoned at its adaptive deadline and retried, a hedge
answers for a hanging attempt, a hedge that loses is cancelled, and every lease is released
exactly once on each path."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from sluiceway.context import TaskCorrelation, current_task
from sluiceway.errors import NonRetryableGenerationError, ProviderUnavailableError
from sluiceway.observability import EventBus, EventKind, MemoryEventSink
from sluiceway.observability.codes import HedgeResultCode, RequestOutcomeCode
from sluiceway.observability.request_events import (
    RequestAdaptiveTimeout,
    RequestHedgeCompleted,
    RequestHedgeStarted,
)
from sluiceway.providers.base import GenerationKind, ModelRequest, ModelResponse
from sluiceway.requests import (
    ModelRequestExecutor,
    ProviderModelKey,
    RequestAdmissionController,
    RequestDomain,
    RequestReleaseOutcome,
    RequestResourceKey,
    RetryPolicy,
)
from sluiceway.requests.latency import StragglerSettings
from sluiceway.testing import FakeClock
from sluiceway.testing.providers import Hang, Reply, ScriptedProviderClient, ScriptStep

KEY = ProviderModelKey(provider="p", model_id="m")
CHAT = RequestResourceKey(provider_model=KEY, domain=RequestDomain.CHAT)
REQUEST = ModelRequest(model_id="m", kind=GenerationKind.TEXT, timeout_seconds=30.0)
# Warm after 2 successes; the fake answers take 0.2 s, so the adaptive timeout is the 1 s floor
# (3 x 0.2 s is below it) and a hedge starts 0.4 s (2 x 0.2 s) into an attempt.
TIMEOUTS = StragglerSettings(min_samples=2)
HEDGING = StragglerSettings(min_samples=2, hedging=True, hedge_budget_ratio=1.0)


class Setup:
    def __init__(self, settings: StragglerSettings, *, cap: int = 4) -> None:
        self.clock = FakeClock(start=10.0)
        self.sink = MemoryEventSink()
        bus = EventBus([self.sink])
        self.controller = RequestAdmissionController(
            {KEY: cap}, clock=self.clock, timers=self.clock, events=bus
        )

        async def no_sleep(seconds: float) -> None:
            return None

        self.executor = ModelRequestExecutor(
            self.controller,
            retry=RetryPolicy(max_attempts=3),
            rng=random.Random(5),
            clock=self.clock,
            sleep=no_sleep,
            events=bus,
            stragglers=settings,
            timers=self.clock,
        )
        self.client = ScriptedProviderClient()

    def answer_after(self, seconds: float, text: str) -> Callable[[ModelRequest], ModelResponse]:
        def answer(request: ModelRequest) -> ModelResponse:
            self.clock.advance(seconds)
            return ModelResponse(text=text)

        return answer

    async def warm_up(self) -> None:
        self.client.push(self.answer_after(0.2, "w1"), self.answer_after(0.2, "w2"))
        for _ in range(2):
            await self.executor.execute(CHAT, self.client, REQUEST)

    def start(self, *steps: ScriptStep) -> asyncio.Task[ModelResponse]:
        self.client.push(*steps)
        return asyncio.create_task(self.executor.execute(CHAT, self.client, REQUEST))

    def outcomes(self) -> dict[RequestReleaseOutcome, int]:
        domain = self.controller.statistics().provider_models[KEY].domains[RequestDomain.CHAT]
        return {outcome: count for outcome, count in domain.outcomes.items() if count}

    def assert_every_lease_released_once(self) -> None:
        stats = self.controller.statistics()
        assert stats.live_leases == stats.in_flight == stats.waiters == 0
        assert stats.granted_total == stats.released_total
        assert stats.release_diagnostics == 0
        assert self.executor.statistics().release_diagnostics == 0

    def events_of(self, kind: EventKind) -> list[object]:
        return [event for event in self.sink.events if event.kind is kind]


async def test_a_hanging_attempt_is_abandoned_at_its_adaptive_deadline_and_retried() -> None:
    setup = Setup(TIMEOUTS)
    await setup.warm_up()
    hang = Hang()
    call = setup.start(hang, Reply(text="second try"))
    await hang.started.wait()
    setup.clock.advance(0.9)
    await asyncio.sleep(0)
    assert not call.done()  # before the 1 s deadline the attempt is left alone
    setup.clock.advance(0.3)  # past it (deadlines fire within one tick, 0.1 s)
    response = await call
    assert response.text == "second try"
    assert not hang.released.is_set()  # the hang never ended: the executor gave up on it
    assert setup.outcomes() == {
        RequestReleaseOutcome.SUCCESS: 3,
        RequestReleaseOutcome.PROVIDER_TIMEOUT: 1,
    }
    setup.assert_every_lease_released_once()
    stats = setup.executor.statistics()
    assert (stats.adaptive_timeouts, stats.attempts, stats.retries) == (1, 4, 1)
    (expired,) = setup.events_of(EventKind.REQUEST_ADAPTIVE_TIMEOUT)
    assert isinstance(expired, RequestAdaptiveTimeout)
    assert expired.timeout_seconds == 1.0
    assert expired.configured_timeout_seconds == 30.0
    assert expired.quantile_seconds == pytest.approx(0.2)
    assert expired.samples == 2


async def test_the_retry_after_an_adaptive_timeout_gets_twice_the_deadline() -> None:
    setup = Setup(TIMEOUTS)
    await setup.warm_up()
    first, second = Hang(), Hang()
    call = setup.start(first, second, Reply(text="third try"))
    await first.started.wait()
    setup.clock.advance(1.2)
    await second.started.wait()
    setup.clock.advance(1.5)  # 1.5 s into the retry: its deadline is 2 s
    await asyncio.sleep(0)
    assert not call.done()
    setup.clock.advance(0.7)
    assert (await call).text == "third try"
    deadlines = [
        event.timeout_seconds
        for event in setup.events_of(EventKind.REQUEST_ADAPTIVE_TIMEOUT)
        if isinstance(event, RequestAdaptiveTimeout)
    ]
    assert deadlines == [1.0, 2.0]
    setup.assert_every_lease_released_once()


async def test_no_adaptive_deadline_before_enough_successes() -> None:
    setup = Setup(StragglerSettings(min_samples=5))
    await setup.warm_up()  # 2 of 5 samples
    hang = Hang(then=Reply(text="slow but fine"))
    call = setup.start(hang)
    await hang.started.wait()
    setup.clock.advance(20.0)
    await asyncio.sleep(0)
    assert not call.done()
    hang.release()
    assert (await call).text == "slow but fine"
    assert setup.executor.statistics().adaptive_timeouts == 0
    setup.assert_every_lease_released_once()


async def test_a_call_cancelled_while_its_attempt_hangs_is_cancelled_not_timed_out() -> None:
    setup = Setup(TIMEOUTS)
    await setup.warm_up()
    hang = Hang()
    call = setup.start(hang)
    await hang.started.wait()
    call.cancel()
    setup.clock.advance(1.2)  # the deadline passes after the cancellation: it must not count
    with pytest.raises(asyncio.CancelledError):
        await call
    assert setup.outcomes()[RequestReleaseOutcome.LOCAL_CANCELLED] == 1
    assert setup.executor.statistics().adaptive_timeouts == 0
    setup.assert_every_lease_released_once()


async def test_a_hedge_answers_for_a_hanging_attempt_which_is_cancelled() -> None:
    setup = Setup(HEDGING)
    hang = Hang()
    correlation = TaskCorrelation(
        run_id="r",
        task_id="t",
        column="text",
        row_group=0,
        row_index=0,
        task_kind="cell",
        group_key="model:p/m",
        group_weight=1,
        execution_id=3,
    )
    token = current_task.set(correlation)  # latency is kept per column: warm up this one
    try:
        await setup.warm_up()
        call = setup.start(hang, Reply(text="hedge"))
    finally:
        current_task.reset(token)
    await hang.started.wait()
    setup.clock.advance(0.5)  # past the hedge delay (0.4 s), before the 1 s deadline
    response = await call
    assert response.text == "hedge"
    assert setup.outcomes() == {
        RequestReleaseOutcome.SUCCESS: 3,
        RequestReleaseOutcome.LOCAL_CANCELLED: 1,
    }
    setup.assert_every_lease_released_once()
    stats = setup.executor.statistics()
    assert (stats.hedges_started, stats.hedges_won, stats.hedges_lost) == (1, 1, 0)
    assert stats.adaptive_timeouts == 0
    (started,) = setup.events_of(EventKind.REQUEST_HEDGE_STARTED)
    (completed,) = setup.events_of(EventKind.REQUEST_HEDGE_COMPLETED)
    assert isinstance(started, RequestHedgeStarted)
    assert isinstance(completed, RequestHedgeCompleted)
    assert started.hedge_after_seconds == pytest.approx(0.4)
    assert completed.result is HedgeResultCode.WON
    assert started.primary_attempt_id == completed.primary_attempt_id != started.attempt_id
    assert started.correlation == completed.correlation == correlation  # the call's task
    released = [
        event
        for event in setup.sink.events
        if event.kind is EventKind.REQUEST_LEASE_RELEASED
        and getattr(event, "attempt_id", None) == started.primary_attempt_id
    ]
    assert [getattr(event, "outcome", None) for event in released] == [
        RequestOutcomeCode.LOCAL_CANCELLED
    ]


async def test_a_hedge_that_loses_is_cancelled_and_releases_its_lease() -> None:
    setup = Setup(HEDGING)
    await setup.warm_up()
    first, hedge = Hang(then=Reply(text="first")), Hang(then=Reply(text="hedge"))
    call = setup.start(first, hedge)
    await first.started.wait()
    setup.clock.advance(0.5)
    await hedge.started.wait()
    first.release()
    assert (await call).text == "first"
    assert setup.outcomes() == {
        RequestReleaseOutcome.SUCCESS: 3,
        RequestReleaseOutcome.LOCAL_CANCELLED: 1,
    }
    setup.assert_every_lease_released_once()
    stats = setup.executor.statistics()
    assert (stats.hedges_started, stats.hedges_won, stats.hedges_lost) == (1, 0, 1)
    (completed,) = setup.events_of(EventKind.REQUEST_HEDGE_COMPLETED)
    assert isinstance(completed, RequestHedgeCompleted)
    assert completed.result is HedgeResultCode.LOST


async def test_when_the_first_attempt_fails_its_running_hedge_still_answers() -> None:
    setup = Setup(HEDGING)
    await setup.warm_up()
    first = Hang(then=ProviderUnavailableError("500"))
    hedge = Hang(then=Reply(text="hedge"))
    call = setup.start(first, hedge)
    await first.started.wait()
    setup.clock.advance(0.5)
    await hedge.started.wait()
    first.release()
    await asyncio.sleep(0)
    assert not call.done()  # waiting on the hedge, not retrying
    hedge.release()
    assert (await call).text == "hedge"
    assert setup.outcomes() == {
        RequestReleaseOutcome.SUCCESS: 3,
        RequestReleaseOutcome.PROVIDER_FAILURE: 1,
    }
    assert setup.executor.statistics().hedges_won == 1
    setup.assert_every_lease_released_once()


async def test_cancelling_a_hedged_call_cancels_both_attempts() -> None:
    setup = Setup(HEDGING)
    await setup.warm_up()
    first, hedge = Hang(), Hang()
    call = setup.start(first, hedge)
    await first.started.wait()
    setup.clock.advance(0.5)
    await hedge.started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert setup.outcomes()[RequestReleaseOutcome.LOCAL_CANCELLED] == 2
    assert setup.executor.statistics().hedges_lost == 1
    setup.assert_every_lease_released_once()


async def test_a_hedge_never_waits_for_capacity() -> None:
    setup = Setup(HEDGING, cap=1)
    await setup.warm_up()
    hang = Hang(then=Reply(text="first"))
    call = setup.start(hang)
    await hang.started.wait()
    setup.clock.advance(0.5)  # the hedge delay passes with no capacity free
    await asyncio.sleep(0)
    hang.release()
    assert (await call).text == "first"
    stats = setup.executor.statistics()
    assert (stats.hedges_started, stats.hedges_skipped) == (0, 1)
    assert setup.controller.statistics().provider_models[KEY].max_waiters == 0
    setup.assert_every_lease_released_once()


async def test_hedges_stay_within_their_budget() -> None:
    # One hedge per 50 attempts: of 10 hanging calls (12 attempts with the warm-up) none.
    setup = Setup(StragglerSettings(min_samples=2, hedging=True, hedge_budget_ratio=0.02))
    await setup.warm_up()
    for _ in range(10):
        hang = Hang(then=Reply(text="first"))
        call = setup.start(hang)
        await hang.started.wait()
        setup.clock.advance(0.5)
        hang.release()
        await call
    stats = setup.executor.statistics()
    assert (stats.hedges_started, stats.hedges_skipped) == (0, 10)
    setup.assert_every_lease_released_once()


async def test_a_call_whose_every_attempt_hangs_gives_up_within_its_retry_budget() -> None:
    setup = Setup(TIMEOUTS)
    await setup.warm_up()
    hangs = [Hang(), Hang(), Hang()]
    call = setup.start(*hangs)
    for hang in hangs:
        await hang.started.wait()
        setup.clock.advance(5.0)
    with pytest.raises(NonRetryableGenerationError, match="adaptive timeout"):
        await call
    assert setup.outcomes()[RequestReleaseOutcome.PROVIDER_TIMEOUT] == 3
    setup.assert_every_lease_released_once()
