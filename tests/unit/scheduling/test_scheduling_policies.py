"""Task admission policies, the ledger apart from policy debt, and ``explain_blocked``."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sluiceway.errors import EngineError
from sluiceway.fair_queue import QueueEntry, WeightedFairQueue
from sluiceway.scheduling.admission import (
    ReleaseStatus,
    TaskAdmissionController,
    TaskAdmissionDenied,
    TaskAdmissionLease,
)
from sluiceway.scheduling.policies import (
    BoundedBorrowTaskAdmissionPolicy,
    StrictFairTaskAdmissionPolicy,
    TaskAdmissionPolicyKind,
    TaskDenialReason,
    queued_peer_weight,
)
from sluiceway.scheduling.tasks import (
    SchedulableTask,
    SchedulerResourceRequest,
    TaskGroupSpec,
    TaskKind,
    make_task,
)

SUBMIT = SchedulerResourceRequest(amounts=MappingProxyType({"submission": 1}))
_ids = iter(range(10**9))


def _item(group: str, weight: int = 1) -> SchedulableTask:
    task = make_task(0, group, 0, next(_ids), TaskKind.CELL)
    return SchedulableTask(task, TaskGroupSpec(key=group, weight=weight), SUBMIT)


def _enqueue(queue: WeightedFairQueue[SchedulableTask], item: SchedulableTask) -> None:
    queue.enqueue(
        [
            QueueEntry(
                item_id=item.task_id,
                group=item.group.key,
                weight=item.group.weight,
                item=item,
                demand=item.request.amounts,
            )
        ]
    )


def test_a_lone_group_uses_all_capacity_under_either_policy() -> None:
    for policy in (StrictFairTaskAdmissionPolicy(), BoundedBorrowTaskAdmissionPolicy()):
        controller = TaskAdmissionController({"submission": 4}, policy=policy)
        queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
        leases = [controller.try_acquire(_item("a"), queue.view()) for _ in range(4)]
        assert all(isinstance(lease, TaskAdmissionLease) for lease in leases)
        assert controller.view().debt_by_group == {}


def test_bounded_borrow_withholds_a_group_in_debt_until_its_completions_repay() -> None:
    controller = TaskAdmissionController(
        {"submission": 4}, policy=BoundedBorrowTaskAdmissionPolicy(borrow_ceiling_fraction=1.0)
    )
    queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
    view = queue.view()
    # b holds one lease, so a's strict share is 2 of 4; a borrows its third and fourth... up to 3.
    b_lease = controller.try_acquire(_item("b"), view)
    a_leases = [controller.try_acquire(_item("a"), view) for _ in range(3)]
    assert all(isinstance(lease, TaskAdmissionLease) for lease in [b_lease, *a_leases])
    assert controller.view().debt_by_group == {"a": 1}
    # A peer queues: the group in debt is withheld even though it is below nothing else.
    _enqueue(queue, _item("b"))
    assert isinstance(b_lease, TaskAdmissionLease)
    controller.release(b_lease)
    denied = controller.try_acquire(_item("a"), view)
    assert isinstance(denied, TaskAdmissionDenied)
    assert denied.reason is TaskDenialReason.BORROW_DEBT
    # a's own completion repays the debt.
    first = a_leases[0]
    assert isinstance(first, TaskAdmissionLease)
    controller.release(first)
    assert controller.view().debt_by_group == {}


def test_strict_fair_caps_a_group_at_its_share_only_under_peer_pressure() -> None:
    controller = TaskAdmissionController({"submission": 4}, policy=StrictFairTaskAdmissionPolicy())
    queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
    view = queue.view()
    for _ in range(2):
        assert isinstance(controller.try_acquire(_item("a"), view), TaskAdmissionLease)
    _enqueue(queue, _item("b", weight=1))
    denied = controller.try_acquire(_item("a"), view)
    assert isinstance(denied, TaskAdmissionDenied)
    assert denied.reason is TaskDenialReason.GROUP_CAP and denied.resource == "submission"
    assert controller.is_eligible(_item("b"), view)


def test_release_of_a_lease_never_granted_is_unknown_and_changes_nothing() -> None:
    controller = TaskAdmissionController({"submission": 2})
    lease = controller.try_acquire(_item("a"))
    assert isinstance(lease, TaskAdmissionLease)
    forged = TaskAdmissionLease(999, "x", "a", {"submission": 1}, lease.owner)
    assert controller.release(forged).status is ReleaseStatus.UNKNOWN
    assert controller.view().leased == {"submission": 1}
    assert controller.release(lease).released
    assert controller.release(lease).status is ReleaseStatus.DUPLICATE
    assert controller.view().diagnostics_total == 2


def test_explain_blocked_names_the_tasks_and_the_resources() -> None:
    controller = TaskAdmissionController({"submission": 1, "local": 1})
    queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
    big = SchedulableTask(
        make_task(0, "huge", 0, 0, TaskKind.CELL),
        TaskGroupSpec(key="huge", weight=1),
        SchedulerResourceRequest(amounts=MappingProxyType({"submission": 1, "local": 2})),
    )
    _enqueue(queue, big)
    summary = controller.explain_blocked(queue.view())
    assert summary.is_stuck
    (blocked,) = summary.blocked
    assert blocked.reason is TaskDenialReason.NO_CAPACITY and blocked.resource == "local"
    assert blocked.can_never_fit
    assert "huge/0/0" in summary.describe() and "'local'" in summary.describe()


def test_shutdown_is_a_denial_reason_and_a_view_field() -> None:
    controller = TaskAdmissionController({"submission": 1})
    controller.shutdown()
    denied = controller.try_acquire(_item("a"))
    assert isinstance(denied, TaskAdmissionDenied) and denied.reason is TaskDenialReason.SHUTDOWN
    view = controller.view()
    assert view.shutting_down and view.denials_by_reason == {TaskDenialReason.SHUTDOWN: 1}
    assert view.policy is TaskAdmissionPolicyKind.BOUNDED_BORROW


def test_an_invalid_borrow_ceiling_is_refused() -> None:
    with pytest.raises(ValueError, match="borrow_ceiling_fraction"):
        BoundedBorrowTaskAdmissionPolicy(borrow_ceiling_fraction=0.0)


def test_unknown_resource_is_an_engine_error_naming_it() -> None:
    controller = TaskAdmissionController({"submission": 1})
    item = SchedulableTask(
        make_task(0, "c", 0, 0, TaskKind.CELL),
        TaskGroupSpec(key="c", weight=1),
        SchedulerResourceRequest(amounts={"gpu": 1}),
    )
    with pytest.raises(EngineError, match="'gpu'"):
        controller.try_acquire(item)


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=8), min_size=2, max_size=5),
    commits=st.integers(min_value=1, max_value=200),
)
def test_with_every_group_backlogged_service_tracks_weights(
    weights: list[int], commits: int
) -> None:
    queue: WeightedFairQueue[str] = WeightedFairQueue()
    for index, weight in enumerate(weights):
        queue.enqueue(
            QueueEntry(item_id=f"{index}/{n}", group=index, weight=weight, item=f"{index}/{n}")
            for n in range(commits)
        )
    served = [0] * len(weights)
    for _ in range(commits):
        selection = queue.select_next()
        assert selection is not None
        assert queue.commit(selection) is not None
        served[int(selection.entry.group)] += 1  # type: ignore[call-overload]
    # Start-time fair queueing: normalized service of two backlogged groups differs by at most
    # one item of each.
    for g, wg in enumerate(weights):
        for h, wh in enumerate(weights):
            assert served[g] / wg - served[h] / wh <= 1 / wg + 1 / wh + 1e-9


GROUPS = {"a": 1, "b": 2, "c": 3}


class QueueControllerPolicyMachine(RuleBasedStateMachine):
    """The ready queue, the controller and a policy driven together, as the dispatch loop does:
    ``controller.select_next(queue)`` -> ``try_acquire`` -> ``commit``, releases in any order."""

    # What the runs exercised (checked by ``test_the_machine_exercises_debt_and_fairness``).
    seen_debt_while_peer_waits = 0
    seen_fair_service_steps = 0
    seen_lone_group_checks = 0

    def __init__(self) -> None:
        super().__init__()
        self.queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
        self.controller: TaskAdmissionController | None = None
        self.limit = 0
        self.enqueued: set[str] = set()
        self.running: dict[str, TaskAdmissionLease] = {}
        self.done: set[str] = set()
        self.released: list[TaskAdmissionLease] = []

    @precondition(lambda self: self.controller is None)
    @rule(
        limit=st.integers(min_value=1, max_value=6),
        strict=st.booleans(),
        ceiling=st.sampled_from([0.25, 0.5, 1.0]),
    )
    def start(self, limit: int, strict: bool, ceiling: float) -> None:
        policy = (
            StrictFairTaskAdmissionPolicy()
            if strict
            else BoundedBorrowTaskAdmissionPolicy(borrow_ceiling_fraction=ceiling)
        )
        self.limit = limit
        self.controller = TaskAdmissionController({"submission": limit}, policy=policy)

    @precondition(lambda self: self.controller is not None)
    @rule(group=st.sampled_from(sorted(GROUPS)), count=st.integers(min_value=1, max_value=4))
    def enqueue(self, group: str, count: int) -> None:
        for _ in range(count):
            self._add(group)

    @precondition(lambda self: self.controller is not None)
    @rule(steps=st.integers(min_value=1, max_value=8))
    def dispatch(self, steps: int) -> None:
        for _ in range(steps):
            if self._dispatch_one() is None:
                self._check_lone_group_is_work_conserving()
                break

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.running)))
        self._complete(task_id)

    @precondition(lambda self: bool(self.released))
    @rule(data=st.data())
    def release_again(self, data: st.DataObject) -> None:
        controller = self.controller
        assert controller is not None
        before = controller.view().leased
        lease = data.draw(st.sampled_from(self.released))
        assert controller.release(lease).status is ReleaseStatus.DUPLICATE
        assert controller.view().leased == before

    @precondition(lambda self: self.controller is not None)
    @rule(
        depths=st.fixed_dictionaries(
            {group: st.integers(min_value=1, max_value=12) for group in sorted(GROUPS)}
        ),
        data=st.data(),
    )
    def backlogged_service_tracks_weights(
        self, depths: dict[str, int], data: st.DataObject
    ) -> None:
        """Settle (finish what runs, serve what is queued), then backlog every group and serve
        one task at a time: while all groups stay backlogged, normalized service ``S_g / w_g``
        of any two groups differs by at most one item of each (``1 / w_g + 1 / w_h``)."""
        self._settle()
        for group, depth in depths.items():
            for _ in range(depth):
                self._add(group)
        served = dict.fromkeys(GROUPS, 0)
        budget = data.draw(st.integers(min_value=1, max_value=sum(depths.values())))
        for _ in range(budget):
            view = self.queue.view()
            if any(not view.queued_in_group(group) for group in GROUPS):
                break  # a group ran dry: the bound holds only while all are backlogged
            task_id = self._dispatch_one()
            assert task_id is not None
            served[task_id.split("/")[0]] += 1
            QueueControllerPolicyMachine.seen_fair_service_steps += 1
            self._complete(task_id)
            for g, wg in GROUPS.items():
                for h, wh in GROUPS.items():
                    assert served[g] / wg - served[h] / wh <= 1 / wg + 1 / wh + 1e-9, served

    @precondition(lambda self: self.controller is not None)
    @rule(group=st.sampled_from(sorted(GROUPS)), extra=st.integers(min_value=1, max_value=3))
    def lone_group_takes_everything(self, group: str, extra: int) -> None:
        """With no other group queued or holding leases, one group gets the whole limit."""
        self._settle()
        for _ in range(self.limit + extra):
            self._add(group)
        while self._dispatch_one() is not None:
            pass
        self._check_lone_group_is_work_conserving()

    @precondition(lambda self: self.controller is not None)
    @rule()
    def borrow_then_a_peer_arrives(self) -> None:
        """ "b" holds a lease, "a" works alone beyond its strict share (borrowing, under
        bounded borrow), then "b" queues again: from then on "a" may not start while in debt."""
        self._settle()
        self._add("b")
        self._dispatch_one()
        for _ in range(self.limit):
            self._add("a")
        while self._dispatch_one() is not None:
            pass
        self._add("b")
        while self._dispatch_one() is not None:
            pass

    def _settle(self) -> None:
        """Finish what runs and serve what is queued, one at a time."""
        for task_id in sorted(self.running):
            self._complete(task_id)
        while len(self.queue):
            # With nothing in flight every head may start: the queue drains without a stall.
            started = self._dispatch_one()
            assert started is not None
            self._complete(started)

    def _add(self, group: str) -> None:
        item = _item(group, GROUPS[group])
        _enqueue(self.queue, item)
        self.enqueued.add(item.task_id)

    def _dispatch_one(self) -> str | None:
        """One dispatch cycle; the id of the task that started, or None if nothing could."""
        controller = self.controller
        assert controller is not None
        view = self.queue.view()
        selection = controller.select_next(self.queue)
        if selection is None:
            return None
        item = selection.entry.item
        group = item.group.key
        debt = controller.view().debt_by_group.get(group, 0)
        peer_waiting = queued_peer_weight(group, item.group.weight, "submission", view) > 0
        lease = controller.try_acquire(item, view)
        assert isinstance(lease, TaskAdmissionLease)
        # A group in debt gets nothing while a peer waits and the resource is free.
        assert not (debt and peer_waiting)
        assert self.queue.commit(selection) is item
        assert item.task_id not in self.running
        self.running[item.task_id] = lease
        return item.task_id

    def _complete(self, task_id: str) -> None:
        controller = self.controller
        assert controller is not None
        lease = self.running.pop(task_id)
        assert controller.release(lease).released
        self.done.add(task_id)
        self.released.append(lease)

    def _check_lone_group_is_work_conserving(self) -> None:
        controller = self.controller
        assert controller is not None
        view = self.queue.view()
        backlogged = list(view.backlogged_groups())
        holders = set(controller.view().leased_by_group)
        if len(backlogged) == 1 and holders <= set(backlogged):
            QueueControllerPolicyMachine.seen_lone_group_checks += 1
            assert controller.view().leased["submission"] == self.limit

    @invariant()
    def no_task_lost_or_duplicated(self) -> None:
        queued = {entry for entry in self.enqueued if entry in self.queue}
        running = set(self.running)
        assert not queued & running and not queued & self.done and not running & self.done
        assert queued | running | self.done == self.enqueued

    @invariant()
    def policy_calls_change_nothing(self) -> None:
        """``evaluate`` is pure, and ``on_acquire`` / ``on_release`` only return a delta: asking
        them about every queued head leaves the ledger, the debt and the queue as they were,
        and asking twice gives the same answer."""
        controller = self.controller
        if controller is None:
            return
        policy = controller.policy
        ledger = controller.ledger
        view = self.queue.view()
        before = (controller.view(), self.queue.statistics(), view.version)
        for group in list(view.backlogged_groups()):
            head = view.first_candidate(group)
            assert head is not None
            first = policy.evaluate(head.item, view, ledger)
            assert policy.evaluate(head.item, view, ledger) == first
            policy.on_acquire(head.item, view, ledger)
            policy.on_release(head.item.group.key, ledger)
        assert (controller.view(), self.queue.statistics(), view.version) == before

    @invariant()
    def ledger_within_bounds_and_debt_backed_by_leases(self) -> None:
        controller = self.controller
        if controller is None:
            return
        view = controller.view()
        leased = view.leased["submission"]
        assert 0 <= leased <= self.limit
        assert leased == len(self.running) == view.active_leases
        queue_view = self.queue.view()
        for group, debt in view.debt_by_group.items():
            assert 0 < debt <= view.leased_by_group.get(group, 0)
            if queued_peer_weight(group, GROUPS[group], "submission", queue_view):
                QueueControllerPolicyMachine.seen_debt_while_peer_waits += 1


QueueControllerPolicyMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=40, deadline=None
)
test_queue_controller_policy_machine = QueueControllerPolicyMachine.TestCase


def test_the_machine_exercises_debt_and_fairness() -> None:
    machine = QueueControllerPolicyMachine
    for _ in range(3):  # the machine's runs are random: run it again if it missed a case
        if (
            machine.seen_debt_while_peer_waits
            and machine.seen_fair_service_steps
            and machine.seen_lone_group_checks
        ):
            break
        machine.TestCase().runTest()
    assert machine.seen_debt_while_peer_waits > 0
    assert machine.seen_fair_service_steps > 0
    assert machine.seen_lone_group_checks > 0
