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
queue itself unparks a group when its head changes. When the demand shape changes (which groups
demand which resource, or a group's weight) it unparks every group, unless a demand watcher
(``watch_demand``) is set: then it reports each change to the watcher, which unparks what the
change may have made eligible (after the operation, at the latest before its next selection).
Invariant the caller keeps: when it selects, a parked group's head is ineligible; then the
selection equals the one that evaluates every head.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

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


class DemandWatcher(Protocol):
    """Told of every demand-shape change of a queue (:meth:`WeightedFairQueue.watch_demand`)."""

    def demand_changed(
        self, group: Hashable, resource: str, old_weight: float, new_weight: float
    ) -> None:
        """``group`` started (``old_weight == 0``) or stopped (``new_weight == 0``) demanding
        ``resource``, or its weight changed. Runs inside the queue operation, after the queue's
        own demand state was updated; it must not call the queue."""

    def shape_changed(self) -> None:
        """The operation that changed the shape is complete; the queue may be used again (a
        watcher may unpark here, or before its next selection, what the new shape may have made
        eligible)."""


class HeadVerdict(enum.Enum):
    """A judge's answer for one group head in :meth:`WeightedFairQueue.select_next_or_park`."""

    ELIGIBLE = "eligible"
    INELIGIBLE = "ineligible"  # skip now, ask again at the next selection
    PARK = "park"  # skip until the group is unparked (see the module docstring)


class QueueSelection(NamedTuple, Generic[T]):
    """The head that ``select_next`` proposes; valid until the queue changes.

    A named tuple rather than a frozen dataclass: one is built per dispatch, and a tuple is the
    cheapest immutable value to build."""

    entry: QueueEntry[T]
    sequence_version: int


# ``tuple.__new__`` called directly: the generated ``QueueSelection.__new__`` is a Python frame
# more, on every dispatch.
_new_selection: Callable[[type[QueueSelection[Any]], tuple[Any, int]], QueueSelection[Any]] = (
    tuple.__new__
)


class DemandTables(NamedTuple):
    """Live read-only tables of a queue's demand (:meth:`QueueView.demand_tables`)."""

    by_group: Mapping[Hashable, Mapping[str, int]]
    weight: Mapping[str, float]


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


# A heap entry: (start tag, tie-break sequence, group). Sequences are unique, so comparisons
# never reach the group. An entry is live while it *is* its group's ``heap_entry``.
_HeapEntry = tuple[float, int, "_Group[Any]"]

# ``_Group.shared`` when its queued entries do not all have one demand object (or it has none).
_MIXED: Any = object()


class _Group(Generic[T]):
    __slots__ = (
        "demand",
        "entries",
        "finish_tag",
        "heap_entry",
        "heap_seq",
        "key",
        "parked",
        "shared",
        "start_tag",
        "tag_step",
        "weight",
    )

    def __init__(self, key: Hashable, weight: float) -> None:
        self.key = key
        self.weight = weight
        self.tag_step = 1.0 / weight  # finish tag = start tag + 1 / weight
        self.entries: deque[QueueEntry[T]] = deque()
        self.start_tag = 0.0
        self.finish_tag = 0.0
        # The group's live heap entry; ``None`` while it has no entries or is parked. Any other
        # heap entry naming the group is stale (dropped when it reaches the top).
        self.heap_entry: _HeapEntry | None = None
        self.heap_seq = 0  # tie-break order of its heap entry when it was parked
        self.parked = False  # out of the heap until unparked; has entries while parked
        # Its queued demand: a resource is a key exactly while some queued entry asks for an
        # amount > 0 of it. One dict for the group's life (never rebound). The values are the
        # queued amounts while ``shared`` is ``_MIXED``; otherwise every queued entry has the
        # demand ``shared`` (the same object) and an amount is ``len(entries) * shared[r]``:
        # then a commit or enqueue that keeps the group backlogged changes no demand at all.
        self.demand: dict[str, int] = {}
        self.shared: Mapping[str, int] | None = _MIXED

    def queued_demand(self, resource: str) -> int:
        """The amount of ``resource`` its queued entries ask for."""
        if self.shared is _MIXED:
            return self.demand.get(resource, 0)
        if resource not in self.demand:
            return 0
        assert self.shared is not None  # a key is set: the shared demand asks for it
        return len(self.entries) * self.shared[resource]

    def unshare(self) -> None:
        """Its entries stop sharing one demand: make the values of ``demand`` the amounts."""
        shared = self.shared
        if shared is not _MIXED:
            self.shared = _MIXED
            if shared:
                count = len(self.entries)
                for resource in self.demand:
                    self.demand[resource] = count * shared[resource]


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
        return state.queued_demand(resource) if state else 0

    def first_candidate(self, group: Hashable) -> QueueEntry[T] | None:
        state = self._queue._groups.get(group)
        return state.entries[0] if state and state.entries else None

    def demand_weight(self, resource: str) -> float:
        """Total weight of the groups with queued demand for ``resource`` (kept incrementally)."""
        return self._queue._demand_weight.get(resource, 0.0)

    def demanding_groups(self, resource: str) -> int:
        """How many groups have queued demand for ``resource`` (kept incrementally)."""
        return self._queue._demand_groups.get(resource, 0)

    def demand_tables(self) -> DemandTables:
        """The live tables behind ``demand`` and ``demand_weight``, for readers on a hot path:
        ``group -> resources`` (a resource is a key exactly while the group has queued demand
        for it; the values are not the amounts, read those with ``demand``) and
        ``resource -> total weight`` of the groups with queued demand. The same dicts for the
        queue's life, updated in place; read them, never write them."""
        queue = self._queue
        return DemandTables(queue._group_demand, queue._demand_weight)

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
        self._heap: list[_HeapEntry] = []
        self._backlogged = 0
        self._virtual_time = 0.0
        self._seq = 0
        self._version = 0
        self._enqueued_total = 0
        self._duplicates = 0
        self._stale = 0
        self._removed = 0
        # resource -> total weight / number of the groups with queued demand for it.
        self._demand_weight: dict[str, float] = {}
        self._demand_groups: dict[str, int] = {}
        # group -> the resources of its queued demand (the ``_Group.demand`` dicts themselves):
        # one lookup for readers on the dispatch path (``QueueView.demand_tables``).
        self._group_demand: dict[Hashable, dict[str, int]] = {}
        self._demand_watcher: DemandWatcher | None = None
        self._shape_version = 0
        self._shape_changed = False
        self._parked: set[Hashable] = set()
        self._view = QueueView(self)

    def __len__(self) -> int:
        return len(self._ids)

    def watch_demand(self, watcher: DemandWatcher | None) -> None:
        """Report every demand-shape change to ``watcher`` instead of unparking every group.

        ``None`` restores the default (every group is unparked on a shape change).
        """
        self._demand_watcher = watcher

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
                self._group_demand[entry.group] = group.demand
            if group.weight != entry.weight:
                old_weight = group.weight
                group.weight = entry.weight
                group.tag_step = 1.0 / entry.weight
                for resource in group.demand:
                    self._demand_weight[resource] += entry.weight - old_weight
                    if self._demand_watcher is not None:
                        self._demand_watcher.demand_changed(
                            group.key, resource, old_weight, entry.weight
                        )
                self._shape_changed = True
            was_idle = not group.entries
            demand = entry.demand
            if was_idle:
                group.shared = demand  # its demand dict is empty: the amounts of this entry
            elif demand is group.shared:
                demand = None  # amounts follow the number of entries, the resources are set
            else:
                group.unshare()
            group.entries.append(entry)
            if demand:
                for resource, amount in demand.items():
                    if not amount:
                        continue
                    if amount < 0:
                        raise EngineError(
                            f"item {entry.item_id!r} has a demand of {amount} for {resource!r}; "
                            "a demand is >= 0"
                        )
                    before = group.demand.get(resource, 0)
                    group.demand[resource] = before + amount
                    if not before:
                        weights = self._demand_weight
                        weights[resource] = weights.get(resource, 0.0) + group.weight
                        counts = self._demand_groups
                        counts[resource] = counts.get(resource, 0) + 1
                        self._shape_changed = True
                        if self._demand_watcher is not None:
                            self._demand_watcher.demand_changed(
                                group.key, resource, 0.0, group.weight
                            )
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
        top = self._live_top()
        if top is None:
            return None
        head = top.entries[0]
        if is_eligible is None or is_eligible(head):
            return _new_selection(QueueSelection, (head, self._version))
        if len(self._heap) == 1:
            return None

        def judge(entry: QueueEntry[T]) -> HeadVerdict:
            return _ELIGIBLE if is_eligible(entry) else _INELIGIBLE

        return self._walk(None, judge)

    def peek(self) -> QueueSelection[T] | None:
        """The fairest head of a group that is not parked, unjudged: what
        ``select_next_or_park`` returns when its judge finds that head eligible. Changes nothing
        logical (stale heap entries above it are dropped)."""
        heap = self._heap
        while heap:
            entry = heap[0]
            top = entry[2]
            if top.heap_entry is entry:
                return _new_selection(QueueSelection, (top.entries[0], self._version))
            heapq.heappop(heap)
        return None

    def select_next_or_park(
        self,
        judge: Callable[[QueueEntry[T]], HeadVerdict],
        judged: tuple[QueueSelection[T], HeadVerdict] | None = None,
    ) -> QueueSelection[T] | None:
        """Like ``select_next``, but a head judged ``PARK`` takes its group out of the heap.

        Parked groups are not visited again until unparked, so a run of groups that stay
        ineligible costs one visit each instead of one per selection. Changes nothing logical.
        ``judged``: a selection ``peek`` returned and the caller's verdict on it; while that
        selection is current, its head is not shown to ``judge`` again.
        """
        heap = self._heap
        while heap:  # the live top (``_live_top``, inline: this is the dispatch path)
            entry = heap[0]
            top = entry[2]
            if top.heap_entry is entry:
                break
            heapq.heappop(heap)
        else:
            return None
        head = top.entries[0]
        if (
            judged is not None
            and judged[0].entry is head
            and judged[0].sequence_version == self._version
        ):
            verdict = judged[1]
        else:
            verdict = judge(head)
        if verdict is _ELIGIBLE:
            # The common case: the fairest head may start. No walk, no frontier.
            return _new_selection(QueueSelection, (head, self._version))
        if verdict is _PARK:
            self._park(top)
        if len(heap) == 1:
            return None
        return self._walk(None, judge)

    def _walk(
        self, top: _Group[T] | None, judge: Callable[[QueueEntry[T]], HeadVerdict]
    ) -> QueueSelection[T] | None:
        """Visit the heap in tag order without popping it (a small heap of indices) until a head
        is eligible. ``top`` is the live group at index 0, or ``None`` if it was judged already."""
        heap = self._heap
        size = len(heap)
        if top is None:
            frontier: list[tuple[float, int, int]] = []
            for child in (1, 2):
                if child < size:
                    heapq.heappush(frontier, (heap[child][0], heap[child][1], child))
        else:
            frontier = [(heap[0][0], heap[0][1], 0)]
        while frontier:
            _, _, index = heapq.heappop(frontier)
            entry = heap[index]
            group = entry[2]
            if group.heap_entry is entry:
                head = group.entries[0]
                verdict = judge(head)
                if verdict is _ELIGIBLE:
                    return _new_selection(QueueSelection, (head, self._version))
                if verdict is _PARK:
                    self._park(group)
            child = 2 * index + 1
            if child < size:
                heapq.heappush(frontier, (heap[child][0], heap[child][1], child))
                child += 1
                if child < size:
                    heapq.heappush(frontier, (heap[child][0], heap[child][1], child))
        return None

    def _park(self, group: _Group[T]) -> None:
        live = group.heap_entry
        assert live is not None  # only a group in the heap is parked
        group.heap_seq = live[1]  # unpark restores this tie order
        group.heap_entry = None  # its heap entry goes stale; unpark pushes a new one
        group.parked = True
        self._parked.add(group.key)

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

    @property
    def parked_groups(self) -> AbstractSet[Hashable]:
        """The parked groups: a live read-only set (the same object for the queue's life)."""
        return self._parked

    def commit(self, selection: QueueSelection[T]) -> T | None:
        """Remove the selected head; return ``None`` for a stale selection (nothing changes)."""
        entry, version = selection
        if version != self._version:
            self._stale += 1
            return None
        group = self._groups[entry.group]
        entries = group.entries
        if not entries or entries[0] is not entry:
            raise EngineError("a selection of the current version is not its group's head")
        entries.popleft()
        del self._ids[entry.item_id]
        if group.shared is _MIXED:
            demand = entry.demand
            if demand:
                # ``_forget``'s demand bookkeeping, inline (this is the dispatch path).
                queued = group.demand
                for resource, amount in demand.items():
                    if amount:
                        left = queued[resource] - amount
                        if left:
                            queued[resource] = left
                        else:
                            self._drop_demand(group, resource)
        elif not entries:
            self._drop_shared(group)  # else the amounts follow the number of entries
        if group.parked:  # its head changes
            self._clear_parked(group)
        start = group.start_tag
        if start > self._virtual_time:
            self._virtual_time = start
        group.finish_tag = finish = start + group.tag_step
        heap = self._heap
        live = group.heap_entry
        # Usually the committed group's entry is the heap's top: replace it in one sift.
        at_top = live is not None and heap[0] is live
        if entries:
            group.start_tag = finish
            if at_top:
                self._seq = seq = self._seq + 1
                group.heap_entry = replacement = (finish, seq, group)
                heapq.heapreplace(heap, replacement)
            else:
                self._push(group)
        else:
            group.heap_entry = None
            if at_top:
                heapq.heappop(heap)
            self._backlogged -= 1
        self._version += 1
        if self._shape_changed:
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
            group.heap_entry = None
            self._backlogged -= 1
        elif was_head:
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
            # Every accepted item is queued, committed or removed.
            committed_total=self._enqueued_total - len(self._ids) - self._removed,
            stale_commits=self._stale,
            removed_total=self._removed,
            virtual_time=self._virtual_time,
            parked_groups=len(self._parked),
        )

    def _forget(self, group: _Group[T], entry: QueueEntry[T]) -> None:
        """Drop ``entry``'s id and demand; it has left ``group.entries`` already."""
        del self._ids[entry.item_id]
        if group.shared is not _MIXED:
            if not group.entries:
                self._drop_shared(group)
            return  # else the amounts follow the number of entries
        if entry.demand:
            queued = group.demand
            for resource, amount in entry.demand.items():
                if not amount:
                    continue
                left = queued[resource] - amount
                if left:
                    queued[resource] = left
                else:
                    self._drop_demand(group, resource)

    def _drop_shared(self, group: _Group[T]) -> None:
        """``group``, whose entries shared one demand, has no entries left."""
        group.shared = _MIXED
        for resource in list(group.demand):
            self._drop_demand(group, resource)

    def _drop_demand(self, group: _Group[T], resource: str) -> None:
        """``group`` has no queued demand for ``resource`` any more."""
        del group.demand[resource]
        self._shape_changed = True
        groups_left = self._demand_groups[resource] - 1
        if groups_left:
            self._demand_groups[resource] = groups_left
            self._demand_weight[resource] -= group.weight
        else:
            del self._demand_groups[resource]
            del self._demand_weight[resource]
        if self._demand_watcher is not None:
            self._demand_watcher.demand_changed(group.key, resource, group.weight, 0.0)

    def _note_shape_change(self) -> None:
        """After a change: a new demand shape may make any parked head eligible again (without a
        demand watcher, which then decides, every parked group goes back)."""
        if self._shape_changed:
            self._shape_changed = False
            self._shape_version += 1
            if self._demand_watcher is None:
                self.unpark_all()
            else:
                self._demand_watcher.shape_changed()

    def _clear_parked(self, group: _Group[T]) -> None:
        """Forget that ``group`` is parked; the caller pushes it back if it stays backlogged."""
        if group.parked:
            group.parked = False
            self._parked.discard(group.key)

    def _restore(self, group: _Group[T]) -> None:
        group.parked = False
        # Same start tag and tie-break sequence as before parking: the order is unchanged.
        group.heap_entry = entry = (group.start_tag, group.heap_seq, group)
        heapq.heappush(self._heap, entry)

    def _push(self, group: _Group[T]) -> None:
        """Give ``group`` a new live heap entry at its start tag (any older one goes stale)."""
        self._seq = seq = self._seq + 1
        group.heap_entry = entry = (group.start_tag, seq, group)
        heapq.heappush(self._heap, entry)
        if len(self._heap) > 2 * self._backlogged + 16:
            self._compact()

    def _compact(self) -> None:
        """Rebuild the heap from the live entries only. Stale entries pile up below a head that
        stays ineligible (it is never popped); compaction keeps the heap O(G), amortized O(1)."""
        heap = [group.heap_entry for group in self._groups.values() if group.heap_entry]
        heapq.heapify(heap)
        self._heap[:] = heap  # in place: a caller may hold the list

    def _live_top(self) -> _Group[T] | None:
        """The group of the heap's top entry after dropping stale entries above it."""
        heap = self._heap
        while heap:
            top = heap[0]
            group = top[2]
            if group.heap_entry is top:
                return group
            heapq.heappop(heap)
        return None


_ELIGIBLE = HeadVerdict.ELIGIBLE
_INELIGIBLE = HeadVerdict.INELIGIBLE
_PARK = HeadVerdict.PARK
