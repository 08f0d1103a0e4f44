"""Task admission: leases on scheduler resources under a pluggable policy (SPEC §5.2).

The controller owns the hard ledger of scheduler resources (limit, leased, per group) and, kept
apart from it, the policy state (borrow debt per group). A task may start only while it holds a
lease; the lease is released exactly once. ``try_acquire`` checks the ledger, asks the pure policy,
and applies the lease and the policy's ``PolicyStateDelta`` in one synchronous step. Releasing a
lease twice, one from another controller or one this controller never granted returns a
diagnostic :class:`ReleaseResult` and changes nothing; ``release`` never raises.

``select_next(queue)`` selects through the queue's parking index when the policy declares
``stable_denials``: a group whose head the policy denies is parked and not evaluated again until
a change could alter the verdict. The controller *watches* that queue: it keeps, per resource,
the amount and weight held *outside* the contenders (by groups leasing the resource without
queued demand for it) exact on every lease and demand change, so policies read them in O(1).
Invalidation: a lease acquired or released by group ``g`` unparks ``g`` (and the group of the
policy delta); the queue unparks a group whose head changes; any change of contention (demand
shape, amount held outside) lets the next ``select_next`` ask the ``ParkingIndex`` which parked
groups the new fair levels may admit, and unparks only those. Capacity and shutdown denials are
never parked.

Dispatch fast path: with a watched queue, a policy that offers ``bind`` (both built-in ones) is
bound to the live ledger and demand tables (``policies.PolicyTables``); its ``admit`` answers for
the capacity check, ``evaluate`` and ``on_acquire`` in one call. ``select_next`` judges the
queue's fairest head that way (``WeightedFairQueue.peek``) and remembers an admitted head with
the queue's version and its debt change; ``try_acquire`` of that head, while the queue's version
holds and no lease changed (every lease change and ``shutdown`` forget it), grants it without
asking the policy again. Any other call takes the full path (``_check``, then ``on_acquire``).

Events (SPEC §9.1): ``task_lease_acquired`` and ``admission_denied`` from ``try_acquire``,
``task_lease_released`` and ``release_diagnostic`` from ``release``, each built only when a sink
of the controller's ``EventBus`` listens for it.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Hashable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple, cast

from sluiceway.errors import EngineError
from sluiceway.fair_queue import (
    HeadVerdict,
    QueueEntry,
    QueueSelection,
    QueueView,
    WeightedFairQueue,
)
from sluiceway.observability.bus import EventBus
from sluiceway.observability.codes import ReleaseDiagnosticCode, TaskDenialCode
from sluiceway.observability.kinds import EventKind
from sluiceway.observability.scheduler_events import (
    AdmissionDenied,
    ReleaseDiagnostic,
    TaskLeaseAcquired,
    TaskLeaseReleased,
)
from sluiceway.scheduling.parking import ParkingIndex
from sluiceway.scheduling.policies import (
    DENIED,
    NO_CAPACITY,
    UNDECIDED,
    AdmitAnswer,
    AdmitFunction,
    BoundedBorrowTaskAdmissionPolicy,
    BoundPolicy,
    PolicyDecision,
    PolicyStateDelta,
    PolicyTables,
    TaskAdmissionPolicy,
    TaskAdmissionPolicyKind,
    TaskDenialReason,
    TaskLedgerReader,
)
from sluiceway.scheduling.tasks import SchedulableTask, SchedulerResourceRequest

__all__ = [
    "BlockedGroup",
    "ReleaseResult",
    "ReleaseStatus",
    "TaskAdmissionBlockSummary",
    "TaskAdmissionController",
    "TaskAdmissionDenied",
    "TaskAdmissionLease",
    "TaskAdmissionView",
    "TaskDenialReason",
]


class ReleaseStatus(enum.Enum):
    RELEASED = "released"
    DUPLICATE = "duplicate"  # this lease was released before
    FOREIGN = "foreign"  # another controller granted it
    UNKNOWN = "unknown"  # carries this controller's mark but was never granted by it


class ReleaseResult(NamedTuple):
    """What ``release`` did with a lease. A named tuple rather than a frozen dataclass: one is
    built per release on the dispatch path, and a tuple is the cheapest immutable value."""

    status: ReleaseStatus
    lease_id: int

    @property
    def released(self) -> bool:
        return self.status is ReleaseStatus.RELEASED


# ``tuple.__new__`` called directly: the generated ``ReleaseResult.__new__`` is a Python frame
# more, on every release.
_new_result: Callable[[type[ReleaseResult], tuple[ReleaseStatus, int]], ReleaseResult] = (
    tuple.__new__
)


@dataclass(slots=True, eq=False)
class TaskAdmissionLease:
    """Proof that a task may run. Identity-compared; never reused. ``item`` is the task it
    was granted to (events of its release name the attempt)."""

    lease_id: int
    task_id: str
    group: str
    amounts: Mapping[str, int]
    owner: int = field(repr=False)
    released: bool = False
    item: SchedulableTask | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskAdmissionDenied:
    reason: TaskDenialReason
    resource: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskAdmissionView:
    """A frozen snapshot of the ledger, the policy state and the lease counters."""

    policy: TaskAdmissionPolicyKind
    limits: Mapping[str, int]
    leased: Mapping[str, int]
    leased_by_group: Mapping[str, int]  # live leases per group
    debt_by_group: Mapping[str, int]
    active_leases: int
    acquired_total: int
    released_total: int
    diagnostics_total: int
    denials_by_reason: Mapping[TaskDenialReason, int]
    max_leased: Mapping[str, int]
    shutting_down: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockedGroup:
    """Why the head of one backlogged group cannot start now."""

    group: str
    head_task_id: str
    queued: int
    reason: TaskDenialReason
    resource: str | None
    requested: int  # amount of ``resource`` the head asks for (0 if no resource is named)
    limit: int
    leased: int  # of ``resource``, by every group
    group_leased: int  # of ``resource``, by this group
    debt: int
    detail: str

    @property
    def can_never_fit(self) -> bool:
        """The head asks for more of a resource than its whole limit."""
        return self.reason is TaskDenialReason.NO_CAPACITY and self.requested > self.limit

    def describe(self) -> str:
        text = f"group {self.group!r} ({self.queued} queued, head {self.head_task_id}): "
        text += self.reason.value
        if self.resource is not None:
            text += (
                f" on {self.resource!r} (asks {self.requested}, leased {self.leased} of limit "
                f"{self.limit}, this group holds {self.group_leased})"
            )
        if self.debt:
            text += f", debt {self.debt}"
        if self.detail:
            text += f"; {self.detail}"
        return text


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskAdmissionBlockSummary:
    """What ``explain_blocked`` found: which groups are blocked, on what, and who could start."""

    queued_total: int
    active_leases: int
    shutting_down: bool
    blocked: tuple[BlockedGroup, ...]
    admissible_groups: tuple[str, ...]

    @property
    def is_blocked(self) -> bool:
        """Work is queued and no group's head may start now."""
        return self.queued_total > 0 and not self.admissible_groups

    @property
    def is_stuck(self) -> bool:
        """Blocked with nothing in flight: no release can ever unblock it."""
        return self.is_blocked and self.active_leases == 0

    def describe(self) -> str:
        lines = [
            f"{self.queued_total} queued task(s), {self.active_leases} task lease(s) in flight"
        ]
        lines.extend(f"  - {group.describe()}" for group in self.blocked)
        return "\n".join(lines)


