"""Adaptive request admission: cooldown timers, AIMD through the controller, pressure
snapshots, the circuit breaker, weighted fairness and the worker-thread acquire."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from sluiceway.errors import EngineError, RequestAdmissionError
from sluiceway.requests import (
    ProviderModelKey,
    RequestAdmissionItem,
    RequestAdmissionLease,
    RequestDomain,
    RequestReleaseOutcome,
    RequestResourceKey,
)
from sluiceway.requests.admission import (
    AdaptiveRequestAdmissionController,
    BreakerState,
    DenialReason,
    RequestAdmissionController,
    RequestAdmissionDenied,
    RequestAdmissionSettings,
)
from sluiceway.requests.limits import AdaptiveLimitSettings
from sluiceway.testing import FakeClock

KEY = ProviderModelKey(provider="p", model_id="m")
CHAT = RequestResourceKey(provider_model=KEY, domain=RequestDomain.CHAT)
OK = RequestReleaseOutcome.SUCCESS
LIMITED = RequestReleaseOutcome.RATE_LIMITED


def _controller(
    cap: int = 4, clock: FakeClock | None = None, **limit_settings: object
) -> tuple[AdaptiveRequestAdmissionController, FakeClock]:
    clock = clock or FakeClock(start=10.0)
    controller = AdaptiveRequestAdmissionController(
        {KEY: cap},
        limit_settings=AdaptiveLimitSettings(**limit_settings),  # type: ignore[arg-type]
        clock=clock,
        timers=clock,
        aliases={KEY: ("fast", "also-fast")},
    )
    return controller, clock


def _item(group: str = "g", weight: int = 1) -> RequestAdmissionItem:
    return RequestAdmissionItem(resource=CHAT, group=group, weight=weight)


def _lease(result: object) -> RequestAdmissionLease:
    assert isinstance(result, RequestAdmissionLease), result
    return result


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_rate_limit_cools_the_domain_down_and_the_timer_wakes_the_waiter() -> None:
    controller, clock = _controller(cap=4)
    leases = [_lease(controller.try_acquire(_item())) for _ in range(4)]
    controller.release(leases[0], LIMITED, retry_after_seconds=3.0)
    assert controller.try_acquire(_item()) == RequestAdmissionDenied(reason=DenialReason.COOLDOWN)
    waiter = asyncio.create_task(controller.acquire(_item()))
    await _settle()
    assert not waiter.done()
    domain = controller.pressure.snapshot().domain(CHAT)
    assert domain is not None
    assert (domain.limit, domain.blocked_until, domain.rate_limit_ceiling) == (3, 13.0, 4)
    assert domain.consecutive_rate_limits == 1 and domain.waiters == 1
    clock.advance(2.9)
    await _settle()
    assert not waiter.done()
    clock.advance(0.1)  # the cooldown timer fires; 3 in flight is at the new limit of 3
    await _settle()
    assert not waiter.done()
    controller.release(leases[1], OK)
    await _settle()
    assert waiter.done()
    for lease in (*leases[2:], waiter.result()):
        controller.release(lease, OK)
    assert controller.statistics().in_flight == 0


async def test_one_burst_of_rate_limits_is_one_cooldown_and_halves_the_limit_at_most() -> None:
    controller, _ = _controller(cap=8)
    leases = [_lease(controller.try_acquire(_item())) for _ in range(8)]
    # The first refusal multiplies the limit down (8 -> 6); the others, all 8 refused, take it
    # down toward what was served (none) but not below half of 8.
    controller.release(leases[0], LIMITED, retry_after_seconds=1.0)
    stats = controller.statistics().provider_models[KEY].domains[RequestDomain.CHAT]
    assert (stats.limit, stats.limit_decreases) == (6, 1)
    for lease in leases[1:]:
        controller.release(lease, LIMITED, retry_after_seconds=1.0)
    stats = controller.statistics().provider_models[KEY].domains[RequestDomain.CHAT]
    assert (stats.limit, stats.limit_decreases, stats.cooldowns) == (4, 3, 1)


def test_snapshots_are_immutable_and_sequenced() -> None:
    controller, _ = _controller()
    controller.try_acquire(_item())
    first = controller.pressure.snapshot()
    second = controller.pressure.snapshot()
    assert second.sequence == first.sequence + 1
    pool = first.provider_models[KEY]
    assert pool.aliases == ("fast", "also-fast")
    assert (pool.in_flight, pool.headroom, pool.breaker) == (1, 3, BreakerState.CLOSED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        pool.in_flight = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        pool.domains[RequestDomain.EMBEDDING] = pool.domains[RequestDomain.CHAT]  # type: ignore[index]


async def test_the_startup_ramp_grows_the_limit_by_timer() -> None:
    controller, clock = _controller(cap=4, startup_ramp_seconds=3.0)
    first = _lease(controller.try_acquire(_item()))
    waiter = asyncio.create_task(controller.acquire(_item()))
    await _settle()
    assert not waiter.done()
    clock.advance(1.0)
    await _settle()
    assert waiter.done()
    for lease in (first, waiter.result()):
        controller.release(lease, OK)


async def test_the_breaker_opens_after_continuous_failure_and_fails_waiters_fast() -> None:
    clock = FakeClock(start=0.0)
    controller = AdaptiveRequestAdmissionController(
        {KEY: 1},
        clock=clock,
        timers=clock,
        settings=RequestAdmissionSettings(
            breaker_open_after_seconds=10.0, breaker_probe_interval_seconds=5.0
        ),
    )
    controller.release(
        _lease(controller.try_acquire(_item())), RequestReleaseOutcome.PROVIDER_FAILURE
    )
    clock.advance(11.0)
    lease = _lease(controller.try_acquire(_item()))
    waiter = asyncio.create_task(controller.acquire(_item()))
    await _settle()
    controller.release(lease, RequestReleaseOutcome.PROVIDER_TIMEOUT)
    await _settle()
    with pytest.raises(RequestAdmissionError, match="provider 'p' model 'm' is unavailable"):
        await waiter
    snapshot = controller.pressure.snapshot()
    assert snapshot.provider_models[KEY].breaker is BreakerState.OPEN
    assert controller.try_acquire(_item()) == RequestAdmissionDenied(
        reason=DenialReason.BREAKER_OPEN
    )
    clock.advance(5.0)  # one probe may go; its success closes the breaker
    probe = _lease(controller.try_acquire(_item()))
    controller.release(probe, OK)
    assert controller.statistics().provider_models[KEY].breaker is BreakerState.CLOSED


def _breaker_controller(cap: int) -> tuple[AdaptiveRequestAdmissionController, FakeClock]:
    clock = FakeClock(start=0.0)
    controller = AdaptiveRequestAdmissionController(
        {KEY: cap},
        clock=clock,
        timers=clock,
        settings=RequestAdmissionSettings(
            breaker_open_after_seconds=10.0, breaker_probe_interval_seconds=5.0
        ),
    )
    return controller, clock


def _half_open_breaker() -> tuple[AdaptiveRequestAdmissionController, FakeClock]:
    """Failures for 11 s open the breaker; 5 s later it lets one probe through."""
    controller, clock = _breaker_controller(cap=4)
    for step in (11.0, 5.0):
        controller.release(
            _lease(controller.try_acquire(_item())), RequestReleaseOutcome.PROVIDER_FAILURE
        )
        clock.advance(step)
    return controller, clock


async def test_a_half_open_breaker_grants_one_probe_when_a_cooldown_ends() -> None:
    controller, clock = _breaker_controller(cap=8)
    controller.release(
        _lease(controller.try_acquire(_item())), RequestReleaseOutcome.PROVIDER_FAILURE
    )
    clock.advance(11.0)
    # Rate limited for 20 s: the breaker opens and the domain cools down until t = 31.
    controller.release(_lease(controller.try_acquire(_item())), LIMITED, retry_after_seconds=20.0)
    assert controller.statistics().provider_models[KEY].breaker is BreakerState.OPEN
    clock.advance(5.0)  # the probe interval passed: half-open, still cooling
    waiters = [asyncio.create_task(controller.acquire(_item())) for _ in range(5)]
    await _settle()
    assert not any(waiter.done() for waiter in waiters)
    clock.advance(15.0)  # the cooldown ends
    await _settle()
    granted = [waiter for waiter in waiters if waiter.done()]
    assert len(granted) == 1
    assert controller.statistics().in_flight == 1
    controller.release(granted[0].result(), OK)  # the probe succeeded: the rest may go
    await _settle()
    assert controller.statistics().provider_models[KEY].breaker is BreakerState.CLOSED
    assert all(waiter.done() for waiter in waiters)
    for waiter in waiters[1:]:
        controller.release(waiter.result(), OK)
    assert controller.statistics().live_leases == 0


@pytest.mark.parametrize(
    "outcome",
    [
        RequestReleaseOutcome.LOCAL_CANCELLED,
        RequestReleaseOutcome.LOCAL_TIMEOUT,
        RequestReleaseOutcome.UNEXPECTED_EXCEPTION,
    ],
)
async def test_a_probe_that_ends_without_an_answer_lets_the_next_request_probe(
    outcome: RequestReleaseOutcome,
) -> None:
    controller, clock = _half_open_breaker()
    probe = _lease(controller.try_acquire(_item()))
    waiter = asyncio.create_task(controller.acquire(_item()))
    await _settle()
    assert not waiter.done()  # one probe at a time
    controller.release(probe, outcome)
    await _settle()
    second_probe = waiter.result()
    assert controller.statistics().provider_models[KEY].breaker is BreakerState.HALF_OPEN
    controller.release(second_probe, OK)
    assert controller.statistics().provider_models[KEY].breaker is BreakerState.CLOSED
    clock.advance(3600.0)
    controller.release(_lease(controller.try_acquire(_item())), OK)


async def test_a_probe_cancelled_after_its_grant_lets_the_next_waiter_probe() -> None:
    controller, _ = _half_open_breaker()
    held = _lease(controller.try_acquire(_item()))
    probe = asyncio.create_task(controller.acquire(_item()))
    after = asyncio.create_task(controller.acquire(_item()))
    await _settle()
    controller.release(held, RequestReleaseOutcome.LOCAL_CANCELLED)  # grants ``probe``
    probe.cancel()  # granted, cancelled before it ran: handed back as local_cancelled
    await _settle()
    assert probe.cancelled()
    controller.release(after.result(), OK)
    assert controller.statistics().provider_models[KEY].breaker is BreakerState.CLOSED
    assert controller.statistics().live_leases == 0


async def test_waiters_of_groups_sharing_a_cap_are_served_in_weighted_fair_order() -> None:
    controller, _ = _controller(cap=1)
    held = _lease(controller.try_acquire(_item()))
    order: list[str] = []

    async def wait(group: str, weight: int) -> None:
        lease = await controller.acquire(_item(group, weight))
        order.append(group)
        controller.release(lease, OK)

    tasks = [asyncio.create_task(wait("heavy", 3)) for _ in range(6)]
    tasks += [asyncio.create_task(wait("light", 1)) for _ in range(2)]
    await _settle()
    controller.release(held, OK)
    await asyncio.gather(*tasks)
    assert order[:4].count("heavy") == 3
    assert sorted(order) == ["heavy"] * 6 + ["light"] * 2


async def test_acquire_sync_gets_a_lease_for_a_worker_thread() -> None:
    controller, _ = _controller(cap=1)
    loop = asyncio.get_running_loop()
    lease = await asyncio.to_thread(controller.acquire_sync, _item(), loop=loop)
    assert controller.statistics().live_leases == 1
    await asyncio.to_thread(controller.release_threadsafe, lease, OK)
    await _settle()
    assert controller.statistics().live_leases == 0


async def test_acquire_sync_on_the_loop_thread_is_refused() -> None:
    controller, _ = _controller()
    with pytest.raises(EngineError, match="loop's own thread"):
        controller.acquire_sync(_item(), loop=asyncio.get_running_loop())


def test_the_latency_gradient_can_be_turned_on_for_one_model_only() -> None:
    slow = ProviderModelKey(provider="self-hosted", model_id="m")
    controller = AdaptiveRequestAdmissionController(
        {KEY: 16, slow: 16},
        model_limit_settings={slow: AdaptiveLimitSettings(latency_gradient=True)},
    )
    chat_slow = RequestResourceKey(provider_model=slow, domain=RequestDomain.CHAT)
    controller.try_acquire(_item())
    controller.try_acquire(RequestAdmissionItem(resource=chat_slow))
    snapshot = controller.pressure.snapshot()
    plain, gradient = snapshot.domain(CHAT), snapshot.domain(chat_slow)
    assert plain is not None and gradient is not None
    # The gradient limit starts at a quarter of the initial limit; plain AIMD at the cap.
    assert (plain.limit, gradient.limit) == (16, 4)


def test_a_burst_remembers_the_concurrency_of_the_refusal_not_the_limit() -> None:
    controller, _ = _controller(cap=64, initial_limit=36)  # slow start from 36
    leases = [_lease(controller.try_acquire(_item())) for _ in range(36)]
    # The provider serves 32: its 4 refusals come back while all 36 are in flight.
    refused, served = leases[32:], leases[:32]
    controller.release(refused[0], LIMITED, retry_after_seconds=1.0)
    domain = controller.pressure.snapshot().domain(CHAT)
    # Refused while starting: back to what was served then (35), no multiplicative cut.
    assert domain is not None and (domain.limit, domain.rate_limit_ceiling) == (35, 36)
    for lease in refused[1:]:  # the rest of the burst: each shows one fewer was served
        controller.release(lease, LIMITED, retry_after_seconds=1.0)
    for lease in served:
        controller.release(lease, OK)
    domain = controller.pressure.snapshot().domain(CHAT)
    assert domain is not None and (domain.limit, domain.rate_limit_ceiling) == (32, 33)


class _LimitFailingAtCooldownEnd:
    """A limit whose cooldown-end step raises (a stand-in for any bug in a limit)."""

    limit = 1
    ceiling = None

    def __init__(self) -> None:
        self.blocked_until: float | None = None

    def on_outcome(
        self,
        outcome: RequestReleaseOutcome,
        *,
        now: float,
        limit_at_grant: int,
        in_flight: int,
        retry_after_seconds: float | None,
        latency_seconds: float | None = None,
        in_flight_at_grant: int | None = None,
    ) -> None:
        if outcome is LIMITED:
            self.blocked_until = now + 1.0

    def advance(self, now: float) -> float | None:
        if self.blocked_until is not None and now >= self.blocked_until:
            raise ZeroDivisionError("a broken limit")
        return self.blocked_until


async def test_a_timer_step_that_raises_fails_the_waiters_instead_of_stranding_them() -> None:
    clock = FakeClock(start=0.0)
    controller = RequestAdmissionController(
        {KEY: 2},
        clock=clock,
        timers=clock,
        limits=lambda resource, cap: _LimitFailingAtCooldownEnd(),
    )
    controller.release(_lease(controller.try_acquire(_item())), LIMITED)
    waiter = asyncio.create_task(controller.acquire(_item()))
    await _settle()
    clock.advance(1.0)
    await _settle()
    with pytest.raises(EngineError, match="failed in a timer step: ZeroDivisionError"):
        await waiter
