"""The dispatch fast path: a bound policy answers as ``evaluate`` / ``on_acquire`` /
``on_release`` do, the queue's ``peek`` and judged selections agree with a plain selection, and
the controller's counters and caches stay exact."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway.errors import EngineError
from sluiceway.fair_queue import HeadVerdict, QueueEntry, QueueView, WeightedFairQueue
from sluiceway.scheduling.admission import TaskAdmissionController, TaskAdmissionLease
from sluiceway.scheduling.policies import (
    DENIED,
    NO_CAPACITY,
    BoundedBorrowTaskAdmissionPolicy,
    PolicyDecision,
    PolicyTables,
    StrictFairTaskAdmissionPolicy,
    TaskAdmissionPolicy,
    TaskLedgerReader,
)
from sluiceway.scheduling.tasks import (
    SchedulableTask,
    SchedulerResourceRequest,
    TaskGroupSpec,
    TaskKind,
    make_task,
)

RESOURCES = ("submission", "local")
REQUESTS: dict[str, SchedulerResourceRequest] = {
    name: SchedulerResourceRequest(amounts=MappingProxyType(amounts))
    for name, amounts in {
        "submit": {"submission": 1},
        "both": {"submission": 1, "local": 1},
        "local2": {"local": 2},
        "zero": {"submission": 1, "local": 0},  # an amount of 0 still counts for the policy
    }.items()
}
GROUPS = ("a", "b", "c", "d")
_ids = iter(range(10**9))


def _item(group: str, weight: int, request: str) -> SchedulableTask:
    task = make_task(0, group, 0, next(_ids), TaskKind.CELL)
    return SchedulableTask(task, TaskGroupSpec(key=group, weight=weight), REQUESTS[request])


class DictLedger:
    """A ``TaskLedgerReader`` over plain dicts; the amounts held outside the contenders of a
    queue are counted from scratch at every read (the definition the controller keeps
    incrementally)."""

    def __init__(
        self,
        limits: dict[str, int],
        held: dict[str, dict[str, int]],
        leases: dict[str, int],
        weights: dict[str, float],
        debt: dict[str, int],
    ) -> None:
        self.limits = limits
        self.held = held
        self.leases = leases
        self.weights = weights
        self.debts = debt

    def limit(self, resource: str) -> int:
        return self.limits[resource]

    def leased(self, resource: str) -> int:
        return sum(amounts.get(resource, 0) for amounts in self.held.values())

    def group_leased(self, group: str, resource: str) -> int:
        return self.held.get(group, {}).get(resource, 0)

    def debt(self, group: str) -> int:
        return self.debts.get(group, 0)

    def group_weight(self, group: str) -> float | None:
        return self.weights[group] if self.leases.get(group) else None

    def outside(self, resource: str, queue_view: QueueView[SchedulableTask]) -> tuple[float, int]:
        weight, amount = 0.0, 0
        for group, count in self.leases.items():
            held = self.group_leased(group, resource)
            if count and held and not queue_view.demand(group, resource):
                weight += self.weights[group]
                amount += held
        return weight, amount

    def leased_only_weight(self, resource: str, queue_view: QueueView[SchedulableTask]) -> float:
        return self.outside(resource, queue_view)[0]

    def leased_only_held(self, resource: str, queue_view: QueueView[SchedulableTask]) -> int:
        return self.outside(resource, queue_view)[1]

    def tables(self, queue: WeightedFairQueue[SchedulableTask]) -> PolicyTables:
        view = queue.view()
        demand = view.demand_tables()
        return PolicyTables(
            limits=self.limits,
            leased={resource: self.leased(resource) for resource in self.limits},
            group_leased={
                group: {resource: amount for resource, amount in amounts.items() if amount}
                for group, amounts in self.held.items()
            },
            group_weight={group: self.weights[group] for group in self.leases},
            debt={group: debt for group, debt in self.debts.items() if debt},
            outside_held={resource: self.outside(resource, view)[1] for resource in self.limits},
            outside_weight={resource: self.outside(resource, view)[0] for resource in self.limits},
            queued_demand=demand.by_group,
            demand_weight=demand.weight,
        )


@st.composite
def ledgers(draw: st.DrawFn) -> DictLedger:
    limits = {resource: draw(st.integers(min_value=1, max_value=8)) for resource in RESOURCES}
    held: dict[str, dict[str, int]] = {}
    leases: dict[str, int] = {}
    weights: dict[str, float] = {}
    debt: dict[str, int] = {}
    room = dict(limits)
    for group in GROUPS:
        weights[group] = draw(st.sampled_from([1, 1, 2, 3, 4]))
        amounts = {}
        for resource in RESOURCES:
            amounts[resource] = draw(st.integers(min_value=0, max_value=room[resource]))
            room[resource] -= amounts[resource]
        count = draw(st.integers(min_value=0, max_value=4))
        if any(amounts.values()) and not count:
            count = 1
        if count:
            held[group] = amounts
            leases[group] = count
            debt[group] = draw(st.integers(min_value=0, max_value=count))
    return DictLedger(limits, held, leases, weights, debt)


def _queue(draw: st.DrawFn) -> WeightedFairQueue[SchedulableTask]:
    queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
    for group in draw(st.lists(st.sampled_from(GROUPS), max_size=6)):
        item = _item(
            group, draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from(sorted(REQUESTS)))
        )
        queue.enqueue(
            [
                QueueEntry(
                    item_id=item.task_id,
                    group=group,
                    weight=item.group.weight,
                    item=item,
                    demand=item.request.amounts,
                )
            ]
        )
    return queue


def _reference(
    policy: TaskAdmissionPolicy,
    item: SchedulableTask,
    queue: WeightedFairQueue[SchedulableTask],
    ledger: DictLedger,
) -> tuple[int, str | None, float | None]:
    """What the controller's capacity check, ``evaluate`` and ``on_acquire`` answer."""
    for resource, amount in item.request.amounts.items():
        if ledger.leased(resource) + amount > ledger.limit(resource):
            return (NO_CAPACITY, None, None)
    view = queue.view()
    decision: PolicyDecision = policy.evaluate(item, view, ledger)
    if not decision.allowed:
        return (DENIED, decision.resource, decision.level_bound)
    delta = policy.on_acquire(item, view, ledger)
    if delta.debt_change:
        assert delta.group == item.group.key
    return (delta.debt_change, None, None)


