"""Request admission contracts: caps, fair order, handoff, cancellation, timeout, shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from sluiceway.context import TaskCorrelation, current_task
from sluiceway.errors import EngineError, RequestAdmissionError
from sluiceway.requests import (
    DenialReason,
    ProviderModelKey,
    ReleaseResult,
    RequestAdmissionController,
    RequestAdmissionDenied,
    RequestAdmissionItem,
    RequestAdmissionLease,
    RequestDomain,
    RequestReleaseOutcome,
    RequestResourceKey,
)

KEY = ProviderModelKey(provider="p", model_id="m")
CHAT = RequestResourceKey(provider_model=KEY, domain=RequestDomain.CHAT)
EMBED = RequestResourceKey(provider_model=KEY, domain=RequestDomain.EMBEDDING)
OK = RequestReleaseOutcome.SUCCESS


def _item(
    group: str = "g",
    *,
    weight: int = 1,
    resource: RequestResourceKey = CHAT,
    timeout_seconds: float | None = None,
) -> RequestAdmissionItem:
    return RequestAdmissionItem(
        resource=resource, group=group, weight=weight, queue_wait_timeout_seconds=timeout_seconds
    )


def _lease(result: RequestAdmissionLease | RequestAdmissionDenied) -> RequestAdmissionLease:
    assert isinstance(result, RequestAdmissionLease), result
    return result


async def _until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition`` holds (tasks reach their next await point)."""
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never became true")


def _waiters(controller: RequestAdmissionController) -> int:
    return controller.statistics().waiters


async def test_static_cap_is_never_exceeded_under_many_concurrent_acquires() -> None:
    controller = RequestAdmissionController({KEY: 3})
    in_flight = 0
    observed_max = 0

    async def call(n: int) -> None:
        nonlocal in_flight, observed_max
        resource = CHAT if n % 2 else EMBED
        lease = await controller.acquire(_item(f"g{n % 4}", resource=resource))
        in_flight += 1
        observed_max = max(observed_max, in_flight)
        for _ in range(n % 3 + 1):
            await asyncio.sleep(0)
        in_flight -= 1
        assert controller.release(lease, OK) is ReleaseResult.OK

    async with asyncio.TaskGroup() as group:
        for n in range(60):
            group.create_task(call(n))

    stats = controller.statistics()
    pool = stats.provider_models[KEY]
    assert observed_max == 3
    assert pool.max_in_flight == 3
    assert pool.granted_total == pool.released_total == 60
    assert pool.in_flight == stats.live_leases == stats.waiters == 0
    assert pool.max_waiters > 0
    assert pool.domains[RequestDomain.CHAT].granted_total == 30
    assert pool.domains[RequestDomain.EMBEDDING].outcomes[OK] == 30


def test_the_aggregate_cap_spans_domains() -> None:
    controller = RequestAdmissionController({KEY: 2})
    chat = _lease(controller.try_acquire(_item()))
    _lease(controller.try_acquire(_item(resource=EMBED)))
    assert controller.try_acquire(_item()) == RequestAdmissionDenied(
        reason=DenialReason.NO_CAPACITY
    )
    assert not controller.has_capacity(EMBED)
    controller.release(chat, OK)
    assert controller.has_capacity(EMBED)
    stats = controller.statistics().provider_models[KEY]
    assert stats.in_flight == 1
    assert stats.domains[RequestDomain.EMBEDDING].in_flight == 1
    assert stats.domains[RequestDomain.CHAT].released_total == 1


async def test_try_acquire_never_jumps_queued_waiters() -> None:
    controller = RequestAdmissionController({KEY: 1})
    held = _lease(controller.try_acquire(_item()))
    waiter = asyncio.create_task(controller.acquire(_item("w")))
    await _until(lambda: _waiters(controller) == 1)

    assert controller.try_acquire(_item("newcomer")) == RequestAdmissionDenied(
        reason=DenialReason.QUEUED_WAITERS_AHEAD, queued_waiters_ahead=1
    )
    controller.release(held, OK)
    # The grant went to the waiter synchronously, before it ran: nothing is left to take.
    assert not waiter.done()
    assert controller.statistics().in_flight == 1
    assert controller.try_acquire(_item("newcomer")) == RequestAdmissionDenied(
        reason=DenialReason.NO_CAPACITY
    )
    lease = await waiter
    assert lease.group == "w"
    assert controller.release(lease, OK) is ReleaseResult.OK


