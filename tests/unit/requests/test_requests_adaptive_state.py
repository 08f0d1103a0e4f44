"""Stateful property test of adaptive request admission under a fake clock.

Invariants after every step: in-flight equals live leases; a lease never pushes its domain above
the limit in force at grant time; no waiter waits while its domain has free capacity outside
cooldown (the cooldown timer wakes it); every lease is released exactly once; cancellation at
each await point leaks nothing.
"""

from __future__ import annotations

import asyncio

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sluiceway.requests import (
    ProviderModelKey,
    ReleaseResult,
    RequestAdmissionItem,
    RequestAdmissionLease,
    RequestDomain,
    RequestReleaseOutcome,
    RequestResourceKey,
)
from sluiceway.requests.admission import (
    AdaptiveRequestAdmissionController,
    RequestAdmissionSettings,
)
from sluiceway.requests.limits import AdaptiveLimitSettings
from sluiceway.testing import FakeClock

BIG = ProviderModelKey(provider="p", model_id="big")
SMALL = ProviderModelKey(provider="q", model_id="small")
CAPS = {BIG: 6, SMALL: 2}
RESOURCES = [RequestResourceKey(provider_model=key, domain=RequestDomain.CHAT) for key in CAPS]
resources = st.sampled_from(RESOURCES)
groups = st.sampled_from(["a", "b"])
outcomes = st.sampled_from(list(RequestReleaseOutcome))
retry_afters = st.none() | st.floats(min_value=0.0, max_value=5.0)


class AdaptiveAdmissionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock(start=100.0)
        self.controller = AdaptiveRequestAdmissionController(
            CAPS,
            limit_settings=AdaptiveLimitSettings(
                successes_until_increase=2, startup_ramp_seconds=3.0, max_cooldown_seconds=4.0
            ),
            clock=self.clock,
            timers=self.clock,
            settings=RequestAdmissionSettings(breaker_open_after_seconds=None),
        )
        self.live: list[RequestAdmissionLease] = []
        self.released = 0
        self.pending: list[asyncio.Task[RequestAdmissionLease]] = []
        self.attempts = 0

    def _held(self, resource: RequestResourceKey) -> int:
        return sum(1 for lease in self.live if lease.resource == resource)

    def _take(self, lease: RequestAdmissionLease) -> None:
        self.live.append(lease)
        # Never above the limit in force at grant time.
        assert self._held(lease.resource) <= lease.limit_at_grant

    def _settle(self) -> None:
        for _ in range(3):
            self.loop.run_until_complete(asyncio.sleep(0))
        still = []
        granted = []
        for task in self.pending:
            if not task.done():
                still.append(task)
            elif not task.cancelled():
                error = task.exception()
                assert error is None, f"a waiter failed: {error!r}"
                granted.append(task.result())
        self.pending = still
        for lease in sorted(granted, key=lambda lease: lease.lease_id):  # in grant order
            self._take(lease)

    def _item(self, resource: RequestResourceKey, group: str) -> RequestAdmissionItem:
        self.attempts += 1
        return RequestAdmissionItem(resource=resource, group=group, attempt_id=self.attempts)

    @rule(resource=resources, group=groups)
    def try_acquire(self, resource: RequestResourceKey, group: str) -> None:
        result = self.controller.try_acquire(self._item(resource, group))
        if isinstance(result, RequestAdmissionLease):
            self._take(result)

    @rule(resource=resources, group=groups)
    def acquire(self, resource: RequestResourceKey, group: str) -> None:
        item = self._item(resource, group)
        self.pending.append(self.loop.create_task(self.controller.acquire(item)))
        self._settle()

    @precondition(lambda self: self.live)
    @rule(
        index=st.integers(min_value=0),
        outcome=outcomes,
        retry_after=retry_afters,
        elapsed=st.floats(min_value=0.0, max_value=1.0),
    )
    def release(
        self,
        index: int,
        outcome: RequestReleaseOutcome,
        retry_after: float | None,
        elapsed: float,
    ) -> None:
        self.clock.advance(elapsed)
        self._settle()
        lease = self.live.pop(index % len(self.live))
        result = self.controller.release(lease, outcome, retry_after_seconds=retry_after)
        assert result is ReleaseResult.OK
        self.released += 1
        self._settle()

    @rule(seconds=st.floats(min_value=0.0, max_value=6.0))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self._settle()

    @precondition(lambda self: self.pending)
    @rule(victim=st.integers(min_value=0))
    def cancel_a_waiter(self, victim: int) -> None:
        self.pending[victim % len(self.pending)].cancel()
        self._settle()

    @precondition(lambda self: self.live and self.pending)
    @rule(index=st.integers(min_value=0), victim=st.integers(min_value=0))
    def release_then_cancel_before_the_waiter_runs(self, index: int, victim: int) -> None:
        lease = self.live.pop(index % len(self.live))
        assert self.controller.release(lease, RequestReleaseOutcome.SUCCESS).released
        self.released += 1
        self.pending[victim % len(self.pending)].cancel()
        self._settle()

    @invariant()
    def in_flight_equals_live_leases(self) -> None:
        stats = self.controller.statistics()
        assert stats.live_leases == stats.in_flight == len(self.live)
        assert stats.waiters == len(self.pending)
        for key, pool in stats.provider_models.items():
            assert pool.in_flight <= pool.static_cap
            assert pool.in_flight == sum(
                1 for lease in self.live if lease.resource.provider_model == key
            )

    @invariant()
    def no_waiter_waits_while_capacity_is_free_outside_cooldown(self) -> None:
        snapshot = self.controller.pressure.snapshot()
        for pool in snapshot.provider_models.values():
            if not pool.waiters:
                continue
            domain = pool.domains[RequestDomain.CHAT]
            assert (
                pool.in_flight == pool.static_cap
                or domain.in_flight >= domain.limit
                or domain.blocked_until is not None
            ), domain
            if domain.blocked_until is not None:
                assert self.clock.pending_timers, "a cooling domain with waiters needs a timer"

    @invariant()
    def every_grant_is_live_or_released_once(self) -> None:
        stats = self.controller.statistics()
        assert stats.granted_total == stats.released_total + stats.live_leases
        assert stats.released_total == self.released + stats.grants_returned_on_cancel

    def teardown(self) -> None:
        try:
            for task in self.pending:
                task.cancel()
            self._settle()
            for lease in self.live:
                assert self.controller.release(lease, RequestReleaseOutcome.SUCCESS).released
            stats = self.controller.statistics()
            assert stats.in_flight == stats.live_leases == stats.waiters == 0
            assert stats.granted_total == stats.released_total
        finally:
            self.loop.close()


AdaptiveAdmissionMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestAdaptiveAdmissionMachine = AdaptiveAdmissionMachine.TestCase