_owner_ids = itertools.count(1)

# The kinds checked on every grant and release (a module global is one lookup cheaper).
_LEASE_ACQUIRED = EventKind.TASK_LEASE_ACQUIRED
_LEASE_RELEASED = EventKind.TASK_LEASE_RELEASED


class _LedgerReader:
    """The live, read-only ledger a policy sees (implements ``TaskLedgerReader``). It holds the
    controller's dicts themselves (never rebound), so each read is one or two lookups."""

    __slots__ = (
        "_controller",
        "_debt",
        "_group_leased",
        "_group_weight",
        "_limits",
        "_outside_held",
        "_outside_weight",
    )

    def __init__(self, controller: TaskAdmissionController) -> None:
        self._controller = controller
        self._limits = controller._limits
        self._group_leased = controller._group_leased
        self._group_weight = controller._group_weight
        self._debt = controller._debt
        self._outside_held = controller._outside_held
        self._outside_weight = controller._outside_weight

    def limit(self, resource: str) -> int:
        return self._limits[resource]

    def leased(self, resource: str) -> int:
        return self._controller._leased[resource]

    def group_leased(self, group: str, resource: str) -> int:
        held = self._group_leased.get(group)
        return held.get(resource, 0) if held else 0

    def debt(self, group: str) -> int:
        return self._debt.get(group, 0)

    def group_weight(self, group: str) -> float | None:
        if not self._controller._group_leases.get(group):
            return None  # its entry stays while it holds nothing (``_group_leases``)
        return self._group_weight.get(group)

    def leased_only_weight(self, resource: str, queue_view: QueueView[SchedulableTask]) -> float:
        if queue_view is self._controller._watched_view:
            return self._outside_weight[resource]
        return self._scan_outside(resource, queue_view)[0]

    def leased_only_held(self, resource: str, queue_view: QueueView[SchedulableTask]) -> int:
        if queue_view is self._controller._watched_view:
            return self._outside_held[resource]
        return self._scan_outside(resource, queue_view)[1]

    def _scan_outside(
        self, resource: str, queue_view: QueueView[SchedulableTask]
    ) -> tuple[float, int]:
        """Weight and amount held by groups leasing ``resource`` without queued demand for it in
        ``queue_view`` (a view the controller does not watch: counted from scratch)."""
        weight = 0.0
        held = 0
        group_leased = self._group_leased
        for group, group_weight in self._group_weight.items():  # the groups that held leases
            amount = group_leased[group].get(resource, 0)
            if amount and queue_view.demand(group, resource) == 0:
                weight += group_weight
                held += amount
        return weight, held


