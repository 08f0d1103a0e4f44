"""One weighted-fair queue, used for ready tasks and for request waiters (SPEC §5.1, §6.2).

Start-time fair queueing with virtual time ``V``: a group that becomes backlogged starts at
``S = max(V, F_last)``; dispatching its head sets ``V = S`` and ``F_last = S + 1 / weight``; the
group's next head starts at ``F_last``. The backlogged group with the smallest start tag goes first
(ties: the group that became backlogged earlier), FIFO within a group. Selection is ``O(log G)``
for ``G`` backlogged groups and independent of the number of queued items, plus ``O(log G)`` per
group skipped because its head is ineligible.

``select_next`` does not change the logical state; ``commit`` is the only removal and refuses a
selection made before any later change (``sequence_version``).

Parking (an index, not logical state): ``select_next_or_park`` lets the judge answer ``PARK`` for
a head that stays ineligible until someone calls ``unpark`` / ``unpark_all``. A parked group
keeps its tags and tie order but leaves the heap, so later selections do not visit it again. The
queue itself unparks a group when its head changes and every group when the demand shape changes
(which groups demand which resource, or a group's weight). Invariant the caller keeps: a parked
group's head is ineligible; then the selection equals the one that evaluates every head.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from sluiceway.errors import EngineError

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueEntry(Generic[T]):
    """An item offered to the queue: unique ``item_id``, fairness ``group`` and its ``weight``."""

    item_id: Hashable
    group: Hashable
    weight: float
    item: T
    demand: Mapping[str, int] | None = None


class HeadVerdict(enum.Enum):
    """A judge's answer for one group head in :meth:`WeightedFairQueue.select_next_or_park`."""

    ELIGIBLE = "eligible"
    INELIGIBLE = "ineligible"  # skip now, ask again at the next selection
    PARK = "park"  # skip until the group is unparked (see the module docstring)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSelection(Generic[T]):
    """The head that ``select_next`` proposes; valid until the queue changes."""

    entry: QueueEntry[T]
    sequence_version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStatistics:
    queued: int
    backlogged_groups: int
    enqueued_total: int
    duplicates_ignored: int
    committed_total: int
    stale_commits: int
    removed_total: int
    virtual_time: float
    parked_groups: int = 0


class _Group(Generic[T]):
    __slots__ = (
        "demand",
        "entries",
        "finish_tag",
        "heap_seq",
        "heap_token",
        "key",
        "parked",
        "start_tag",
        "weight",
    )

    def __init__(self, key: Hashable, weight: float) -> None:
        self.key = key
        self.weight = weight
        self.entries: deque[QueueEntry[T]] = deque()
        self.start_tag = 0.0
        self.finish_tag = 0.0
        self.heap_token = 0
        self.heap_seq = 0  # tie-break order of the group's live heap entry
        self.parked = False  # out of the heap until unparked; has entries while parked
        self.demand: dict[str, int] = {}


class QueueView(Generic[T]):
    """Read-only live view of a :class:`WeightedFairQueue` (no copy is made)."""

    __slots__ = ("_queue",)

    def __init__(self, queue: WeightedFairQueue[T]) -> None:
        self._queue = queue

    @property
    def queued_total(self) -> int:
        return len(self._queue._ids)

    def queued_in_group(self, group: Hashable) -> int:
        state = self._queue._groups.get(group)
        return len(state.entries) if state else 0

    def backlogged_groups(self) -> Iterator[Hashable]:
        return (key for key, state in self._queue._groups.items() if state.entries)

    def demand(self, group: Hashable, resource: str) -> int:
        state = self._queue._groups.get(group)
        return state.demand.get(resource, 0) if state else 0

    def first_candidate(self, group: Hashable) -> QueueEntry[T] | None:
        state = self._queue._groups.get(group)
        return state.entries[0] if state and state.entries else None

    def demand_weight(self, resource: str) -> float:
        """Total weight of the groups with queued demand for ``resource`` (kept incrementally)."""
        return self._queue._demand_weight.get(resource, 0.0)

    @property
    def version(self) -> int:
        """Changes whenever the queue changes; a cache key for values derived from the view."""
        return self._queue._version

    @property
    def demand_shape_version(self) -> int:
        """Changes when a group starts or stops demanding a resource, or changes its weight."""
        return self._queue._shape_version

    def has_other_backlogged_group(self, group: Hashable) -> bool:
        groups = self._queue._groups
        backlogged = self._queue._backlogged
        if group in groups and groups[group].entries:
            return backlogged > 1
        return backlogged > 0


