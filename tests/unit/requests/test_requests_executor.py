"""The executor: one lease per attempt, classification on release, retries within a budget."""

from __future__ import annotations

import asyncio
import random

import pytest

from sluiceway.errors import (
    AuthenticationError,
    BadRequestError,
    EngineError,
    NonRetryableGenerationError,
    ProviderError,
    ProviderOverloadedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
    RetryableGenerationError,
)
from sluiceway.providers.base import GenerationKind, ModelRequest
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
    classify_exception,
    retry_delay_seconds,
)
from sluiceway.requests.admission import AdaptiveRequestAdmissionController
from sluiceway.testing import FakeClock
from sluiceway.testing.providers import Hang, Reply, ScriptedProviderClient

KEY = ProviderModelKey(provider="acme", model_id="m-1")
CHAT = RequestResourceKey(provider_model=KEY, domain=RequestDomain.CHAT)
REQUEST = ModelRequest(model_id="m-1", kind=GenerationKind.TEXT)


class FakeTime:
    """A clock and a sleep that advances it instantly; records every sleep."""

    def __init__(self, controller: RequestAdmissionController) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.in_flight_while_sleeping: list[int] = []
        self._controller = controller

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.in_flight_while_sleeping.append(self._controller.statistics().in_flight)
        self.now += seconds


def _setup(
    policy: RetryPolicy | None = None,
    *,
    cap: int = 2,
    queue_wait_timeout_seconds: float | None = None,
) -> tuple[RequestAdmissionController, ModelRequestExecutor, FakeTime]:
    controller = RequestAdmissionController({KEY: cap})
    fake = FakeTime(controller)
    executor = ModelRequestExecutor(
        controller,
        retry=policy or RetryPolicy(),
        rng=random.Random(7),
        clock=fake.clock,
        sleep=fake.sleep,
        queue_wait_timeout_seconds=queue_wait_timeout_seconds,
    )
    return controller, executor, fake


def _outcomes(controller: RequestAdmissionController) -> dict[RequestReleaseOutcome, int]:
    domain = controller.statistics().provider_models[KEY].domains[RequestDomain.CHAT]
    return {outcome: count for outcome, count in domain.outcomes.items() if count}


async def test_every_attempt_takes_and_releases_its_own_lease() -> None:
    controller, executor, fake = _setup()
    client = ScriptedProviderClient(
        [
            RateLimitedError("slow down", retry_after_seconds=0.5),
            ProviderUnavailableError("503"),
            Reply(text="hello"),
        ]
    )
    response = await executor.execute(CHAT, client, REQUEST)

    assert response.text == "hello"
    assert len(client.requests) == 3
    stats = controller.statistics()
    assert stats.granted_total == stats.released_total == 3
    assert stats.live_leases == 0
    assert _outcomes(controller) == {
        RequestReleaseOutcome.RATE_LIMITED: 1,
        RequestReleaseOutcome.PROVIDER_FAILURE: 1,
        RequestReleaseOutcome.SUCCESS: 1,
    }
    assert fake.in_flight_while_sleeping == [0, 0]  # no lease is held between attempts
    executor_stats = executor.statistics()
    assert (executor_stats.calls, executor_stats.attempts, executor_stats.retries) == (1, 3, 2)
    assert (executor_stats.rate_limited, executor_stats.failures) == (1, 1)
    assert executor_stats.successes == 1


async def test_a_rate_limit_waits_at_least_retry_after_with_small_jitter() -> None:
    _, executor, fake = _setup()
    client = ScriptedProviderClient(
        [RateLimitedError("429", retry_after_seconds=2.0), Reply(text="ok")]
    )
    await executor.execute(CHAT, client, REQUEST)
    assert len(fake.sleeps) == 1
    assert 2.0 <= fake.sleeps[0] <= 2.2


async def test_provider_failures_back_off_exponentially_with_jitter() -> None:
    policy = RetryPolicy(max_attempts=4, backoff_base_seconds=1.0, backoff_max_seconds=3.0)
    _, executor, fake = _setup(policy)
    client = ScriptedProviderClient(
        [ProviderTimeoutError("t"), ProviderUnavailableError("u"), TimeoutError(), Reply()]
    )
    await executor.execute(CHAT, client, REQUEST)
    first, second, third = fake.sleeps
    assert 0.5 <= first <= 1.0
    assert 1.0 <= second <= 2.0
    assert 1.5 <= third <= 3.0  # capped at backoff_max_seconds


