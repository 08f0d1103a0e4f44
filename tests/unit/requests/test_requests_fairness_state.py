"""Stateful property test: waiters of groups sharing one aggregate cap are served in weighted
fair order.

Groups with fixed weights queue for one provider/model whose cap is always full; each release
grants exactly one waiter. Checked after every step: waiters of one group are granted in the
order they queued (FIFO); and over every stretch of grants during which two groups both had
waiters all along, the start-time fair queueing bound holds,
``|W_i / w_i - W_j / w_j| <= 1 / w_i + 1 / w_j`` (``W`` = grants in the stretch). Waiters are
cancelled at random, before and after their grant; nothing leaks.
"""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sluiceway.requests import (
    ProviderModelKey,
    RequestAdmissionController,
    RequestAdmissionItem,
    RequestAdmissionLease,
    RequestDomain,
    RequestReleaseOutcome,
    RequestResourceKey,
)

KEY = ProviderModelKey(provider="p", model_id="shared")
# Two domains of one provider/model: their waiters share the aggregate cap and one queue.
RESOURCES = [
    RequestResourceKey(provider_model=KEY, domain=domain)
    for domain in (RequestDomain.CHAT, RequestDomain.EMBEDDING)
]
WEIGHTS = {"a": 1, "b": 2, "c": 3, "d": 1}
CAP = 2
groups = st.sampled_from(sorted(WEIGHTS))


class FairWaitersMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.controller = RequestAdmissionController({KEY: CAP})
        self.live: list[RequestAdmissionLease] = []
        for resource in itertools.islice(itertools.cycle(RESOURCES), CAP):
            lease = self.controller.try_acquire(RequestAdmissionItem(resource=resource))
            assert isinstance(lease, RequestAdmissionLease)
            self.live.append(lease)
        self.serial = itertools.count(1)
        # Pending waiters per group in queueing order: (serial, task).
        self.waiting: dict[str, list[tuple[int, asyncio.Task[RequestAdmissionLease]]]] = {
            group: [] for group in WEIGHTS
        }
        self.grants: list[str] = []  # group of every grant, in grant order
        # For every grant: which groups had waiters just before it was made.
        self.backlogged_before: list[frozenset[str]] = []
        self.last_granted: dict[str, int] = dict.fromkeys(WEIGHTS, 0)

    def _settle(self) -> None:
        for _ in range(3):
            self.loop.run_until_complete(asyncio.sleep(0))

    def _backlogged(self) -> frozenset[str]:
        return frozenset(group for group, queued in self.waiting.items() if queued)

    def _collect(self, before: frozenset[str]) -> None:
        """Record the waiters granted since the last step, in grant order."""
        granted: list[tuple[RequestAdmissionLease, str, int]] = []
        for group, queued in self.waiting.items():
            for serial, task in list(queued):
                if task.done():
                    queued.remove((serial, task))
                    if not task.cancelled():
                        granted.append((task.result(), group, serial))
        for lease, group, serial in sorted(granted, key=lambda entry: entry[0].lease_id):
            assert serial > self.last_granted[group], "a later waiter of a group went first"
            self.last_granted[group] = serial
            self.grants.append(group)
            self.backlogged_before.append(before)
            self.live.append(lease)

    def _cap_is_full(self) -> bool:
        return len(self.live) == CAP

    @precondition(lambda self: not self._cap_is_full())
    @rule(domain=st.sampled_from(RESOURCES))
    def fill_the_cap(self, domain: RequestResourceKey) -> None:
        lease = self.controller.try_acquire(RequestAdmissionItem(resource=domain))
        assert isinstance(lease, RequestAdmissionLease), "free capacity with nobody queued"
        self.live.append(lease)

    @precondition(lambda self: self._cap_is_full())
    @rule(group=groups, domain=st.sampled_from(RESOURCES))
    def queue_a_waiter(self, group: str, domain: RequestResourceKey) -> None:
        serial = next(self.serial)
        item = RequestAdmissionItem(
            resource=domain, group=group, weight=WEIGHTS[group], attempt_id=serial
        )
        task = self.loop.create_task(self.controller.acquire(item))
        self.waiting[group].append((serial, task))
        self._settle()
        assert not task.done(), "the cap is full: a new waiter must queue"

    @precondition(lambda self: self.live and any(self.waiting.values()))
    @rule(index=st.integers(min_value=0))
    def release_one(self, index: int) -> None:
        before = self._backlogged()
        lease = self.live.pop(index % len(self.live))
        assert self.controller.release(lease, RequestReleaseOutcome.SUCCESS).released
        self._settle()
        self._collect(before)

    @precondition(lambda self: any(self.waiting.values()))
    @rule(victim=st.integers(min_value=0), after_grant=st.booleans())
    def cancel_a_waiter(self, victim: int, after_grant: bool) -> None:
        queued = [
            (group, serial, task) for group, tasks in self.waiting.items() for serial, task in tasks
        ]
        group, serial, task = queued[victim % len(queued)]
        before = self._backlogged()
        returned = self.controller.statistics().grants_returned_on_cancel
        if after_grant and self.live:
            # Release first: the victim may be the one just granted; its grant goes on to the
            # next waiter in fair order before anyone runs.
            lease = self.live.pop()
            assert self.controller.release(lease, RequestReleaseOutcome.SUCCESS).released
        task.cancel()
        self._settle()
        self.waiting[group].remove((serial, task))
        if self.controller.statistics().grants_returned_on_cancel > returned:
            # Granted, then cancelled before it ran: the queue served the victim's group, and
            # the grant it handed back went on to the next waiter.
            self.last_granted[group] = serial
            self.grants.append(group)
            self.backlogged_before.append(before)
            before = self._backlogged()
        self._collect(before)

    @invariant()
    def the_cap_stays_full_while_waiters_queue(self) -> None:
        stats = self.controller.statistics()
        assert stats.in_flight == len(self.live) == stats.live_leases
        if stats.waiters:
            assert stats.in_flight == CAP
        assert stats.waiters == sum(len(queued) for queued in self.waiting.values())

    @invariant()
    def weighted_fair_over_every_stretch_of_joint_backlog(self) -> None:
        grants = self.grants
        for first, second in itertools.combinations(WEIGHTS, 2):
            w1, w2 = WEIGHTS[first], WEIGHTS[second]
            bound = 1 / w1 + 1 / w2 + 1e-9
            # Maximal runs of grants made while both groups had waiters.
            runs: list[list[str]] = [[]]
            for group, before in zip(grants, self.backlogged_before, strict=True):
                if first in before and second in before:
                    runs[-1].append(group)
                elif runs[-1]:
                    runs.append([])
            for run in runs:
                for start in range(len(run)):
                    n1 = n2 = 0
                    for group in run[start:]:
                        n1 += group == first
                        n2 += group == second
                        assert abs(n1 / w1 - n2 / w2) <= bound, (first, second, run[start:])

    def teardown(self) -> None:
        try:
            for queued in self.waiting.values():
                for _, task in queued:
                    task.cancel()
            self._settle()
            for lease in self.live:
                assert self.controller.release(lease, RequestReleaseOutcome.SUCCESS).released
            for queued in self.waiting.values():
                for _, task in queued:
                    if task.done() and not task.cancelled():
                        assert self.controller.release(
                            task.result(), RequestReleaseOutcome.SUCCESS
                        ).released
            stats = self.controller.statistics()
            assert stats.in_flight == stats.live_leases == stats.waiters == 0
            assert stats.granted_total == stats.released_total
        finally:
            self.loop.close()


FairWaitersMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=50, deadline=None
)
TestFairWaitersMachine = FairWaitersMachine.TestCase