class WeightedFairQueue(Generic[T]):
    """Weighted fair order across groups, FIFO within a group, idempotent by ``item_id``."""

    def __init__(self) -> None:
        self._groups: dict[Hashable, _Group[T]] = {}
        self._ids: dict[Hashable, Hashable] = {}  # item_id -> group key, for dedup and removal
        self._heap: list[tuple[float, int, int, Hashable]] = []  # (start tag, seq, token, group)
        self._backlogged = 0
        self._virtual_time = 0.0
        self._seq = 0
        self._version = 0
        self._enqueued_total = 0
        self._duplicates = 0
        self._committed = 0
        self._stale = 0
        self._removed = 0
        # resource -> total weight of groups with queued demand for it (for weighted shares).
        self._demand_weight: dict[str, float] = {}
        self._shape_version = 0
        self._shape_changed = False
        self._parked: set[Hashable] = set()
        self._view = QueueView(self)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: Hashable) -> bool:
        return item_id in self._ids

    def enqueue(self, entries: Iterable[QueueEntry[T]]) -> list[Hashable]:
        """Add entries not already queued; return the ids accepted (duplicates are ignored)."""
        accepted: list[Hashable] = []
        for entry in entries:
            if entry.item_id in self._ids:
                self._duplicates += 1
                continue
            if entry.weight <= 0:
                raise EngineError(f"queue weight must be > 0, got {entry.weight!r}")
            group = self._groups.get(entry.group)
            if group is None:
                group = _Group(entry.group, entry.weight)
                self._groups[entry.group] = group
            if group.weight != entry.weight:
                for resource in group.demand:
                    self._demand_weight[resource] += entry.weight - group.weight
                group.weight = entry.weight
                self._shape_changed = True
            was_idle = not group.entries
            group.entries.append(entry)
            if entry.demand:
                for resource, amount in entry.demand.items():
                    if not amount:
                        continue
                    before = group.demand.get(resource, 0)
                    if not before:
                        weights = self._demand_weight
                        weights[resource] = weights.get(resource, 0.0) + group.weight
                        self._shape_changed = True
                    group.demand[resource] = before + amount
            self._ids[entry.item_id] = entry.group
            accepted.append(entry.item_id)
            if was_idle:
                self._backlogged += 1
                group.start_tag = max(self._virtual_time, group.finish_tag)
                self._push(group)
        if accepted:
            self._enqueued_total += len(accepted)
            self._version += 1
        self._note_shape_change()
        return accepted

    def select_next(
        self, is_eligible: Callable[[QueueEntry[T]], bool] | None = None
    ) -> QueueSelection[T] | None:
        """Propose the fairest head whose ``is_eligible`` is true; change nothing logical.

        ``is_eligible`` knows nothing of parking, so every parked group is unparked first.
        """
        if self._parked:
            self.unpark_all()
        self._drop_stale_top()
        heap = self._heap
        if not heap:
            return None
        if is_eligible is None:
            return QueueSelection(
                entry=self._groups[heap[0][3]].entries[0], sequence_version=self._version
            )
        # Walk the heap in order without popping it: a small heap of indices.
        frontier: list[tuple[float, int, int]] = [(heap[0][0], heap[0][1], 0)]
        while frontier:
            _, _, index = heapq.heappop(frontier)
            _start, _seq, token, key = heap[index]
            group = self._groups[key]
            if group.heap_token == token and group.entries:
                head = group.entries[0]
                if is_eligible(head):
                    return QueueSelection(entry=head, sequence_version=self._version)
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child][0], heap[child][1], child))
        return None

    def select_next_or_park(
        self, judge: Callable[[QueueEntry[T]], HeadVerdict]
    ) -> QueueSelection[T] | None:
        """Like ``select_next``, but a head judged ``PARK`` takes its group out of the heap.

        Parked groups are not visited again until unparked, so a run of groups that stay
        ineligible costs one visit each instead of one per selection. Changes nothing logical.
        """
        self._drop_stale_top()
        heap = self._heap
        if not heap:
            return None
        groups = self._groups
        frontier: list[tuple[float, int, int]] = [(heap[0][0], heap[0][1], 0)]
        size = len(heap)
        while frontier:
            _, _, index = heapq.heappop(frontier)
            _start, _seq, token, key = heap[index]
            group = groups[key]
            if group.heap_token == token and group.entries:
                head = group.entries[0]
                verdict = judge(head)
                if verdict is HeadVerdict.ELIGIBLE:
                    return QueueSelection(entry=head, sequence_version=self._version)
                if verdict is HeadVerdict.PARK:
                    group.heap_token += 1  # its heap entry goes stale; unpark pushes a new one
                    group.parked = True
                    self._parked.add(key)
            child = 2 * index + 1
            if child < size:
                heapq.heappush(frontier, (heap[child][0], heap[child][1], child))
                child += 1
                if child < size:
                    heapq.heappush(frontier, (heap[child][0], heap[child][1], child))
        return None

    def unpark(self, group: Hashable) -> None:
        """Put a parked group back in the heap with its tags and tie order; no-op otherwise."""
        state = self._groups.get(group)
        if state is None or not state.parked:
            return
        self._parked.discard(group)
        self._restore(state)

    def unpark_all(self) -> None:
        """Put every parked group back in the heap."""
        if not self._parked:
            return
        groups = self._groups
        for key in self._parked:
            self._restore(groups[key])
        self._parked.clear()

    def is_parked(self, group: Hashable) -> bool:
        state = self._groups.get(group)
        return state is not None and state.parked

    @property
    def parked_count(self) -> int:
        return len(self._parked)

    def commit(self, selection: QueueSelection[T]) -> T | None:
        """Remove the selected head; return ``None`` for a stale selection (nothing changes)."""
        if selection.sequence_version != self._version:
            self._stale += 1
            return None
        entry = selection.entry
        group = self._groups[entry.group]
        if not group.entries or group.entries[0] is not entry:
            raise EngineError("a selection of the current version is not its group's head")
        group.entries.popleft()
        self._forget(group, entry)
        self._clear_parked(group)  # its head changes
        self._virtual_time = max(self._virtual_time, group.start_tag)
        group.finish_tag = group.start_tag + 1.0 / group.weight
        group.heap_token += 1  # invalidates the group's heap entry
        if group.entries:
            group.start_tag = group.finish_tag
            self._push(group)
        else:
            self._backlogged -= 1
        self._committed += 1
        self._version += 1
        self._note_shape_change()
        return entry.item

    def remove(self, item_id: Hashable) -> T | None:
        """Withdraw a queued item (e.g. its row was dropped); ``None`` if it is not queued."""
        key = self._ids.get(item_id)
        if key is None:
            return None
        group = self._groups[key]
        entry = next(e for e in group.entries if e.item_id == item_id)
        was_head = group.entries[0] is entry
        group.entries.remove(entry)
        self._forget(group, entry)
        if was_head or not group.entries:
            self._clear_parked(group)
        if not group.entries:
            group.heap_token += 1
            self._backlogged -= 1
        elif was_head:
            group.heap_token += 1
            self._push(group)
        self._removed += 1
        self._version += 1
        self._note_shape_change()
        return entry.item

    def view(self) -> QueueView[T]:
        return self._view

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            queued=len(self._ids),
            backlogged_groups=self._backlogged,
            enqueued_total=self._enqueued_total,
            duplicates_ignored=self._duplicates,
            committed_total=self._committed,
            stale_commits=self._stale,
            removed_total=self._removed,
            virtual_time=self._virtual_time,
            parked_groups=len(self._parked),
        )

    def _forget(self, group: _Group[T], entry: QueueEntry[T]) -> None:
        del self._ids[entry.item_id]
        if entry.demand:
            for resource, amount in entry.demand.items():
                if not amount:
                    continue
                left = group.demand[resource] - amount
                if left:
                    group.demand[resource] = left
                else:
                    del group.demand[resource]
                    self._shape_changed = True
                    weight_left = self._demand_weight[resource] - group.weight
                    # Float sums of integer weights stay exact; clear residue from odd weights.
                    if abs(weight_left) < 1e-9:
                        del self._demand_weight[resource]
                    else:
                        self._demand_weight[resource] = weight_left

    def _note_shape_change(self) -> None:
        """After a change: a new demand shape may make any parked head eligible again."""
        if self._shape_changed:
            self._shape_changed = False
            self._shape_version += 1
            self.unpark_all()

    def _clear_parked(self, group: _Group[T]) -> None:
        """Forget that ``group`` is parked; the caller pushes it back if it stays backlogged."""
        if group.parked:
            group.parked = False
            self._parked.discard(group.key)

    def _restore(self, group: _Group[T]) -> None:
        group.parked = False
        # Same start tag and tie-break sequence as before parking: the order is unchanged.
        heapq.heappush(self._heap, (group.start_tag, group.heap_seq, group.heap_token, group.key))

    def _push(self, group: _Group[T]) -> None:
        self._seq += 1
        group.heap_seq = self._seq
        heapq.heappush(self._heap, (group.start_tag, self._seq, group.heap_token, group.key))
        if len(self._heap) > 2 * self._backlogged + 16:
            self._compact()

    def _compact(self) -> None:
        """Rebuild the heap from the live entries only. Stale entries pile up below a head that
        stays ineligible (it is never popped); compaction keeps the heap O(G), amortized O(1)."""
        self._heap = [
            (group.start_tag, group.heap_seq, group.heap_token, group.key)
            for group in self._groups.values()
            if group.entries and not group.parked
        ]
        heapq.heapify(self._heap)

    def _drop_stale_top(self) -> None:
        heap = self._heap
        groups = self._groups
        while heap:
            _, _, token, key = heap[0]
            group = groups[key]
            if group.heap_token == token and group.entries:
                return
            heapq.heappop(heap)