@settings(max_examples=400, deadline=None)
@given(
    ledger=ledgers(),
    data=st.data(),
    strict=st.booleans(),
    ceiling=st.sampled_from([0.25, 0.5, 1.0]),
)
def test_a_bound_policy_answers_as_evaluate_and_on_acquire(
    ledger: DictLedger, data: st.DataObject, strict: bool, ceiling: float
) -> None:
    policy: StrictFairTaskAdmissionPolicy | BoundedBorrowTaskAdmissionPolicy = (
        StrictFairTaskAdmissionPolicy()
        if strict
        else BoundedBorrowTaskAdmissionPolicy(borrow_ceiling_fraction=ceiling)
    )
    queue = _queue(data.draw)
    bound = policy.bind(ledger.tables(queue))
    assert bound is not None
    view = queue.view()
    heads = [view.first_candidate(group) for group in view.backlogged_groups()]
    # Every queued head, and tasks of any group that are not queued (other weight, request).
    items = [head.item for head in heads if head is not None]
    items += [
        _item(group, weight, request)
        for group in GROUPS
        for weight, request in [(ledger.weights[group], "submit"), (2, "both"), (1, "zero")]
    ]
    for item in items:
        answer = bound.admit(item.group.key, item.group.weight, item.request.pairs)
        expected = _reference(policy, item, queue, ledger)
        assert answer[0] == expected[0], (item, answer, expected)
        if answer[0] == DENIED:
            # The same resource and the same level bound (the same float: same arithmetic).
            assert answer[1:] == expected[1:], (item, answer, expected)
    for group in GROUPS:
        delta = policy.on_release(group, ledger)
        assert delta.debt_change == (-1 if bound.repays_debt and ledger.debt(group) else 0)


