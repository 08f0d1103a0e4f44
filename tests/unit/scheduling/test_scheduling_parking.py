"""The parking index: selecting through it agrees with evaluating every group head."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sluiceway.fair_queue import HeadVerdict, QueueEntry, WeightedFairQueue
from sluiceway.scheduling.admission import TaskAdmissionController, TaskAdmissionLease
from sluiceway.scheduling.policies import (
    BoundedBorrowTaskAdmissionPolicy,
    StrictFairTaskAdmissionPolicy,
)
from sluiceway.scheduling.tasks import (
    SchedulableTask,
    SchedulerResourceRequest,
    TaskGroupSpec,
    TaskKind,
    make_task,
)

_ids = iter(range(10**9))

REQUESTS: dict[str, Mapping[str, int]] = {
    "submit": MappingProxyType({"submission": 1}),
    "both": MappingProxyType({"submission": 1, "local": 1}),
    "local2": MappingProxyType({"local": 2}),
}
GROUPS = ("a", "b", "c", "d")


def _entry(group: str, weight: int, request: str) -> QueueEntry[SchedulableTask]:
    task = make_task(0, group, 0, next(_ids), TaskKind.CELL)
    amounts = REQUESTS[request]
    item = SchedulableTask(
        task, TaskGroupSpec(key=group, weight=weight), SchedulerResourceRequest(amounts=amounts)
    )
    return QueueEntry(
        item_id=item.task_id, group=group, weight=weight, item=item, demand=item.request.amounts
    )


def test_a_parked_group_keeps_its_place_and_the_head_change_unparks_it() -> None:
    queue: WeightedFairQueue[str] = WeightedFairQueue()
    queue.enqueue(
        QueueEntry(item_id=f"{g}{n}", group=g, weight=1, item=g) for n in range(2) for g in "ab"
    )
    selection = queue.select_next_or_park(
        lambda entry: HeadVerdict.PARK if entry.group == "a" else HeadVerdict.ELIGIBLE
    )
    assert selection is not None
    assert selection.entry.item_id == "b0"
    assert queue.is_parked("a")
    assert queue.statistics().parked_groups == 1
    queue.unpark("a")
    # Same start tag and tie order as before parking: "a" is first again.
    first = queue.select_next_or_park(lambda entry: HeadVerdict.ELIGIBLE)
    assert first is not None
    assert first.entry.item_id == "a0"
    queue.select_next_or_park(lambda entry: HeadVerdict.PARK)
    assert queue.parked_count == 2
    assert queue.remove("a0") == "a"  # head change
    assert not queue.is_parked("a")
    assert queue.is_parked("b")
    plain = queue.select_next()  # a plain selection unparks every group first
    assert plain is not None
    assert queue.parked_count == 0


class ParkingAgreesWithFullEvaluation(RuleBasedStateMachine):
    """Two queues with the same history: one selected through the controller's parking index,
    one by evaluating every head. Their selections must be the same at every step."""

    most_parked = 0  # the largest parked set seen: parking must actually be exercised

    def __init__(self) -> None:
        super().__init__()
        self.queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
        self.shadow: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
        self.controller: TaskAdmissionController | None = None
        self.running: list[TaskAdmissionLease] = []
        self.ids: list[str] = []

    @precondition(lambda self: self.controller is None)
    @rule(
        submission=st.integers(min_value=1, max_value=6),
        local=st.integers(min_value=2, max_value=5),
        strict=st.booleans(),
        ceiling=st.sampled_from([0.25, 0.5, 1.0]),
    )
    def start(self, submission: int, local: int, strict: bool, ceiling: float) -> None:
        policy = (
            StrictFairTaskAdmissionPolicy()
            if strict
            else BoundedBorrowTaskAdmissionPolicy(borrow_ceiling_fraction=ceiling)
        )
        self.controller = TaskAdmissionController(
            {"submission": submission, "local": local}, policy=policy
        )

    @precondition(lambda self: self.controller is not None)
    @rule(
        group=st.sampled_from(GROUPS),
        weight=st.sampled_from([1, 1, 1, 2, 3]),
        request=st.sampled_from(sorted(REQUESTS)),
        count=st.integers(min_value=1, max_value=3),
    )
    def enqueue(self, group: str, weight: int, request: str, count: int) -> None:
        entries = [_entry(group, weight, request) for _ in range(count)]
        assert self.queue.enqueue(entries) == self.shadow.enqueue(entries)
        self.ids.extend(entry.item_id for entry in entries)

    @precondition(lambda self: self.controller is not None)
    @rule(steps=st.integers(min_value=1, max_value=6))
    def dispatch(self, steps: int) -> None:
        controller = self.controller
        assert controller is not None
        view = self.queue.view()
        for _ in range(steps):
            selection = controller.select_next(self.queue)
            expected = self.shadow.select_next(lambda e: controller.is_eligible(e.item, view))
            if expected is None:
                assert selection is None
                return
            assert selection is not None
            assert selection.entry is expected.entry
            lease = controller.try_acquire(selection.entry.item, view)
            assert isinstance(lease, TaskAdmissionLease)
            assert self.queue.commit(selection) is selection.entry.item
            assert self.shadow.commit(expected) is expected.entry.item
            self.running.append(lease)

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        controller = self.controller
        assert controller is not None
        index = data.draw(st.integers(min_value=0, max_value=len(self.running) - 1))
        assert controller.release(self.running.pop(index)).released

    @precondition(lambda self: len(self.queue) > 0)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        view = self.queue.view()
        groups = sorted(str(group) for group in view.backlogged_groups())
        group = data.draw(st.sampled_from(groups))
        head = view.first_candidate(group)
        assert head is not None
        item_id = head.item_id
        if data.draw(st.booleans()):  # any queued item, not only a head
            item_id = data.draw(st.sampled_from([i for i in self.ids if i in self.queue]))
        assert self.queue.remove(item_id) is self.shadow.remove(item_id)

    @invariant()
    def parked_heads_are_ineligible(self) -> None:
        controller = self.controller
        if controller is None:
            return
        view = self.queue.view()
        parked = 0
        for group in view.backlogged_groups():
            if self.queue.is_parked(group):
                parked += 1
                head = view.first_candidate(group)
                assert head is not None
                assert not controller.is_eligible(head.item, view)
        assert parked == self.queue.parked_count
        ParkingAgreesWithFullEvaluation.most_parked = max(
            ParkingAgreesWithFullEvaluation.most_parked, parked
        )
        assert len(self.queue) == len(self.shadow)


ParkingAgreesWithFullEvaluation.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None
)
TestParkingAgreesWithFullEvaluation = ParkingAgreesWithFullEvaluation.TestCase


def test_the_machine_exercises_parking() -> None:
    if ParkingAgreesWithFullEvaluation.most_parked == 0:
        ParkingAgreesWithFullEvaluation.TestCase().runTest()
    assert ParkingAgreesWithFullEvaluation.most_parked >= 2
