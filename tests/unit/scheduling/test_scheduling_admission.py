"""Task-admission ledger contracts: limits, unique leases, diagnostic releases."""

from __future__ import annotations

import copy
import dataclasses
from types import MappingProxyType

from sluiceway.fair_queue import QueueEntry, WeightedFairQueue
from sluiceway.scheduling.admission import (
    ReleaseStatus,
    TaskAdmissionController,
    TaskAdmissionDenied,
    TaskAdmissionLease,
    TaskDenialReason,
)
from sluiceway.scheduling.scheduler import commit_selection
from sluiceway.scheduling.tasks import (
    SchedulableTask,
    SchedulerResourceRequest,
    TaskGroupSpec,
    TaskKind,
    make_task,
)

LOCAL = SchedulerResourceRequest(amounts=MappingProxyType({"submission": 1, "local": 1}))


def _item(n: int, group: str = "g") -> SchedulableTask:
    task = make_task(0, "col", 0, n, TaskKind.CELL)
    return SchedulableTask(task, TaskGroupSpec(key=group, weight=1), LOCAL)


def test_limits_bound_leases_and_release_frees_capacity() -> None:
    controller = TaskAdmissionController({"submission": 10, "local": 2})
    first = controller.try_acquire(_item(0))
    second = controller.try_acquire(_item(1))
    denied = controller.try_acquire(_item(2))
    assert isinstance(first, TaskAdmissionLease) and isinstance(second, TaskAdmissionLease)
    assert denied == TaskAdmissionDenied(reason=TaskDenialReason.NO_CAPACITY, resource="local")
    assert not controller.is_eligible(_item(2))
    assert controller.release(first).released
    assert controller.is_eligible(_item(2))
    view = controller.view()
    assert view.leased == {"submission": 1, "local": 1}
    assert view.max_leased == {"submission": 2, "local": 2}


def test_double_and_foreign_release_are_diagnostics_that_change_nothing() -> None:
    controller = TaskAdmissionController({"submission": 1, "local": 1})
    other = TaskAdmissionController({"submission": 1, "local": 1})
    lease = controller.try_acquire(_item(0))
    foreign = other.try_acquire(_item(0))
    assert isinstance(lease, TaskAdmissionLease) and isinstance(foreign, TaskAdmissionLease)
    assert controller.release(lease).status is ReleaseStatus.RELEASED
    assert controller.release(lease).status is ReleaseStatus.DUPLICATE
    assert controller.release(foreign).status is ReleaseStatus.FOREIGN
    view = controller.view()
    assert view.leased == {"submission": 0, "local": 0}
    assert view.diagnostics_total == 2
    assert other.view().leased == {"submission": 1, "local": 1}


def test_stale_commit_releases_the_lease() -> None:
    queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
    controller = TaskAdmissionController({"submission": 4, "local": 4})
    item = _item(0)
    queue.enqueue([QueueEntry(item_id=item.task_id, group="g", weight=1, item=item)])
    selection = queue.select_next()
    assert selection is not None
    lease = controller.try_acquire(selection.entry.item)
    assert isinstance(lease, TaskAdmissionLease)
    other = _item(1, group="h")
    queue.enqueue([QueueEntry(item_id=other.task_id, group="h", weight=1, item=other)])
    assert commit_selection(queue, controller, selection, lease) is None
    assert lease.released
    assert controller.active_leases == 0
    assert len(queue) == 2


def test_shutdown_denies_new_leases() -> None:
    controller = TaskAdmissionController({"submission": 1, "local": 1})
    controller.shutdown()
    denied = controller.try_acquire(_item(0))
    assert isinstance(denied, TaskAdmissionDenied)
    assert denied.reason is TaskDenialReason.SHUTDOWN


def test_a_granted_lease_has_every_field_and_a_copy_of_it_is_not_live() -> None:
    controller = TaskAdmissionController({"submission": 2, "local": 2})
    lease = controller.try_acquire(_item(0))
    assert isinstance(lease, TaskAdmissionLease)
    for spec in dataclasses.fields(TaskAdmissionLease):
        getattr(lease, spec.name)  # set although ``try_acquire`` bypasses ``__init__``
    assert lease.item is not None and lease.task_id == lease.item.task_id
    assert not lease.released and lease.amounts == lease.item.request.amounts
    twin = copy.copy(lease)
    assert controller.release(twin).status is ReleaseStatus.UNKNOWN
    assert controller.view().active_leases == 1
    assert controller.release(lease).released
    assert controller.view().active_leases == 0
    again = controller.try_acquire(_item(1))
    assert isinstance(again, TaskAdmissionLease)
    assert controller.release(lease).status is ReleaseStatus.DUPLICATE
    assert controller.release(again).released
    assert controller.view().released_total == 2