async def _grant_order(
    controller: RequestAdmissionController, items: list[tuple[str, RequestAdmissionItem]]
) -> list[str]:
    """Queue ``items`` in order behind a held lease, then let each grant chain to the next."""
    held = _lease(controller.try_acquire(_item("holder")))
    order: list[str] = []

    async def wait(name: str, item: RequestAdmissionItem) -> None:
        lease = await controller.acquire(item)
        order.append(name)
        controller.release(lease, OK)

    tasks = []
    for name, item in items:
        tasks.append(asyncio.create_task(wait(name, item)))
        expected = len(tasks)
        await _until(lambda expected=expected: _waiters(controller) == expected)  # type: ignore[misc]
    controller.release(held, OK)
    await asyncio.gather(*tasks)
    return order


async def test_waiters_are_served_fifo_within_a_group_and_oldest_group_first_on_equal_weight() -> (
    None
):
    controller = RequestAdmissionController({KEY: 1})
    names = ["x1", "y1", "x2", "x3", "y2"]
    order = await _grant_order(controller, [(n, _item(n[0])) for n in names])
    assert order == ["x1", "y1", "x2", "y2", "x3"]


async def test_waiters_are_served_in_weighted_fair_order_across_groups() -> None:
    controller = RequestAdmissionController({KEY: 1})
    items = [(f"a{i}", _item("a", weight=3)) for i in range(1, 7)]
    items += [(f"b{i}", _item("b", weight=1)) for i in range(1, 4)]
    order = await _grant_order(controller, items)
    # Start-time fair queueing: "a" (weight 3) gets three grants for each of "b"'s.
    assert order == ["a1", "b1", "a2", "a3", "b2", "a4", "a5", "a6", "b3"]
    stats = controller.statistics()
    assert stats.granted_total == stats.released_total == 10


async def test_a_waiter_cancelled_while_waiting_leaves_the_queue_and_leaks_nothing() -> None:
    controller = RequestAdmissionController({KEY: 1})
    held = _lease(controller.try_acquire(_item()))
    first = asyncio.create_task(controller.acquire(_item("first")))
    second = asyncio.create_task(controller.acquire(_item("second")))
    await _until(lambda: _waiters(controller) == 2)

    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    stats = controller.statistics()
    assert stats.waiters == 1
    assert stats.waiters_cancelled == 1
    assert stats.provider_models[KEY].domains[RequestDomain.CHAT].waiters == 1

    controller.release(held, OK)
    lease = await second
    assert lease.group == "second"
    controller.release(lease, OK)
    stats = controller.statistics()
    assert stats.in_flight == stats.live_leases == stats.waiters == 0
    assert stats.granted_total == stats.released_total == 2


async def test_a_waiter_cancelled_after_its_grant_gives_the_lease_to_the_next_waiter() -> None:
    controller = RequestAdmissionController({KEY: 1})
    held = _lease(controller.try_acquire(_item()))
    first = asyncio.create_task(controller.acquire(_item("first")))
    second = asyncio.create_task(controller.acquire(_item("second")))
    await _until(lambda: _waiters(controller) == 2)

    controller.release(held, OK)  # hands the lease to ``first`` before it runs
    first.cancel()  # ... which is cancelled before it can use it
    with pytest.raises(asyncio.CancelledError):
        await first
    lease = await second
    assert lease.group == "second"

    stats = controller.statistics()
    chat = stats.provider_models[KEY].domains[RequestDomain.CHAT]
    assert stats.grants_returned_on_cancel == 1
    assert chat.outcomes[RequestReleaseOutcome.LOCAL_CANCELLED] == 1
    assert stats.in_flight == stats.live_leases == 1
    assert stats.granted_total == 3
    assert controller.release(lease, OK) is ReleaseResult.OK
    assert controller.statistics().live_leases == 0