class TaskAdmissionController:
    """Grants task leases against per-resource limits (``submission``, ``local``) and a policy.

    Nothing here blocks or awaits. ``try_acquire`` and ``release`` are synchronous steps;
    ``shutdown`` denies every later acquisition while outstanding leases can still be released.
    ``events`` receives the lease events (default: a bus with no sinks, so none is built).
    """

    def __init__(
        self,
        limits: Mapping[str, int],
        *,
        policy: TaskAdmissionPolicy | None = None,
        events: EventBus | None = None,
    ) -> None:
        for resource, limit in limits.items():
            if limit < 1:
                raise EngineError(
                    f"scheduler resource {resource!r} needs a limit >= 1, got {limit}"
                )
        self._policy: TaskAdmissionPolicy = policy or BoundedBorrowTaskAdmissionPolicy()
        self._events = events if events is not None else EventBus()
        self._owner = next(_owner_ids)
        # Hard ledger.
        self._limits = dict(limits)
        self._leased = dict.fromkeys(limits, 0)
        self._max_leased = dict.fromkeys(limits, 0)
        self._group_leased: dict[str, dict[str, int]] = {}  # amounts > 0 only; may be empty
        # Live leases and weight per group. A group's entries stay once it held a lease (0 live
        # leases: it holds nothing): groups are few and reused, and a dict whose keys come and go
        # on every dispatch fills with deleted slots and is rebuilt every few dozen dispatches.
        self._group_leases: dict[str, int] = {}
        self._group_weight: dict[str, float] = {}  # meaningful while the group holds leases
        self._live: dict[int, TaskAdmissionLease] = {}
        # Policy state, apart from the ledger.
        self._debt: dict[str, int] = {}
        # Counters (every lease granted is live or released: released = acquired - live).
        self._acquired = 0  # also the id of the last lease granted
        self._diagnostics = 0
        self._denials: dict[TaskDenialReason, int] = {}
        self._shutting_down = False
        self._empty_view: QueueView[SchedulableTask] = WeightedFairQueue[SchedulableTask]().view()
        # The watched queue: the one ``select_next`` parks groups in. For it, the amount and
        # weight held outside the contenders of each resource are kept exact incrementally.
        self._parking_queue: WeightedFairQueue[SchedulableTask] | None = None
        self._watched_view: QueueView[SchedulableTask] | None = None
        self._outside_held = dict.fromkeys(limits, 0)
        self._outside_weight = dict.fromkeys(limits, 0.0)
        self._contention_version = 0  # moves when demand shape or the outside amounts move
        # The queue ``select_next`` may select in at once: it is watched, nothing is shut down
        # and the parked groups were looked at since contention last moved (else ``None``).
        self._ready_queue: WeightedFairQueue[SchedulableTask] | None = None
        self._parking = ParkingIndex()
        self._parking_checked = 0  # the contention version the parked groups were checked at
        self._watcher = _DemandWatcher(self)
        self._stable_denials = bool(getattr(self._policy, "stable_denials", False))
        self._reader = _LedgerReader(self)
        # The watched queue's live tables (set by ``_watch``): its demand per group and its
        # parked groups. Until a queue is watched, an empty one stands in: no group has queued
        # demand, so everything held counts as held outside (recounted when one is watched).
        self._watched_queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
        self._queued_demand: Mapping[Hashable, Mapping[str, int]] = {}
        self._parked_groups: AbstractSet[Hashable] = frozenset()
        # The policy bound to the ledger and the watched queue (``policies`` module docstring),
        # or ``None``: then ``evaluate`` / ``on_acquire`` / ``on_release`` are asked every time.
        self._bound: BoundPolicy | None = None
        self._admit: AdmitFunction | None = None  # ``self._bound.admit``, one lookup less
        self._judge_head = self._judge  # one bound method, not one per selection
        # The last head ``select_next`` found admissible, with the queue's version then and (with
        # a bound policy) the debt change ``on_acquire`` returns then. ``evaluate`` and
        # ``on_acquire`` are pure: both hold while the queue's version stays and the ledger does
        # not change (every lease change and ``shutdown`` clear ``_admitted_item``).
        self._admitted_item: SchedulableTask | None = None
        self._admitted_queue_version = -1
        self._admitted_debt = UNDECIDED

    @property
    def policy(self) -> TaskAdmissionPolicy:
        return self._policy

    @property
    def events(self) -> EventBus:
        return self._events

    @property
    def ledger(self) -> TaskLedgerReader:
        """The live, read-only ledger the policy is asked with (for tests and diagnostics)."""
        return self._reader

    def has_capacity(self, request: SchedulerResourceRequest) -> bool:
        """The hard ledger alone could grant ``request`` now (policy not consulted). Raises
        ``EngineError`` for a resource this controller has no limit for."""
        leased = self._leased
        limits = self._limits
        for resource, amount in request.amounts.items():
            limit = limits.get(resource)
            if limit is None:
                raise self._unknown_resource(None, resource)
            if leased[resource] + amount > limit:
                return False
        return True

    def is_eligible(
        self, item: SchedulableTask, queue_view: QueueView[SchedulableTask] | None = None
    ) -> bool:
        if self._shutting_down or not self.has_capacity(item.request):
            return False
        view = queue_view if queue_view is not None else self._empty_view
        return self._policy.evaluate(item, view, self._reader).allowed

    def select_next(
        self, queue: WeightedFairQueue[SchedulableTask]
    ) -> QueueSelection[SchedulableTask] | None:
        """The fairest queued head that may start now (as ``queue.select_next(is_eligible)``).

        The first call with a queue makes it the watched queue (a second queue replaces it and
        unparks every group of the first). Groups denied by a policy with ``stable_denials``
        are parked in it and unparked when a change may admit them (module docstring).
        Changes nothing logical.
        """
        if queue is not self._ready_queue:
            if queue is not self._parking_queue:
                self._watch(queue)
            if self._shutting_down:
                return None
            if self._parking_checked != self._contention_version:
                self._unpark_due(queue)
            self._ready_queue = queue
        admit = self._admit
        if admit is None:
            return queue.select_next_or_park(self._judge_head)
        # ``_judge`` of the fairest head, inline (this is the dispatch path).
        selection = queue.peek()
        if selection is None:
            return None
        item = selection[0].item  # ``selection.entry``: an index is cheaper than the field
        spec = item.group
        try:
            answer = admit(spec.key, spec.weight, item.request.pairs)
        except KeyError:
            answer = _UNDECIDED_ANSWER  # a resource without a limit: ``_judge`` raises
        debt_change = answer[0]
        if debt_change >= 0:
            self._admitted_item = item
            self._admitted_queue_version = selection[1]  # ``sequence_version``
            self._admitted_debt = debt_change
            return selection
        if debt_change == NO_CAPACITY:
            return queue.select_next_or_park(self._judge_head, (selection, _INELIGIBLE))
        if debt_change == DENIED:
            if not self._stable_denials:
                return queue.select_next_or_park(self._judge_head, (selection, _INELIGIBLE))
            entry = selection[0]
            self._parking.record(entry.group, answer[1], answer[2], entry.weight)
            return queue.select_next_or_park(self._judge_head, (selection, _PARK))
        return queue.select_next_or_park(self._judge_head)  # ``_judge`` asks the policy

    def _judge(self, entry: QueueEntry[SchedulableTask]) -> HeadVerdict:
        item = entry.item
        bound = self._bound
        if bound is not None:
            spec = item.group
            try:
                debt_change, denied_on, level_bound = bound.admit(
                    spec.key, spec.weight, item.request.pairs
                )
            except KeyError:
                debt_change = UNDECIDED  # a resource without a limit: the error comes below
            if debt_change >= 0:
                self._admitted_item = item
                self._admitted_queue_version = self._watched_queue._version
                self._admitted_debt = debt_change
                return _ELIGIBLE
            if debt_change == NO_CAPACITY:
                return _INELIGIBLE
            if debt_change == DENIED:
                if not self._stable_denials:
                    return _INELIGIBLE
                self._parking.record(entry.group, denied_on, level_bound, entry.weight)
                return _PARK
        leased = self._leased
        limits = self._limits
        for resource, amount in item.request.pairs:
            limit = limits.get(resource)
            if limit is None:
                raise self._unknown_resource(item, resource)
            if leased[resource] + amount > limit:
                return _INELIGIBLE
        view = self._watched_view
        assert view is not None
        decision = self._policy.evaluate(item, view, self._reader)
        if decision.allowed:
            self._admitted_item = item
            self._admitted_queue_version = self._watched_queue._version
            self._admitted_debt = UNDECIDED
            return _ELIGIBLE
        if not self._stable_denials:
            return _INELIGIBLE
        self._parking.record(entry.group, decision.resource, decision.level_bound, entry.weight)
        return _PARK

    def try_acquire(
        self, item: SchedulableTask, queue_view: QueueView[SchedulableTask] | None = None
    ) -> TaskAdmissionLease | TaskAdmissionDenied:
        spec = item.group
        group = spec.key
        if (
            item is self._admitted_item
            and queue_view is self._watched_view
            and self._admitted_queue_version == self._watched_queue._version
        ):
            # The head ``select_next`` just judged admissible, and neither the queue nor the
            # ledger changed since: ``evaluate`` is not asked again, nor (with a bound policy)
            # ``on_acquire``. Its group is not parked: ``select_next`` judges only the heads of
            # groups in the heap, and parking is only done by a ``select_next`` that judges.
            debt_change = self._admitted_debt
            debt_group: str | None = group
            unparked = True
        else:
            view = queue_view if queue_view is not None else self._empty_view
            denied = self._check(item, view)
            if denied is not None:
                self._note_denial(item, denied)
                return denied
            debt_change = UNDECIDED
            unparked = False
        if debt_change < 0:  # ``UNDECIDED``: ask the policy
            delta = self._policy.on_acquire(
                item, queue_view if queue_view is not None else self._empty_view, self._reader
            )
            debt_change = delta.debt_change
            debt_group = delta.group
            if debt_group is not None and debt_group != group:
                self._watched_queue.unpark(debt_group)  # its policy state changes
        self._admitted_item = None  # the ledger changes: a verdict judged before is void
        weight = spec.weight
        group_leases = self._group_leases
        leases = group_leases.get(group)
        if not leases:  # the group's first live lease
            group_leases[group] = 1
            self._group_weight[group] = weight
            held = self._group_leased.get(group)
            if held is None:
                held = self._group_leased[group] = {}
        else:
            group_leases[group] = leases + 1
            held = self._group_leased[group]
            if self._group_weight[group] != weight:
                self._group_weight[group] = weight
                self._recount_outside()
        leased = self._leased
        max_leased = self._max_leased
        queued = self._queued_demand.get(group) or _NOTHING
        for resource, amount in item.request.pairs:
            now_leased = leased[resource] + amount
            leased[resource] = now_leased
            if now_leased > max_leased[resource]:
                max_leased[resource] = now_leased
            if amount:
                before = held.get(resource, 0)
                held[resource] = before + amount
                if resource not in queued:  # held outside the contenders
                    self._outside_moved(resource, amount, weight if not before else 0.0)
        if debt_change:
            self._apply_debt(debt_group, debt_change)
        if not unparked:
            parked = self._parked_groups
            if parked and group in parked:
                self._watched_queue.unpark(group)  # its leases changed
        self._acquired = lease_id = self._acquired + 1
        # ``TaskAdmissionLease(...)`` without its generated ``__init__`` (a Python frame more on
        # every dispatch): every field is set here, in declaration order.
        lease = _new_lease(TaskAdmissionLease)
        lease.lease_id = lease_id
        lease.task_id = item.task.task_id
        lease.group = group
        lease.amounts = item.request.amounts
        lease.owner = self._owner
        lease.released = False
        lease.item = item
        self._live[lease_id] = lease
        if item.traced and self._events.wants(_LEASE_ACQUIRED):
            task = item.task
            self._events.emit(
                TaskLeaseAcquired(
                    task_id=task.task_id,
                    column=task.column,
                    row_group=task.row_group,
                    group=group,
                    attempt=item.attempt,
                    lease_id=lease_id,
                )
            )
        return lease

    def release(self, lease: TaskAdmissionLease) -> ReleaseResult:
        """Return a lease's resources. Never raises; misuse yields a diagnostic result."""
        lease_id = lease.lease_id
        live = self._live
        # Only this controller's leases are live, each until its release (a copy, a lease built
        # by hand or another controller's lease is not the live one of its id).
        if live.get(lease_id) is not lease or lease.released:
            return self._diagnose(lease)
        del live[lease_id]
        lease.released = True
        self._admitted_item = None  # the ledger changes: a verdict judged before is void
        group = lease.group
        bound = self._bound
        if bound is None:
            delta = self._policy.on_release(group, self._reader)
            debt_change = delta.debt_change
            debt_group = delta.group
            if debt_group is not None and debt_group != group:
                self._watched_queue.unpark(debt_group)  # its policy state changes
        else:  # the bound policy's ``on_release``, inline
            debt_change = -1 if self._debt and group in self._debt and bound.repays_debt else 0
            debt_group = group
        held = self._group_leased[group]
        leased = self._leased
        queued = self._queued_demand.get(group) or _NOTHING
        for resource, amount in lease.amounts.items():
            leased[resource] = leased[resource] - amount
            if amount:
                left = held[resource] - amount
                if left:
                    held[resource] = left
                else:
                    del held[resource]
                if resource not in queued:  # was held outside the contenders
                    weight = self._group_weight[group]
                    self._outside_moved(resource, -amount, -weight if not left else 0.0)
        group_leases = self._group_leases
        # At 0 its entries (and its now empty amounts map) stay for its next lease.
        group_leases[group] -= 1
        if debt_change:
            self._apply_debt(debt_group, debt_change)
        parked = self._parked_groups
        if parked and group in parked:
            self._watched_queue.unpark(group)  # its leases changed
        item = lease.item
        if item is not None and item.traced and self._events.wants(_LEASE_RELEASED):
            task = item.task
            self._events.emit(
                TaskLeaseReleased(
                    task_id=task.task_id,
                    column=task.column,
                    row_group=task.row_group,
                    group=group,
                    attempt=item.attempt,
                    lease_id=lease_id,
                )
            )
        return _new_result(ReleaseResult, (_RELEASED, lease_id))

    def shutdown(self) -> None:
        """Deny every further acquisition; outstanding leases may still be released."""
        self._shutting_down = True
        self._admitted_item = None
        self._ready_queue = None

    @property
    def is_shut_down(self) -> bool:
        return self._shutting_down

    @property
    def active_leases(self) -> int:
        return len(self._live)

    def explain_blocked(self, queue_view: QueueView[SchedulableTask]) -> TaskAdmissionBlockSummary:
        """For every backlogged group, whether its head could start now and, if not, why."""
        blocked: list[BlockedGroup] = []
        admissible: list[str] = []
        for key in queue_view.backlogged_groups():
            head = queue_view.first_candidate(key)
            if head is None:
                continue
            item = head.item
            denied = self._check(item, queue_view)
            group = item.group.key
            if denied is None:
                admissible.append(group)
                continue
            resource = denied.resource
            blocked.append(
                BlockedGroup(
                    group=group,
                    head_task_id=item.task_id,
                    queued=queue_view.queued_in_group(key),
                    reason=denied.reason,
                    resource=resource,
                    requested=item.request.amounts.get(resource, 0) if resource else 0,
                    limit=self._limits.get(resource, 0) if resource else 0,
                    leased=self._leased.get(resource, 0) if resource else 0,
                    group_leased=self._reader.group_leased(group, resource) if resource else 0,
                    debt=self._debt.get(group, 0),
                    detail=denied.detail,
                )
            )
        return TaskAdmissionBlockSummary(
            queued_total=queue_view.queued_total,
            active_leases=len(self._live),
            shutting_down=self._shutting_down,
            blocked=tuple(blocked),
            admissible_groups=tuple(admissible),
        )

    def view(self) -> TaskAdmissionView:
        return TaskAdmissionView(
            policy=self._policy.kind,
            limits=MappingProxyType(dict(self._limits)),
            leased=MappingProxyType(dict(self._leased)),
            leased_by_group=MappingProxyType(
                {group: leases for group, leases in self._group_leases.items() if leases}
            ),
            debt_by_group=MappingProxyType(dict(self._debt)),
            active_leases=len(self._live),
            acquired_total=self._acquired,
            released_total=self._acquired - len(self._live),
            diagnostics_total=self._diagnostics,
            denials_by_reason=MappingProxyType(dict(self._denials)),
            max_leased=MappingProxyType(dict(self._max_leased)),
            shutting_down=self._shutting_down,
        )

    # -- internals ----------------------------------------------------------------------------

    def _check(
        self, item: SchedulableTask, queue_view: QueueView[SchedulableTask]
    ) -> TaskAdmissionDenied | None:
        if self._shutting_down:
            return TaskAdmissionDenied(reason=TaskDenialReason.SHUTDOWN)
        for resource, amount in item.request.amounts.items():
            limit = self._limits.get(resource)
            if limit is None:
                raise self._unknown_resource(item, resource)
            if self._leased[resource] + amount > limit:
                return TaskAdmissionDenied(reason=TaskDenialReason.NO_CAPACITY, resource=resource)
        decision: PolicyDecision = self._policy.evaluate(item, queue_view, self._reader)
        if decision.allowed:
            return None
        return TaskAdmissionDenied(
            reason=decision.reason or TaskDenialReason.POLICY_DENIAL,
            resource=decision.resource,
            detail=decision.detail,
        )

    def _unknown_resource(self, item: SchedulableTask | None, resource: str) -> EngineError:
        who = f"task {item.task_id}" if item is not None else "a task"
        return EngineError(
            f"{who} asks for scheduler resource {resource!r}, which has no limit; known "
            f"resources: {sorted(self._limits)}"
        )

    def _note_denial(self, item: SchedulableTask, denied: TaskAdmissionDenied) -> None:
        self._denials[denied.reason] = self._denials.get(denied.reason, 0) + 1
        if self._events.wants(EventKind.ADMISSION_DENIED):
            task = item.task
            self._events.emit(
                AdmissionDenied(
                    task_id=task.task_id,
                    column=task.column,
                    row_group=task.row_group,
                    group=item.group.key,
                    attempt=item.attempt,
                    reason=TaskDenialCode(denied.reason.value),
                )
            )

    def _diagnose(self, lease: TaskAdmissionLease) -> ReleaseResult:
        """A release that changes nothing: say why (duplicate, foreign or unknown lease)."""
        if lease.owner != self._owner:
            status = ReleaseStatus.FOREIGN
        elif lease.released:
            status = ReleaseStatus.DUPLICATE
        else:
            status = ReleaseStatus.UNKNOWN
        self._diagnostics += 1
        if self._events.wants(EventKind.RELEASE_DIAGNOSTIC):
            self._events.emit(
                ReleaseDiagnostic(
                    lease_id=lease.lease_id,
                    code=ReleaseDiagnosticCode(status.value),
                    task_id=lease.task_id,
                )
            )
        return ReleaseResult(status, lease.lease_id)

    def _apply(self, delta: PolicyStateDelta) -> None:
        self._apply_debt(delta.group, delta.debt_change)

    def _apply_debt(self, group: str | None, debt_change: int) -> None:
        """Apply a policy's debt change for ``group`` (checked against the ledger)."""
        if group is None:
            raise EngineError(
                f"policy {self._policy.kind.value} returned a debt change of "
                f"{debt_change} naming no group; a delta that changes state names its group"
            )
        debt = self._debt.get(group, 0) + debt_change
        if debt < 0 or debt > self._group_leases.get(group, 0):
            raise EngineError(
                f"policy {self._policy.kind.value} set the debt of group {group!r} to "
                f"{debt}; debt must stay between 0 and the group's live leases"
            )
        if debt:
            self._debt[group] = debt
        else:
            self._debt.pop(group, None)

    # -- the watched queue: contention aggregates and parking ---------------------------------

    def _watch(self, queue: WeightedFairQueue[SchedulableTask]) -> None:
        """Make ``queue`` the one whose contention is kept and whose groups are parked."""
        previous = self._parking_queue
        if previous is not None:
            previous.watch_demand(None)
            previous.unpark_all()
        self._parking.clear()
        self._parking_queue = queue
        self._watched_queue = queue
        self._ready_queue = None
        view = self._watched_view = queue.view()
        queue.unpark_all()  # parked by someone else: this controller knows nothing of them
        queue.watch_demand(self._watcher)
        demand = view.demand_tables()
        self._queued_demand = demand.by_group
        self._parked_groups = queue.parked_groups
        self._admitted_item = None
        bind = getattr(self._policy, "bind", None)
        self._bound = (
            bind(
                PolicyTables(
                    limits=self._limits,
                    leased=self._leased,
                    group_leased=self._group_leased,
                    group_weight=self._group_weight,
                    debt=self._debt,
                    outside_held=self._outside_held,
                    outside_weight=self._outside_weight,
                    queued_demand=demand.by_group,
                    demand_weight=demand.weight,
                )
            )
            if bind is not None
            else None
        )
        self._admit = self._bound.admit if self._bound is not None else None
        self._recount_outside()

    def _recount_outside(self) -> None:
        """Count the amount and weight held outside the contenders from scratch."""
        view = self._watched_view
        for resource in self._limits:
            if view is None:
                weight, held = 0.0, 0
            else:
                weight, held = self._reader._scan_outside(resource, view)
            self._outside_weight[resource] = weight
            self._outside_held[resource] = held
        self._contention_version += 1
        self._ready_queue = None

    def _outside_moved(self, resource: str, amount: int, weight: float) -> None:
        """A group without queued demand for ``resource`` took (``amount`` > 0) or gave back
        some of it; ``weight``: its weight if it started (> 0) or stopped (< 0) leasing it."""
        held = self._outside_held[resource] + amount
        self._outside_held[resource] = held
        # Sums of the same weights added and taken away: no float residue once nothing is held.
        self._outside_weight[resource] = self._outside_weight[resource] + weight if held else 0.0
        self._contention_version += 1
        self._ready_queue = None

    def _demand_changed(
        self, group: Hashable, resource: str, old_weight: float, new_weight: float
    ) -> None:
        """The watched queue's demand shape moved (called from inside the queue operation, so
        only the aggregates move here; parked groups are looked at once it is complete)."""
        self._contention_version += 1
        self._ready_queue = None
        if old_weight and new_weight:
            return  # a weight change: the queued demand weights moved, nothing held did
        key = cast("str", group)  # ready-queue groups are keyed by ``TaskGroupSpec.key``
        held = self._group_leased.get(key)
        amount = held.get(resource, 0) if held else 0
        if not amount:
            return
        weight = self._group_weight[key]
        if old_weight:  # stopped demanding: what it holds is now held outside
            self._outside_moved(resource, amount, weight)
        else:  # started demanding: what it holds is no longer outside
            self._outside_moved(resource, -amount, -weight)

    def _fair_level(self, resource: str, weight: float) -> float | None:
        """``(limit - held outside) / queued demand weight`` of ``resource``, or ``None`` when a
        demanding group of ``weight`` may have no queued peer left."""
        view = self._watched_view
        assert view is not None
        total = view.demand_weight(resource)
        if view.demanding_groups(resource) < 2 or total - weight <= 1e-9:
            return None
        return (self._limits[resource] - self._outside_held[resource]) / total

    def _unpark_due(self, queue: WeightedFairQueue[SchedulableTask]) -> None:
        """Contention moved since the parked groups were judged: unpark those it may admit."""
        self._parking_checked = self._contention_version
        if not self._parked_groups:
            self._parking.clear()
            return
        for group in self._parking.due(self._fair_level):
            queue.unpark(group)


class _DemandWatcher:
    """The controller's ears on its watched queue (``sluiceway.fair_queue.DemandWatcher``)."""

    __slots__ = ("_controller",)

    def __init__(self, controller: TaskAdmissionController) -> None:
        self._controller = controller

    def demand_changed(
        self, group: Hashable, resource: str, old_weight: float, new_weight: float
    ) -> None:
        self._controller._demand_changed(group, resource, old_weight, new_weight)

    def shape_changed(self) -> None:
        """Nothing to do now: the next ``select_next`` looks at the parked groups, under the
        contention it selects with (checking at every intermediate state would unpark groups
        that the next change parks again)."""


_ELIGIBLE = HeadVerdict.ELIGIBLE
_INELIGIBLE = HeadVerdict.INELIGIBLE
_PARK = HeadVerdict.PARK
_RELEASED = ReleaseStatus.RELEASED
_UNDECIDED_ANSWER: AdmitAnswer = (UNDECIDED, None, None)
_new_lease: Callable[[type[TaskAdmissionLease]], TaskAdmissionLease] = object.__new__
_NOTHING: Mapping[str, int] = MappingProxyType({})