@pytest.mark.parametrize("error", [BadRequestError("context too long"), AuthenticationError("401")])
async def test_non_retryable_provider_errors_fail_at_once_naming_the_model(
    error: ProviderError,
) -> None:
    controller, executor, fake = _setup()
    client = ScriptedProviderClient([error])
    with pytest.raises(NonRetryableGenerationError, match=r"'acme' model 'm-1'") as caught:
        await executor.execute(CHAT, client, REQUEST)
    assert type(error).__name__ in str(caught.value)
    assert caught.value.__cause__ is error
    assert fake.sleeps == []
    assert executor.statistics().non_retryable == 1
    assert _outcomes(controller) == {RequestReleaseOutcome.PROVIDER_FAILURE: 1}
    assert controller.statistics().live_leases == 0


async def test_an_exhausted_attempt_budget_says_how_many_attempts_and_the_last_error() -> None:
    controller, executor, fake = _setup(RetryPolicy(max_attempts=3))
    client = ScriptedProviderClient(default=ProviderUnavailableError("upstream reset"))
    with pytest.raises(
        NonRetryableGenerationError,
        match=r"gave up after 3 attempt\(s\).*ProviderUnavailableError: upstream reset",
    ):
        await executor.execute(CHAT, client, REQUEST)
    assert len(client.requests) == 3
    assert len(fake.sleeps) == 2
    assert executor.statistics().budgets_exhausted == 1
    assert controller.statistics().granted_total == controller.statistics().released_total == 3


async def test_the_wall_time_budget_stops_before_a_sleep_that_would_overrun_it() -> None:
    _, executor, fake = _setup(RetryPolicy(max_attempts=10, max_wall_seconds=1.0))
    client = ScriptedProviderClient(default=RateLimitedError("429", retry_after_seconds=0.6))
    with pytest.raises(
        NonRetryableGenerationError, match=r"gave up after 2 attempt\(s\) over 0.6s"
    ):
        await executor.execute(CHAT, client, REQUEST)
    assert len(fake.sleeps) == 1
    assert fake.now < 1.0


async def test_cancellation_during_the_call_releases_as_local_cancelled_and_propagates() -> None:
    controller, executor, _ = _setup()
    hang = Hang()
    client = ScriptedProviderClient([hang])
    call = asyncio.create_task(executor.execute(CHAT, client, REQUEST))
    await hang.started.wait()
    assert controller.statistics().in_flight == 1

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert _outcomes(controller) == {RequestReleaseOutcome.LOCAL_CANCELLED: 1}
    assert controller.statistics().live_leases == 0
    assert executor.statistics().cancelled == 1
    assert executor.statistics().retries == 0


async def test_unexpected_exceptions_are_released_and_re_raised_unchanged() -> None:
    controller, executor, fake = _setup()
    bug = ValueError("client bug")
    client = ScriptedProviderClient([bug])
    with pytest.raises(ValueError, match="client bug") as caught:
        await executor.execute(CHAT, client, REQUEST)
    assert caught.value is bug
    assert _outcomes(controller) == {RequestReleaseOutcome.UNEXPECTED_EXCEPTION: 1}
    assert fake.sleeps == []


async def test_execute_attempt_is_exactly_one_attempt() -> None:
    controller, executor, _ = _setup()
    client = ScriptedProviderClient([RateLimitedError("429", retry_after_seconds=3.0)])
    item = RequestAdmissionItem(resource=CHAT, attempt_id=1)
    with pytest.raises(RateLimitedError):
        await executor.execute_attempt(item, client, REQUEST)
    assert len(client.requests) == 1
    assert _outcomes(controller) == {RequestReleaseOutcome.RATE_LIMITED: 1}


async def test_attempts_wait_for_capacity_and_never_exceed_the_cap() -> None:
    controller, executor, _ = _setup(cap=2)
    hangs = [Hang() for _ in range(5)]
    client = ScriptedProviderClient(hangs)
    calls = [asyncio.create_task(executor.execute(CHAT, client, REQUEST)) for _ in hangs]
    await hangs[1].started.wait()
    for _ in range(200):  # yield until the other three calls are queued
        if controller.statistics().waiters == 3:
            break
        await asyncio.sleep(0)
    assert controller.statistics().waiters == 3
    assert client.in_flight == 2
    for hang in hangs:
        hang.release()
    await asyncio.gather(*calls)
    assert client.max_in_flight == 2
    assert controller.statistics().provider_models[KEY].max_in_flight == 2


