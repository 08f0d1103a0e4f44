"""Stateful property test of request admission: leases, waiters, cancellation, shutdown.

Invariants after every step: in-flight equals live leases and never exceeds the cap; no waiter
waits while its provider/model has free capacity; every lease is released exactly once.
"""

from __future__ import annotations

import asyncio

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sluiceway.requests import (
    DenialReason,
    ProviderModelKey,
    ReleaseResult,
    RequestAdmissionController,
    RequestAdmissionItem,
    RequestAdmissionLease,
    RequestDomain,
    RequestReleaseOutcome,
    RequestResourceKey,
)

BIG = ProviderModelKey(provider="p", model_id="big")
SMALL = ProviderModelKey(provider="p", model_id="small")
CAPS = {BIG: 3, SMALL: 1}
RESOURCES = [
    RequestResourceKey(provider_model=key, domain=domain)
    for key in CAPS
    for domain in (RequestDomain.CHAT, RequestDomain.EMBEDDING)
]
resources = st.sampled_from(RESOURCES)
groups = st.sampled_from(["a", "b", "c"])
weights = st.integers(min_value=1, max_value=3)
outcomes = st.sampled_from(list(RequestReleaseOutcome))


class RequestAdmissionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.controller = RequestAdmissionController(CAPS)
        self.live: list[RequestAdmissionLease] = []
        self.released: list[RequestAdmissionLease] = []
        self.pending: list[asyncio.Task[RequestAdmissionLease]] = []
        self.attempts = 0
        self.shut_down = False

    def _item(self, resource: RequestResourceKey, group: str, weight: int) -> RequestAdmissionItem:
        self.attempts += 1
        return RequestAdmissionItem(
            resource=resource, group=group, weight=weight, attempt_id=self.attempts
        )

    def _settle(self) -> None:
        """Run the loop until every task reached its next await, then collect finished waiters."""
        for _ in range(3):
            self.loop.run_until_complete(asyncio.sleep(0))
        still_waiting = []
        for task in self.pending:
            if not task.done():
                still_waiting.append(task)
            elif not task.cancelled():
                error = task.exception()
                if error is None:
                    self.live.append(task.result())
                else:
                    assert self.shut_down, f"a waiter failed without shutdown: {error!r}"
        self.pending = still_waiting

    @rule(resource=resources, group=groups, weight=weights)
    def try_acquire(self, resource: RequestResourceKey, group: str, weight: int) -> None:
        result = self.controller.try_acquire(self._item(resource, group, weight))
        pool = self.controller.statistics().provider_models[resource.provider_model]
        if isinstance(result, RequestAdmissionLease):
            assert pool.waiters == 0
            self.live.append(result)
        elif self.shut_down:
            assert result.reason is DenialReason.SHUTDOWN
        elif pool.waiters:
            assert result.reason is DenialReason.QUEUED_WAITERS_AHEAD
            assert result.queued_waiters_ahead == pool.waiters
        else:
            assert result.reason is DenialReason.NO_CAPACITY
            assert pool.in_flight == pool.static_cap

    @rule(resource=resources, group=groups, weight=weights)
    def acquire(self, resource: RequestResourceKey, group: str, weight: int) -> None:
        item = self._item(resource, group, weight)
        self.pending.append(self.loop.create_task(self.controller.acquire(item)))
        self._settle()

    @precondition(lambda self: self.live)
    @rule(index=st.integers(min_value=0), outcome=outcomes)
    def release(self, index: int, outcome: RequestReleaseOutcome) -> None:
        lease = self.live.pop(index % len(self.live))
        assert self.controller.release(lease, outcome) is ReleaseResult.OK
        self.released.append(lease)
        self._settle()

    @precondition(lambda self: self.live and self.pending)
    @rule(index=st.integers(min_value=0), victim=st.integers(min_value=0))
    def release_then_cancel_a_waiter_before_it_runs(self, index: int, victim: int) -> None:
        lease = self.live.pop(index % len(self.live))
        assert self.controller.release(lease, RequestReleaseOutcome.SUCCESS) is ReleaseResult.OK
        self.released.append(lease)
        # The waiter may just have been granted this capacity; it must give it back.
        self.pending[victim % len(self.pending)].cancel()
        self._settle()

    @precondition(lambda self: self.pending)
    @rule(victim=st.integers(min_value=0))
    def cancel_a_waiter(self, victim: int) -> None:
        self.pending[victim % len(self.pending)].cancel()
        self._settle()

    @precondition(lambda self: self.released)
    @rule(index=st.integers(min_value=0))
    def release_again(self, index: int) -> None:
        lease = self.released[index % len(self.released)]
        result = self.controller.release(lease, RequestReleaseOutcome.SUCCESS)
        assert result is ReleaseResult.DUPLICATE

    @precondition(lambda self: not self.shut_down)
    @rule()
    def shutdown(self) -> None:
        self.shut_down = True
        self.controller.shutdown()
        self._settle()
        assert not self.pending

    @invariant()
    def in_flight_equals_live_leases_within_the_cap(self) -> None:
        stats = self.controller.statistics()
        assert stats.live_leases == stats.in_flight == len(self.live)
        for key, pool in stats.provider_models.items():
            held = sum(1 for lease in self.live if lease.resource.provider_model == key)
            assert pool.in_flight == held <= pool.static_cap
            assert sum(d.in_flight for d in pool.domains.values()) == held

    @invariant()
    def no_waiter_waits_while_capacity_is_free(self) -> None:
        stats = self.controller.statistics()
        assert stats.waiters == len(self.pending)
        for pool in stats.provider_models.values():
            if pool.waiters:
                assert pool.in_flight == pool.static_cap

    @invariant()
    def every_grant_is_live_or_released_once(self) -> None:
        stats = self.controller.statistics()
        assert stats.granted_total == stats.released_total + stats.live_leases
        returned = stats.grants_returned_on_cancel
        assert stats.released_total == len(self.released) + returned
        assert len({id(lease) for lease in self.released}) == len(self.released)

    def teardown(self) -> None:
        try:
            for task in self.pending:
                task.cancel()
            self._settle()
            assert not self.pending
            for lease in self.live:
                assert self.controller.release(lease, RequestReleaseOutcome.SUCCESS).released
            stats = self.controller.statistics()
            assert stats.in_flight == stats.live_leases == stats.waiters == 0
            assert stats.granted_total == stats.released_total
        finally:
            self.loop.close()


RequestAdmissionMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestRequestAdmissionMachine = RequestAdmissionMachine.TestCase
