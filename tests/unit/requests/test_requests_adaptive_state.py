"""Stateful property test of adaptive request admission with budgets under a fake clock.

Invariants after every step: in-flight equals live leases; a lease never pushes its domain above
the limit in force at grant time; no waiter waits while its domain has free capacity outside
cooldown and its budgets have room (the cooldown and budget timers wake it); no budget is
charged past its limit and no rolling window holds more grants than the rpm budget (the count
is made in the step that grants); every lease is released exactly once; cancellation at each
await point (waiting, granted but not yet resumed, timing out) leaks nothing.
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
from sluiceway.requests.budgets import BudgetKind, BudgetLimits, RequestBudgets
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
tokens = st.integers(min_value=0, max_value=30)
timeouts = st.none() | st.floats(min_value=0.0, max_value=3.0)
WINDOW = 10.0
RPM = 5  # requests of BIG per window
TPM = 60  # tokens of BIG and SMALL together per window (an account budget)
BUDGETS = RequestBudgets(
    models={BIG: BudgetLimits(rpm=RPM)},
    accounts={"account": BudgetLimits(tpm=TPM)},
    account_of={BIG: "account", SMALL: "account"},
    window_seconds=WINDOW,
)


class AdaptiveAdmissionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock(start=100.0)
        self.controller = AdaptiveRequestAdmissionController(
            CAPS,
            limit_settings=AdaptiveLimitSettings(
                slow_start=True, startup_ramp_seconds=3.0, max_cooldown_seconds=4.0
            ),
            clock=self.clock,
            timers=self.clock,
            settings=RequestAdmissionSettings(breaker_open_after_seconds=None),
            budgets=BUDGETS,
        )
        self.live: list[RequestAdmissionLease] = []
        self.released = 0
        self.pending: list[tuple[asyncio.Task[RequestAdmissionLease], RequestAdmissionItem]] = []
        self.attempts = 0
        self.grant_times: list[float] = []  # of BIG's leases seen, in grant order
        self.timed_out = 0

    def _held(self, resource: RequestResourceKey) -> int:
        return sum(1 for lease in self.live if lease.resource == resource)

    def _take(self, lease: RequestAdmissionLease) -> None:
        self.live.append(lease)
        # Never above the limit in force at grant time.
        assert self._held(lease.resource) <= lease.limit_at_grant
        if lease.resource.provider_model == BIG:
            self.grant_times.append(lease.granted_at)

    def _settle(self) -> None:
        for _ in range(3):
            self.loop.run_until_complete(asyncio.sleep(0))
        still = []
        granted = []
        for task, item in self.pending:
            if not task.done():
                still.append((task, item))
            elif not task.cancelled():
                error = task.exception()
                if error is not None:
                    assert item.queue_wait_timeout_seconds is not None, repr(error)
                    assert "waited" in str(error), repr(error)
                    self.timed_out += 1
                    continue
                granted.append(task.result())
        self.pending = still
        for lease in sorted(granted, key=lambda lease: lease.lease_id):  # in grant order
            self._take(lease)

    def _item(
        self,
        resource: RequestResourceKey,
        group: str,
        estimate: int,
        timeout: float | None = None,
    ) -> RequestAdmissionItem:
        self.attempts += 1
        return RequestAdmissionItem(
            resource=resource,
            group=group,
            attempt_id=self.attempts,
            estimated_tokens=estimate,
            queue_wait_timeout_seconds=timeout,
        )

    @rule(resource=resources, group=groups, estimate=tokens)
    def try_acquire(self, resource: RequestResourceKey, group: str, estimate: int) -> None:
        result = self.controller.try_acquire(self._item(resource, group, estimate))
        if isinstance(result, RequestAdmissionLease):
            self._take(result)
        elif result.budget_ready_at is not None:
            assert result.budget_ready_at > self.clock.now

    @rule(resource=resources, group=groups, estimate=tokens, timeout=timeouts)
    def acquire(
        self, resource: RequestResourceKey, group: str, estimate: int, timeout: float | None
    ) -> None:
        item = self._item(resource, group, estimate, timeout)
        try:
            self.pending.append((self.loop.create_task(self.controller.acquire(item)), item))
        finally:
            self._settle()

    @precondition(lambda self: self.live)
    @rule(
        index=st.integers(min_value=0),
        outcome=outcomes,
        retry_after=retry_afters,
        elapsed=st.floats(min_value=0.0, max_value=1.0),
        usage_share=st.none() | st.floats(min_value=0.0, max_value=1.0),
    )
    def release(
        self,
        index: int,
        outcome: RequestReleaseOutcome,
        retry_after: float | None,
        elapsed: float,
        usage_share: float | None,
    ) -> None:
        self.clock.advance(elapsed)
        self._settle()
        lease = self.live.pop(index % len(self.live))
        # Reported usage at most the estimate, so a budget's used never passes its limit.
        usage = None if usage_share is None else int(lease.reserved_tokens * usage_share)
        result = self.controller.release(
            lease, outcome, retry_after_seconds=retry_after, usage_tokens=usage
        )
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
        self.pending[victim % len(self.pending)][0].cancel()
        self._settle()

    @precondition(lambda self: self.live and self.pending)
    @rule(index=st.integers(min_value=0), victim=st.integers(min_value=0))
    def release_then_cancel_before_the_waiter_runs(self, index: int, victim: int) -> None:
        lease = self.live.pop(index % len(self.live))
        assert self.controller.release(lease, RequestReleaseOutcome.SUCCESS).released
        self.released += 1
        self.pending[victim % len(self.pending)][0].cancel()
        self._settle()

    @invariant()
    def in_flight_equals_live_leases(self) -> None:
        stats = self.controller.statistics()
        assert stats.live_leases == stats.in_flight == len(self.live)
        assert stats.waiters == len(self.pending)
        assert stats.waiters_timed_out == self.timed_out
        for key, pool in stats.provider_models.items():
            assert pool.in_flight <= pool.static_cap
            assert pool.in_flight == sum(
                1 for lease in self.live if lease.resource.provider_model == key
            )

    def _fits(self, key: ProviderModelKey, item: RequestAdmissionItem) -> bool:
        budgets = self.controller.pressure.snapshot().provider_models[key].budgets
        for budget in budgets:
            amount = 1 if budget.kind is BudgetKind.REQUESTS else item.estimated_tokens
            if budget.used and budget.used + amount > budget.limit:
                return False
        return True

    @invariant()
    def no_waiter_waits_while_capacity_and_budget_are_free_outside_cooldown(self) -> None:
        snapshot = self.controller.pressure.snapshot()
        for key, pool in snapshot.provider_models.items():
            if not pool.waiters:
                continue
            domain = pool.domains[RequestDomain.CHAT]
            if domain.blocked_until is not None:
                assert self.clock.pending_timers, "a cooling domain with waiters needs a timer"
            if (
                pool.in_flight == pool.static_cap
                or domain.in_flight >= domain.limit
                or domain.blocked_until is not None
            ):
                continue
            # Free capacity: every group head must be held back by a budget, and a timer
            # must be set to wake it when the window has room.
            heads: dict[str, RequestAdmissionItem] = {}
            for _, item in self.pending:
                if item.resource.provider_model == key:
                    heads.setdefault(item.group, item)
            assert heads, "waiters counted that the test does not know"
            for item in heads.values():
                assert not self._fits(key, item), (key, item, pool.budgets)
            assert self.clock.pending_timers, "a waiter held by a budget needs a timer"

    @invariant()
    def budgets_are_charged_when_granted_and_never_past_their_limit(self) -> None:
        now = self.clock.now
        in_window = sum(1 for at in self.grant_times if now < at + WINDOW)
        assert in_window <= RPM
        for pool in self.controller.pressure.snapshot().provider_models.values():
            for budget in pool.budgets:
                # Estimates are at most TPM and usage at most the estimate: never past it.
                assert 0 <= budget.used <= budget.limit, budget

    @invariant()
    def every_grant_is_live_or_released_once(self) -> None:
        stats = self.controller.statistics()
        assert stats.granted_total == stats.released_total + stats.live_leases
        assert stats.released_total == self.released + stats.grants_returned_on_cancel

    def teardown(self) -> None:
        try:
            for task, _ in self.pending:
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