async def test_a_queue_wait_timeout_is_a_retryable_generation_error() -> None:
    controller, executor, _ = _setup(cap=1, queue_wait_timeout_seconds=0)
    held = controller.try_acquire(RequestAdmissionItem(resource=CHAT))
    assert isinstance(held, RequestAdmissionLease)
    with pytest.raises(RetryableGenerationError, match="waited 0s for a lease"):
        await executor.execute(CHAT, ScriptedProviderClient([Reply()]), REQUEST)
    assert executor.statistics().attempts == 0
    controller.release(held, RequestReleaseOutcome.SUCCESS)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            RateLimitedError("429", retry_after_seconds=4.0),
            (RequestReleaseOutcome.RATE_LIMITED, 4.0),
        ),
        (ProviderTimeoutError("t"), (RequestReleaseOutcome.PROVIDER_TIMEOUT, None)),
        (ProviderUnavailableError("503"), (RequestReleaseOutcome.PROVIDER_FAILURE, None)),
        (BadRequestError("400"), (RequestReleaseOutcome.PROVIDER_FAILURE, None)),
        (asyncio.CancelledError(), (RequestReleaseOutcome.LOCAL_CANCELLED, None)),
        (KeyboardInterrupt(), (RequestReleaseOutcome.LOCAL_CANCELLED, None)),
        (TimeoutError(), (RequestReleaseOutcome.LOCAL_TIMEOUT, None)),
        (KeyError("x"), (RequestReleaseOutcome.UNEXPECTED_EXCEPTION, None)),
    ],
)
def test_classification_of_attempt_exits(
    error: BaseException, expected: tuple[RequestReleaseOutcome, float | None]
) -> None:
    assert classify_exception(error) == expected


def test_retry_delays_follow_the_documented_formula() -> None:
    policy = RetryPolicy(backoff_base_seconds=0.5, backoff_max_seconds=4.0)
    rng = random.Random(1)
    for retry_number, full in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0), (500, 4.0)]:
        delay = retry_delay_seconds(
            policy, retry_number=retry_number, retry_after_seconds=None, rng=rng
        )
        assert full / 2 <= delay <= full
    honoured = retry_delay_seconds(policy, retry_number=1, retry_after_seconds=10.0, rng=rng)
    assert 10.0 <= honoured <= 11.0
    # A tiny Retry-After is a floor, not the delay: the backoff still grows.
    tiny = retry_delay_seconds(policy, retry_number=4, retry_after_seconds=0.001, rng=rng)
    assert 2.0 <= tiny <= 4.0
    with pytest.raises(EngineError, match="start at 1"):
        retry_delay_seconds(policy, retry_number=0, retry_after_seconds=None, rng=rng)


def test_retry_delays_are_reproducible_from_the_seed() -> None:
    policy = RetryPolicy()

    def delays(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [
            retry_delay_seconds(policy, retry_number=n, retry_after_seconds=None, rng=rng)
            for n in range(1, 6)
        ]

    assert delays(3) == delays(3)
    assert delays(3) != delays(4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1"),
        ({"max_wall_seconds": 0}, "max_wall_seconds must be > 0"),
        ({"backoff_base_seconds": 5, "backoff_max_seconds": 1}, "backoff_base_seconds"),
    ],
)
def test_invalid_retry_policies_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(EngineError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [503, 529])
async def test_an_overload_answer_is_rate_pressure_that_decreases_the_limit(status: int) -> None:
    clock = FakeClock(start=0.0)
    controller = AdaptiveRequestAdmissionController({KEY: 8}, clock=clock, timers=clock)
    executor = ModelRequestExecutor(
        controller, retry=RetryPolicy(max_attempts=1), rng=random.Random(1), clock=clock
    )
    client = ScriptedProviderClient([ProviderOverloadedError(f"HTTP {status}")])
    with pytest.raises(NonRetryableGenerationError, match="gave up after 1 attempt"):
        await executor.execute(CHAT, client, REQUEST)
    domain = controller.statistics().provider_models[KEY].domains[RequestDomain.CHAT]
    assert domain.outcomes[RequestReleaseOutcome.RATE_LIMITED] == 1
    assert (domain.limit, domain.limit_decreases, domain.cooldowns) == (6, 1, 1)
    pressure = controller.pressure.snapshot().domain(CHAT)
    assert pressure is not None and pressure.blocked_until == 0.5  # the first learned cooldown
