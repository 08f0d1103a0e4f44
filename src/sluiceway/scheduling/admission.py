"""Task admission: leases on scheduler resources under a pluggable policy (SPEC §5.2).

The controller owns the hard ledger of scheduler resources (limit, leased, per group) and, kept
apart from it, the policy state (borrow debt per group). A task may start only while it holds a
lease; the lease is released exactly once. ``try_acquire`` checks the ledger, asks the pure policy,
and applies the lease and the policy's ``PolicyStateDelta`` in one synchronous step. Releasing a
lease twice, one from another controller or one this controller never granted returns a
diagnostic :class:`ReleaseResult` and changes nothing; ``release`` never raises.

``select_next(queue)`` selects through the queue's parking index when the policy declares
``stable_denials``: a group whose head the policy denies is parked and not evaluated again until
a lease change could alter the verdict. Invalidation: a lease acquired or released by group ``g``
unparks ``g`` (and the group of the policy delta); one by a group without queued demand for a
leased resource unparks every group (the amount held outside the contenders moved); the queue
unparks on head and demand-shape changes. Capacity and shutdown denials are never parked.

Events (SPEC §9.1): ``task_lease_acquired`` and ``admission_denied`` from ``try_acquire``,
``task_lease_released`` and ``release_diagnostic`` from ``release``, each built only when a sink
of the controller's ``EventBus`` listens for it.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

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
from sluiceway.scheduling.policies import (
    BoundedBorrowTaskAdmissionPolicy,
    PolicyDecision,
    PolicyStateDelta,
    TaskAdmissionPolicy,
    TaskAdmissionPolicyKind,
    TaskDenialReason,
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


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseResult:
    status: ReleaseStatus
    lease_id: int

    @property
    def released(self) -> bool:
        return self.status is ReleaseStatus.RELEASED


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
    """The live, read-only ledger a policy sees (implements ``TaskLedgerReader``)."""

    __slots__ = (
        "_controller",
        "_leased_only_by_resource",
        "_leased_only_shape",
        "_leased_only_view",
    )

    def __init__(self, controller: TaskAdmissionController) -> None:
        self._controller = controller
        # resource -> (weight, held) of the groups leasing it without queued demand for it, valid
        # for one queue view at one demand shape; lease changes update it in place.
        self._leased_only_by_resource: dict[str, tuple[float, int]] = {}
        self._leased_only_view: QueueView[SchedulableTask] | None = None
        self._leased_only_shape = -1

    def limit(self, resource: str) -> int:
        return self._controller._limits[resource]

    def leased(self, resource: str) -> int:
        return self._controller._leased[resource]

    def group_leased(self, group: str, resource: str) -> int:
        held = self._controller._group_leased.get(group)
        return held.get(resource, 0) if held else 0

    def debt(self, group: str) -> int:
        return self._controller._debt.get(group, 0)

    def group_weight(self, group: str) -> float | None:
        return self._controller._group_weight.get(group)

    def leased_only_weight(self, resource: str, queue_view: QueueView[SchedulableTask]) -> float:
        return self._leased_only(resource, queue_view)[0]

    def leased_only_held(self, resource: str, queue_view: QueueView[SchedulableTask]) -> int:
        return self._leased_only(resource, queue_view)[1]

    def forget_leased_only(self) -> None:
        self._leased_only_by_resource.clear()
        self._leased_only_view = None

    def note_held_change(
        self, group: str, resource: str, change: int, weight_change: float
    ) -> None:
        """Keep the cached leased-only sums exact after ``group``'s holding of ``resource`` moved
        by ``change`` (``weight_change``: its weight if it started or stopped leasing it)."""
        view = self._leased_only_view
        if view is None:
            return
        if view.demand_shape_version != self._leased_only_shape:
            self.forget_leased_only()
            return
        cached = self._leased_only_by_resource.get(resource)
        if cached is None or view.demand(group, resource):
            return
        weight = cached[0] + weight_change
        held = cached[1] + change
        # Sums of the same weights added and taken away: clear float residue once nothing is held.
        self._leased_only_by_resource[resource] = (weight if held else 0.0, held)

    def _leased_only(
        self, resource: str, queue_view: QueueView[SchedulableTask]
    ) -> tuple[float, int]:
        """Weight and amount held by groups with leases on ``resource`` and no queued demand."""
        shape = queue_view.demand_shape_version
        if queue_view is self._leased_only_view and shape == self._leased_only_shape:
            cached = self._leased_only_by_resource.get(resource)
            if cached is not None:
                return cached
        else:
            self._leased_only_by_resource.clear()
            self._leased_only_view = queue_view
            self._leased_only_shape = shape
        controller = self._controller
        weight = 0.0
        held = 0
        weights = controller._group_weight
        group_leased = controller._group_leased
        for group in controller._leasing_groups.get(resource, ()):
            if queue_view.demand(group, resource) == 0:
                weight += weights[group]
                held += group_leased[group][resource]
        self._leased_only_by_resource[resource] = (weight, held)
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
        self._group_leased: dict[str, dict[str, int]] = {}
        self._group_leases: dict[str, int] = {}
        self._group_weight: dict[str, float] = {}
        self._leasing_groups: dict[str, set[str]] = {}
        self._live: dict[int, TaskAdmissionLease] = {}
        # Policy state, apart from the ledger.
        self._debt: dict[str, int] = {}
        # Counters.
        self._version = 0
        self._next_id = 0
        self._acquired = 0
        self._released = 0
        self._diagnostics = 0
        self._denials: dict[TaskDenialReason, int] = {}
        self._shutting_down = False
        self._reader = _LedgerReader(self)
        self._empty_view: QueueView[SchedulableTask] = WeightedFairQueue[SchedulableTask]().view()
        # The queue whose parking index ``select_next`` keeps in sync with lease changes.
        self._parking_queue: WeightedFairQueue[SchedulableTask] | None = None
        self._stable_denials = bool(getattr(self._policy, "stable_denials", False))
        # The last head ``select_next`` found admissible: (item, view, queue version, version).
        # ``evaluate`` is pure, so while neither version moved its verdict still holds.
        self._admitted_head: tuple[SchedulableTask, QueueView[SchedulableTask], int, int] | None = (
            None
        )

    @property
    def policy(self) -> TaskAdmissionPolicy:
        return self._policy

    @property
    def events(self) -> EventBus:
        return self._events

    def has_capacity(self, request: SchedulerResourceRequest) -> bool:
        """The hard ledger alone could grant ``request`` now (policy not consulted)."""
        leased = self._leased
        limits = self._limits
        return all(
            leased[resource] + amount <= limits[resource]
            for resource, amount in request.amounts.items()
        )

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

        Groups denied by a policy with ``stable_denials`` are parked in ``queue``; this
        controller unparks them on the lease changes that could admit them (module docstring).
        Using a second queue unparks every group of the first. Changes nothing logical.
        """
        if queue is not self._parking_queue:
            if self._parking_queue is not None:
                self._parking_queue.unpark_all()
            self._parking_queue = queue
        if self._shutting_down:
            return None
        return queue.select_next_or_park(self._judge)

    def _judge(self, entry: QueueEntry[SchedulableTask]) -> HeadVerdict:
        item = entry.item
        if not self.has_capacity(item.request):
            return HeadVerdict.INELIGIBLE
        queue = self._parking_queue
        assert queue is not None
        view = queue.view()
        if self._policy.evaluate(item, view, self._reader).allowed:
            self._admitted_head = (item, view, view.version, self._version)
            return HeadVerdict.ELIGIBLE
        return HeadVerdict.PARK if self._stable_denials else HeadVerdict.INELIGIBLE

    def try_acquire(
        self, item: SchedulableTask, queue_view: QueueView[SchedulableTask] | None = None
    ) -> TaskAdmissionLease | TaskAdmissionDenied:
        view = queue_view if queue_view is not None else self._empty_view
        denied = self._check(item, view)
        if denied is not None:
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
            return denied
        delta = self._policy.on_acquire(item, view, self._reader)
        amounts = item.request.amounts
        group = item.group.key
        held = self._group_leased.setdefault(group, {})
        for resource, amount in amounts.items():
            now_leased = self._leased[resource] + amount
            self._leased[resource] = now_leased
            if now_leased > self._max_leased[resource]:
                self._max_leased[resource] = now_leased
        weight = item.group.weight
        if self._group_weight.get(group, weight) != weight:
            self._reader.forget_leased_only()
        self._group_weight[group] = weight
        for resource, amount in amounts.items():
            if amount:
                before = held.get(resource, 0)
                if not before:
                    self._leasing_groups.setdefault(resource, set()).add(group)
                held[resource] = before + amount
                self._reader.note_held_change(group, resource, amount, 0.0 if before else weight)
        self._group_leases[group] = self._group_leases.get(group, 0) + 1
        self._apply(delta)
        self._next_id += 1
        self._acquired += 1
        self._version += 1
        self._unpark_after_lease_change(group, amounts, delta)
        lease = TaskAdmissionLease(
            self._next_id, item.task_id, group, amounts, self._owner, False, item
        )
        self._live[lease.lease_id] = lease
        if self._events.wants(_LEASE_ACQUIRED):
            task = item.task
            self._events.emit(
                TaskLeaseAcquired(
                    task_id=task.task_id,
                    column=task.column,
                    row_group=task.row_group,
                    group=group,
                    attempt=item.attempt,
                    lease_id=lease.lease_id,
                )
            )
        return lease

    def release(self, lease: TaskAdmissionLease) -> ReleaseResult:
        """Return a lease's resources. Never raises; misuse yields a diagnostic result."""
        status = self._release_status(lease)
        if status is not ReleaseStatus.RELEASED:
            self._diagnostics += 1
            if self._events.wants(EventKind.RELEASE_DIAGNOSTIC):
                self._events.emit(
                    ReleaseDiagnostic(
                        lease_id=lease.lease_id,
                        code=ReleaseDiagnosticCode(status.value),
                        task_id=lease.task_id,
                    )
                )
            return ReleaseResult(status=status, lease_id=lease.lease_id)
        del self._live[lease.lease_id]
        lease.released = True
        group = lease.group
        delta = self._policy.on_release(group, self._reader)
        held = self._group_leased[group]
        weight = self._group_weight[group]
        for resource, amount in lease.amounts.items():
            self._leased[resource] -= amount
            if amount:
                left = held[resource] - amount
                if left:
                    held[resource] = left
                else:
                    del held[resource]
                    self._leasing_groups[resource].discard(group)
                self._reader.note_held_change(group, resource, -amount, 0.0 if left else -weight)
        leases_left = self._group_leases[group] - 1
        if leases_left:
            self._group_leases[group] = leases_left
        else:
            del self._group_leases[group]
            del self._group_leased[group]
            del self._group_weight[group]
        self._apply(delta)
        self._released += 1
        self._version += 1
        self._unpark_after_lease_change(group, lease.amounts, delta)
        if self._events.wants(_LEASE_RELEASED) and lease.item is not None:
            item = lease.item
            task = item.task
            self._events.emit(
                TaskLeaseReleased(
                    task_id=task.task_id,
                    column=task.column,
                    row_group=task.row_group,
                    group=group,
                    attempt=item.attempt,
                    lease_id=lease.lease_id,
                )
            )
        return ReleaseResult(status=ReleaseStatus.RELEASED, lease_id=lease.lease_id)

    def shutdown(self) -> None:
        """Deny every further acquisition; outstanding leases may still be released."""
        self._shutting_down = True
        self._version += 1

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
            leased_by_group=MappingProxyType(dict(self._group_leases)),
            debt_by_group=MappingProxyType(dict(self._debt)),
            active_leases=len(self._live),
            acquired_total=self._acquired,
            released_total=self._released,
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
                raise EngineError(
                    f"task {item.task_id} asks for scheduler resource {resource!r}, which has "
                    f"no limit; known resources: {sorted(self._limits)}"
                )
            if self._leased[resource] + amount > limit:
                return TaskAdmissionDenied(reason=TaskDenialReason.NO_CAPACITY, resource=resource)
        admitted = self._admitted_head
        if (
            admitted is not None
            and admitted[0] is item
            and admitted[1] is queue_view
            and admitted[2] == queue_view.version
            and admitted[3] == self._version
        ):
            return None
        decision: PolicyDecision = self._policy.evaluate(item, queue_view, self._reader)
        if decision.allowed:
            return None
        return TaskAdmissionDenied(
            reason=decision.reason or TaskDenialReason.POLICY_DENIAL,
            resource=decision.resource,
            detail=decision.detail,
        )

    def _apply(self, delta: PolicyStateDelta) -> None:
        if delta.is_empty:
            return
        debt = self._debt.get(delta.group, 0) + delta.debt_change
        if debt < 0 or debt > self._group_leases.get(delta.group, 0):
            raise EngineError(
                f"policy {self._policy.kind.value} set the debt of group {delta.group!r} to "
                f"{debt}; debt must stay between 0 and the group's live leases"
            )
        if debt:
            self._debt[delta.group] = debt
        else:
            self._debt.pop(delta.group, None)

    def _unpark_after_lease_change(
        self, group: str, amounts: Mapping[str, int], delta: PolicyStateDelta
    ) -> None:
        queue = self._parking_queue
        if queue is None or not queue.parked_count:
            return
        view = queue.view()
        for resource, amount in amounts.items():
            if amount and view.demand(group, resource) == 0:
                # Held outside the groups with queued demand: every share may have moved.
                queue.unpark_all()
                return
        queue.unpark(group)
        if delta.group != group:
            queue.unpark(delta.group)

    def _release_status(self, lease: TaskAdmissionLease) -> ReleaseStatus:
        if lease.owner != self._owner:
            return ReleaseStatus.FOREIGN
        if lease.released:
            return ReleaseStatus.DUPLICATE
        if self._live.get(lease.lease_id) is not lease:
            return ReleaseStatus.UNKNOWN
        return ReleaseStatus.RELEASED