def test_a_subclass_that_overrides_a_policy_method_is_not_bound() -> None:
    class Counting(StrictFairTaskAdmissionPolicy):
        def evaluate(
            self,
            item: SchedulableTask,
            queue_view: QueueView[SchedulableTask],
            ledger: TaskLedgerReader,
        ) -> PolicyDecision:
            return super().evaluate(item, queue_view, ledger)

    class Plain(BoundedBorrowTaskAdmissionPolicy):
        pass

    ledger = DictLedger({"submission": 2}, {}, {}, {}, {})
    queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
    assert Counting().bind(ledger.tables(queue)) is None
    assert Plain().bind(ledger.tables(queue)) is not None


def test_a_group_holding_nothing_is_denied_when_an_amount_of_zero_finds_no_room() -> None:
    """The "holds nothing" shortcut needs every amount >= 1: with ``local`` all held outside the
    contenders and a peer queued for it, a request for 0 of it is capped, as ``evaluate`` says."""
    ledger = DictLedger(
        {"submission": 4, "local": 1},
        {"x": {"submission": 0, "local": 1}},
        {"x": 1},
        {"x": 1, "a": 1, "b": 1},
        {},
    )
    queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
    for group, request in (("a", "zero"), ("b", "local2")):
        item = _item(group, 1, request)
        queue.enqueue(
            [
                QueueEntry(
                    item_id=item.task_id,
                    group=group,
                    weight=1,
                    item=item,
                    demand=item.request.amounts,
                )
            ]
        )
    item = _item("a", 1, "zero")
    for policy in (StrictFairTaskAdmissionPolicy(), BoundedBorrowTaskAdmissionPolicy()):
        bound = policy.bind(ledger.tables(queue))
        assert bound is not None
        answer = bound.admit("a", 1, item.request.pairs)
        assert answer == _reference(policy, item, queue, ledger)
        assert answer[:2] == (DENIED, "local")


def _entries(group: str, weights: Mapping[str, int], count: int) -> list[QueueEntry[str]]:
    return [
        QueueEntry(item_id=f"{group}{n}", group=group, weight=weights[group], item=f"{group}{n}")
        for n in range(count)
    ]


def test_peek_is_the_selection_of_an_eligible_top_and_a_judged_top_is_not_judged_again() -> None:
    queue: WeightedFairQueue[str] = WeightedFairQueue()
    weights = {"a": 1, "b": 2, "c": 1}
    for group in weights:
        queue.enqueue(_entries(group, weights, 3))
    peeked = queue.peek()
    plain = queue.select_next_or_park(lambda entry: HeadVerdict.ELIGIBLE)
    assert peeked == plain and peeked is not None
    shown: list[Hashable] = []

    def judge(entry: QueueEntry[str]) -> HeadVerdict:
        shown.append(entry.group)
        return HeadVerdict.ELIGIBLE

    selection = queue.select_next_or_park(judge, (peeked, HeadVerdict.PARK))
    assert selection is not None and selection.entry.group != peeked.entry.group
    assert peeked.entry.group not in shown
    assert queue.is_parked(peeked.entry.group)
    # A judged selection that is no longer current is ignored: its head is judged again.
    queue.unpark(peeked.entry.group)
    queue.enqueue(_entries("d", {"d": 1}, 1))
    shown.clear()
    again = queue.select_next_or_park(judge, (peeked, HeadVerdict.PARK))
    assert again is not None and shown[0] == again.entry.group
    assert not queue.is_parked(peeked.entry.group)