async def test_a_queue_wait_timeout_raises_and_removes_the_waiter() -> None:
    controller = RequestAdmissionController({KEY: 1})
    held = _lease(controller.try_acquire(_item()))
    with pytest.raises(RequestAdmissionError, match=r"waited 0.001s") as caught:
        await controller.acquire(_item(timeout_seconds=0.001))
    assert caught.value.reason == DenialReason.TIMEOUT.value
    with pytest.raises(RequestAdmissionError, match="raise queue_wait_timeout_seconds"):
        await controller.acquire(_item(timeout_seconds=0))
    stats = controller.statistics()
    assert stats.waiters == 0
    assert stats.waiters_timed_out == 2
    assert stats.live_leases == 1
    assert controller.release(held, OK) is ReleaseResult.OK


async def test_a_timeout_does_not_fire_after_the_grant() -> None:
    controller = RequestAdmissionController({KEY: 1})
    held = _lease(controller.try_acquire(_item()))
    waiter = asyncio.create_task(controller.acquire(_item(timeout_seconds=60)))
    await _until(lambda: _waiters(controller) == 1)
    controller.release(held, OK)
    lease = await waiter
    assert controller.statistics().waiters_timed_out == 0
    controller.release(lease, OK)


async def test_shutdown_fails_every_waiter_and_denies_new_requests() -> None:
    controller = RequestAdmissionController({KEY: 1})
    held = _lease(controller.try_acquire(_item()))
    waiters = [asyncio.create_task(controller.acquire(_item(f"w{n}"))) for n in range(3)]
    await _until(lambda: _waiters(controller) == 3)

    controller.shutdown()
    for waiter in waiters:
        with pytest.raises(RequestAdmissionError, match="shut down") as caught:
            await waiter
        assert caught.value.reason == DenialReason.SHUTDOWN.value
    assert controller.try_acquire(_item()) == RequestAdmissionDenied(reason=DenialReason.SHUTDOWN)
    with pytest.raises(RequestAdmissionError, match="shut down"):
        await controller.acquire(_item())
    # Live leases are still returned normally.
    assert controller.release(held, RequestReleaseOutcome.LOCAL_CANCELLED) is ReleaseResult.OK
    stats = controller.statistics()
    assert stats.shutting_down
    assert stats.waiters_shut_down == 3
    assert stats.waiters == stats.in_flight == stats.live_leases == 0


def test_release_misuse_returns_diagnostics_and_changes_nothing() -> None:
    controller = RequestAdmissionController({KEY: 2})
    other = RequestAdmissionController({KEY: 2})
    lease = _lease(controller.try_acquire(_item()))
    kept = _lease(controller.try_acquire(_item()))
    foreign = _lease(other.try_acquire(_item()))

    assert controller.release(lease, OK) is ReleaseResult.OK
    assert controller.release(lease, OK) is ReleaseResult.DUPLICATE
    assert controller.release(foreign, OK) is ReleaseResult.FOREIGN
    assert controller.release(dataclasses.replace(kept), OK) is ReleaseResult.UNKNOWN
    assert controller.release(dataclasses.replace(kept, lease_id=99), OK) is ReleaseResult.UNKNOWN
    assert not ReleaseResult.DUPLICATE.released

    stats = controller.statistics()
    assert stats.release_diagnostics == 4
    assert stats.in_flight == stats.live_leases == 1
    assert stats.released_total == 1
    assert other.statistics().in_flight == 1
    assert controller.release(kept, OK) is ReleaseResult.OK


async def test_an_unknown_provider_model_is_denied_with_a_clear_error() -> None:
    controller = RequestAdmissionController({KEY: 1})
    stranger = RequestResourceKey(
        provider_model=ProviderModelKey(provider="p", model_id="nope"), domain=RequestDomain.CHAT
    )
    assert controller.try_acquire(_item(resource=stranger)) == RequestAdmissionDenied(
        reason=DenialReason.UNKNOWN_RESOURCE
    )
    with pytest.raises(RequestAdmissionError, match=r"p/nope\[chat\].*known provider/models: p/m"):
        await controller.acquire(_item(resource=stranger))


def test_leases_record_the_grant_time_and_the_limit_in_force() -> None:
    now = [10.0]
    controller = RequestAdmissionController({KEY: 2}, clock=lambda: now[0])
    item = RequestAdmissionItem(resource=CHAT, group="g", attempt_id=7)
    lease = _lease(controller.try_acquire(item))
    assert (lease.granted_at, lease.limit_at_grant, lease.attempt_id) == (10.0, 2, 7)
    assert lease.resource is CHAT
    other = _lease(controller.try_acquire(item))
    assert other.lease_id != lease.lease_id
    assert other != lease


