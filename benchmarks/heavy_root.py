"""Heavy-root scenario: a slow root column feeding a fast downstream column, strict vs borrow.

A discrete-event simulation on a virtual clock drives the real ready queue and task admission
controller: every root task (simulated model call, ``--root-seconds`` with seeded jitter) is ready
at t=0; a row's downstream task (``--downstream-seconds``) becomes ready when its root completes.
Both columns share the ``submission`` limit. Reports the time to the first downstream dispatch and
the p50 / p95 / max ready-to-dispatch gap of downstream tasks, per policy. Virtual time makes the
figures independent of the machine.

    .venv/bin/python benchmarks/heavy_root.py --rows 400 --limit 16
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
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


def _entry(column: str, row: int) -> QueueEntry[SchedulableTask]:
    item = SchedulableTask(
        make_task(0, column, 0, row, TaskKind.CELL), TaskGroupSpec(key=column, weight=1), REQUEST
    )
    return QueueEntry(
        item_id=item.task_id, group=column, weight=1, item=item, demand=REQUEST.amounts
    )


def simulate(
    policy: TaskAdmissionPolicy,
    *,
    rows: int,
    limit: int,
    root_seconds: float,
    downstream_seconds: float,
    seed: int,
) -> dict[str, float]:
    rng = random.Random(seed)
    queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
    controller = TaskAdmissionController({"submission": limit}, policy=policy)
    view = queue.view()
    queue.enqueue(_entry("root", row) for row in range(rows))
    ready_at: dict[int, float] = {}
    gaps: list[float] = []
    first_downstream: float | None = None
    # (completion time, sequence, column, row, lease)
    running: list[tuple[float, int, str, int, TaskAdmissionLease]] = []
    now = 0.0
    sequence = 0
    while True:
        while (selection := controller.select_next(queue)) is not None:
            item = selection.entry.item
            lease = controller.try_acquire(item, view)
            assert isinstance(lease, TaskAdmissionLease)
            assert queue.commit(selection) is item
            column, row = item.group.key, item.task.row_index
            assert row is not None
            if column == "root":
                latency = root_seconds * rng.uniform(0.5, 1.5)
            else:
                latency = downstream_seconds * rng.uniform(0.5, 1.5)
                gaps.append(now - ready_at[row])
                if first_downstream is None:
                    first_downstream = now
            sequence += 1
            heapq.heappush(running, (now + latency, sequence, column, row, lease))
        if not running:
            break
        now, _, column, row, lease = heapq.heappop(running)
        assert controller.release(lease).released
        if column == "root":
            ready_at[row] = now
            queue.enqueue([_entry("downstream", row)])
    assert len(gaps) == rows
    assert controller.active_leases == 0
    gaps.sort()
    return {
        "first_downstream_s": first_downstream or 0.0,
        "gap_p50_s": statistics.median(gaps),
        "gap_p95_s": gaps[int(0.95 * (len(gaps) - 1))],
        "gap_max_s": gaps[-1],
        "makespan_s": now,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--root-seconds", type=float, default=2.0)
    parser.add_argument("--downstream-seconds", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print("policy          first_downstream_s  gap_p50_s  gap_p95_s  gap_max_s  makespan_s")
    for name, policy in (
        ("bounded_borrow", BoundedBorrowTaskAdmissionPolicy()),
        ("strict_fair", StrictFairTaskAdmissionPolicy()),
    ):
        result = simulate(
            policy,
            rows=args.rows,
            limit=args.limit,
            root_seconds=args.root_seconds,
            downstream_seconds=args.downstream_seconds,
            seed=args.seed,
        )
        print(
            f"{name:<15} {result['first_downstream_s']:>18.3f} {result['gap_p50_s']:>10.3f} "
            f"{result['gap_p95_s']:>10.3f} {result['gap_max_s']:>10.3f} "
            f"{result['makespan_s']:>11.3f}"
        )


if __name__ == "__main__":
    main()
