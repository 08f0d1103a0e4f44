"""Microbenchmark of one dispatch cycle: select_next + try_acquire + commit + release.

Run: ``.venv/bin/python benchmarks/dispatch_cycle.py``. For each queued depth and group count it
keeps the queue at that depth (one new task enqueued per cycle, outside the timed part), times
cycles with ``perf_counter_ns`` and prints p50 and p95 in microseconds, for both policies.
"""

from __future__ import annotations

import statistics
import time
from types import MappingProxyType

from sluiceway.fair_queue import QueueEntry, WeightedFairQueue
from sluiceway.scheduling.admission import TaskAdmissionController, TaskAdmissionLease
from sluiceway.scheduling.policies import (
    BoundedBorrowTaskAdmissionPolicy,
    StrictFairTaskAdmissionPolicy,
    TaskAdmissionPolicy,
)
from sluiceway.scheduling.tasks import (
    SchedulableTask,
    SchedulerResourceRequest,
    TaskGroupSpec,
    TaskKind,
    make_task,
)

REQUEST = SchedulerResourceRequest(amounts=MappingProxyType({"submission": 1}))


def _entry(n: int, groups: int) -> QueueEntry[SchedulableTask]:
    group = n % groups
    item = SchedulableTask(
        make_task(0, f"c{group}", 0, n, TaskKind.CELL),
        TaskGroupSpec(key=f"g{group}", weight=1 + group % 4),
        REQUEST,
    )
    return QueueEntry(
        item_id=item.task_id,
        group=item.group.key,
        weight=item.group.weight,
        item=item,
        demand=REQUEST.amounts,
    )


def measure(
    queued: int, groups: int, policy: TaskAdmissionPolicy, cycles: int
) -> tuple[float, float]:
    queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
    queue.enqueue(_entry(n, groups) for n in range(queued))
    controller = TaskAdmissionController({"submission": 64}, policy=policy)
    view = queue.view()
    # Background leases so that shares and debt are exercised (half the limit held).
    held = []
    for n in range(32):
        lease = controller.try_acquire(_entry(queued + 10**7 + n, groups).item, view)
        assert isinstance(lease, TaskAdmissionLease)
        held.append(lease)

    samples: list[int] = []
    next_id = queued
    for _ in range(cycles):
        start = time.perf_counter_ns()
        selection = controller.select_next(queue)
        assert selection is not None
        lease = controller.try_acquire(selection.entry.item, view)
        assert isinstance(lease, TaskAdmissionLease)
        queue.commit(selection)
        controller.release(lease)
        samples.append(time.perf_counter_ns() - start)
        queue.enqueue([_entry(next_id, groups)])
        next_id += 1
    samples.sort()
    p50 = statistics.median(samples) / 1000
    p95 = samples[int(0.95 * len(samples))] / 1000
    return p50, p95


def main() -> None:
    print("policy          queued  groups   p50_us   p95_us")
    for name, make in (
        ("bounded_borrow", BoundedBorrowTaskAdmissionPolicy),
        ("strict_fair", StrictFairTaskAdmissionPolicy),
    ):
        for queued in (1_000, 10_000, 100_000):
            for groups in (1, 8, 64, 256):
                p50, p95 = measure(queued, groups, make(), cycles=5_000)
                print(f"{name:<15} {queued:>6} {groups:>7} {p50:>8.1f} {p95:>8.1f}")


if __name__ == "__main__":
    main()