def test_items_capture_the_running_task_or_default_to_one_shared_group() -> None:
    plain = RequestAdmissionItem.capture(CHAT, attempt_id=1)
    assert (plain.group, plain.weight, plain.correlation) == ("default", 1, None)

    correlation = TaskCorrelation(
        run_id="r",
        task_id="t",
        column="answer",
        row_group=0,
        row_index=3,
        task_kind="cell",
        group_key="model:answer",
        group_weight=4,
        execution_id=9,
    )
    token = current_task.set(correlation)
    try:
        captured = RequestAdmissionItem.capture(CHAT, attempt_id=2)
        explicit = RequestAdmissionItem.capture(CHAT, attempt_id=3, group="mine", weight=2)
    finally:
        current_task.reset(token)
    assert (captured.group, captured.weight) == ("model:answer", 4)
    assert captured.correlation is correlation
    assert (explicit.group, explicit.weight, explicit.correlation) == ("mine", 2, correlation)


def test_invalid_items_and_caps_are_refused() -> None:
    with pytest.raises(EngineError, match="weights must be >= 1"):
        _item(weight=0)
    with pytest.raises(EngineError, match="queue_wait_timeout_seconds=-1"):
        _item(timeout_seconds=-1)
    with pytest.raises(EngineError, match="static cap of p/m must be >= 1"):
        RequestAdmissionController({KEY: 0})


class _ScriptedLimit:
    """A domain limit the test moves by hand; records what the controller reports."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.next_limit = limit
        self.reports: list[tuple[RequestReleaseOutcome, int, float | None]] = []
        self.blocked_until: float | None = None
        self.ceiling: int | None = None

    def advance(self, now: float) -> float | None:
        return None

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
        self.reports.append((outcome, limit_at_grant, retry_after_seconds))
        self.limit = self.next_limit


async def test_domain_limits_come_from_the_limit_object_and_only_bind_their_domain() -> None:
    limits: dict[RequestResourceKey, _ScriptedLimit] = {}

    def factory(resource: RequestResourceKey, static_cap: int) -> _ScriptedLimit:
        limits[resource] = _ScriptedLimit(
            1 if resource.domain is RequestDomain.CHAT else static_cap
        )
        return limits[resource]

    controller = RequestAdmissionController({KEY: 3}, limits=factory)
    chat = _lease(controller.try_acquire(_item()))
    assert controller.try_acquire(_item()) == RequestAdmissionDenied(
        reason=DenialReason.NO_CAPACITY
    )
    chat_waiter = asyncio.create_task(controller.acquire(_item("c")))
    await _until(lambda: _waiters(controller) == 1)
    # Capacity is free for embeddings, but a newcomer never overtakes the queue non-blockingly ...
    assert controller.try_acquire(_item(resource=EMBED)) == RequestAdmissionDenied(
        reason=DenialReason.QUEUED_WAITERS_AHEAD, queued_waiters_ahead=1
    )
    # ... while a blocking acquire is granted in fair order, since the chat waiter cannot go.
    async with asyncio.timeout(5):  # a bug here would otherwise hang, not fail
        embed = await controller.acquire(_item("e", resource=EMBED))

    limits[CHAT].next_limit = 2
    controller.release(chat, RequestReleaseOutcome.RATE_LIMITED, retry_after_seconds=1.5)
    assert limits[CHAT].reports == [(RequestReleaseOutcome.RATE_LIMITED, 1, 1.5)]
    second_chat = await chat_waiter
    assert second_chat.limit_at_grant == 2
    for lease in (embed, second_chat):
        controller.release(lease, OK)
    assert controller.statistics().provider_models[KEY].domains[RequestDomain.CHAT].limit == 2


def test_a_limit_below_one_is_a_broken_invariant_not_clamped() -> None:
    limit = _ScriptedLimit(2)
    controller = RequestAdmissionController({KEY: 2}, limits=lambda resource, cap: limit)
    lease = _lease(controller.try_acquire(_item()))
    limit.next_limit = 0
    with pytest.raises(EngineError, match=r"limit of p/m\[chat\] must be >= 1, got 0"):
        controller.release(lease, RequestReleaseOutcome.RATE_LIMITED)