def test_queue_statistics_count_commits_and_removals() -> None:
    queue: WeightedFairQueue[str] = WeightedFairQueue()
    queue.enqueue(_entries("a", {"a": 1}, 4) + _entries("b", {"b": 1}, 2))
    queue.remove("a3")
    for _ in range(3):
        selection = queue.select_next()
        assert selection is not None and queue.commit(selection) is not None
    stale = queue.select_next()
    assert stale is not None
    queue.enqueue(_entries("c", {"c": 1}, 1))
    assert queue.commit(stale) is None
    stats = queue.statistics()
    assert (stats.enqueued_total, stats.committed_total, stats.removed_total) == (7, 3, 1)
    assert stats.stale_commits == 1 and stats.queued == 3


def test_the_pairs_of_a_request_follow_its_amounts_and_do_not_change_equality() -> None:
    request = SchedulerResourceRequest(amounts=MappingProxyType({"submission": 1, "local": 2}))
    assert request.pairs == (("submission", 1), ("local", 2))
    assert request == SchedulerResourceRequest(amounts={"submission": 1, "local": 2})
    assert "pairs" not in repr(request)


def test_released_total_counts_releases_and_not_diagnostics() -> None:
    controller = TaskAdmissionController({"submission": 3})
    queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
    for group in ("a", "b"):
        item = _item(group, 1, "submit")
        queue.enqueue(
            [
                QueueEntry(
                    item_id=item.task_id,
                    group=group,
                    weight=1,
                    item=item,
                    demand=item.request.amounts,
                )
            ]
        )
    leases = []
    while (selection := controller.select_next(queue)) is not None:
        lease = controller.try_acquire(selection.entry.item, queue.view())
        assert isinstance(lease, TaskAdmissionLease)
        assert queue.commit(selection) is selection.entry.item
        leases.append(lease)
    assert len(leases) == 2
    assert controller.release(leases[0]).released
    assert not controller.release(leases[0]).released  # a duplicate: a diagnostic
    view = controller.view()
    assert (view.acquired_total, view.released_total, view.diagnostics_total) == (2, 1, 1)
    assert view.active_leases == 1


def test_an_admitted_head_is_granted_without_asking_the_policy_again() -> None:
    """Through ``select_next`` then ``try_acquire`` of its head, an unbound policy's
    ``evaluate`` runs once per dispatch; a lease change in between voids the verdict."""
    evaluated: list[str] = []

    class Counting(StrictFairTaskAdmissionPolicy):
        def evaluate(
            self,
            item: SchedulableTask,
            queue_view: QueueView[SchedulableTask],
            ledger: TaskLedgerReader,
        ) -> PolicyDecision:
            evaluated.append(item.task_id)
            return super().evaluate(item, queue_view, ledger)

    controller = TaskAdmissionController({"submission": 4}, policy=Counting())
    queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
    items = [_item("a", 1, "submit") for _ in range(3)]
    queue.enqueue(
        QueueEntry(item_id=i.task_id, group="a", weight=1, item=i, demand=i.request.amounts)
        for i in items
    )
    view = queue.view()
    selection = controller.select_next(queue)
    assert selection is not None
    assert isinstance(controller.try_acquire(selection.entry.item, view), TaskAdmissionLease)
    assert evaluated == [items[0].task_id]
    assert queue.commit(selection) is items[0]
    selection = controller.select_next(queue)
    assert selection is not None
    other = _item("b", 1, "submit")
    assert isinstance(controller.try_acquire(other, view), TaskAdmissionLease)  # the ledger moves
    assert isinstance(controller.try_acquire(selection.entry.item, view), TaskAdmissionLease)
    assert evaluated == [items[0].task_id, items[1].task_id, other.task_id, items[1].task_id]


def test_a_negative_amount_is_refused_where_it_is_made() -> None:
    with pytest.raises(EngineError, match=r"-1 of scheduler resource 'local'"):
        SchedulerResourceRequest(amounts={"submission": 1, "local": -1})
    queue: WeightedFairQueue[str] = WeightedFairQueue()
    with pytest.raises(EngineError, match=r"demand of -2 for 'local'"):
        queue.enqueue(
            [QueueEntry(item_id="x", group="g", weight=1, item="x", demand={"local": -2})]
        )
