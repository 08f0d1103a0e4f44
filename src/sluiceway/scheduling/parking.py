"""Which parked task groups a change of contention may admit again (task admission's index).

The controller parks a group in the ready queue when the policy denies its head with a stable
denial. The denial says what could lift it (``PolicyDecision.level_bound``, SPEC §5.2):

- a bound ``t`` on resource ``r``: the denial stands while the group's own head, leases and debt
  are unchanged, another group has queued demand for ``r``, and the *fair level*
  ``level(r) = (limit(r) - held_outside(r)) / queued_demand_weight(r)`` stays ``<= t``;
- no bound: any change of contention (demand shape, amount held outside the contenders) may
  lift it.

The index keeps bounded groups in one heap per resource, ordered by ``t``, and the others in a
set. After contention changed, ``due`` returns the groups that may be admissible again: every
unbounded one, and per resource those with ``t`` below the new level (all of them once pressure
on ``r`` may have gone). Each group costs ``O(log P)`` when parked and when returned; a change
that lifts nothing costs ``O(1)`` per resource. A group's own changes are the controller's
business (it unparks the group directly); stale records are harmless: unparking a group that is
not parked does nothing.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable


class ParkingIndex:
    """Parked groups by what may lift their denial. Not thread-safe; no I/O."""

    __slots__ = ("_heaps", "_max_weight", "_next", "_records", "_unbounded")

    def __init__(self) -> None:
        # resource -> heap of (bound, record, group)
        self._heaps: dict[str, list[tuple[float, int, Hashable]]] = {}
        # resource -> largest weight of a group parked on it (for "pressure may have gone")
        self._max_weight: dict[str, float] = {}
        self._unbounded: dict[Hashable, int] = {}  # group -> record
        self._records: dict[Hashable, int] = {}  # group -> its latest record
        self._next = 0

    def __len__(self) -> int:
        return len(self._unbounded) + sum(len(heap) for heap in self._heaps.values())

    def record(
        self, group: Hashable, resource: str | None, bound: float | None, weight: float
    ) -> None:
        """``group`` is being parked on a denial on ``resource`` with ``bound`` (or none)."""
        self._next += 1
        record = self._next
        self._records[group] = record
        if bound is None or resource is None:
            self._unbounded[group] = record
            return
        heap = self._heaps.get(resource)
        if heap is None:
            heap = self._heaps[resource] = []
        heapq.heappush(heap, (bound, record, group))
        if weight > self._max_weight.get(resource, 0.0):
            self._max_weight[resource] = weight
        if len(heap) > 2 * len(self._records) + 16:
            self._compact(resource)

    def clear(self) -> None:
        if self._records:  # empty: nothing was recorded since the last clear
            self._heaps.clear()
            self._max_weight.clear()
            self._unbounded.clear()
            self._records.clear()

    def due(self, level: Callable[[str, float], float | None]) -> list[Hashable]:
        """Groups whose denial contention may have lifted; they leave the index.

        ``level(resource, weight)`` is the fair level of ``resource`` now, or ``None`` when a
        group of ``weight`` demanding it may have no peer left (pressure gone).
        """
        records = self._records
        found = [group for group, record in self._unbounded.items() if records[group] == record]
        self._unbounded.clear()
        for resource, heap in self._heaps.items():
            if not heap:
                continue
            now = level(resource, self._max_weight.get(resource, 0.0))
            if now is None:
                found.extend(group for _, record, group in heap if records[group] == record)
                heap.clear()
                self._max_weight.pop(resource, None)
                continue
            # No slack: bounds and levels are quotients of integers (amounts, integer group
            # weights), each rounded once, so the float order is the exact order, ties included.
            # A slack would re-evaluate, at every change, the groups that sit exactly at the level.
            while heap and heap[0][0] < now:
                _, record, group = heapq.heappop(heap)
                if records[group] == record:
                    found.append(group)
        return found

    def _compact(self, resource: str) -> None:
        records = self._records
        heap = [entry for entry in self._heaps[resource] if records[entry[2]] == entry[1]]
        heapq.heapify(heap)
        self._heaps[resource] = heap
