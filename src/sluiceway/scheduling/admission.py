"""Task admission: leases on scheduler resources (SPEC §5.2).

The controller owns the hard ledger of scheduler resources (limit, leased, available). A task may
start only while it holds a lease; the lease is released exactly once. Releasing a lease twice, or
one from another controller, returns a diagnostic ``ReleaseResult`` and changes nothing.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sluiceway.errors import EngineError
from sluiceway.scheduling.tasks import SchedulableTask


class TaskDenialReason(enum.Enum):
    NO_CAPACITY = "no_capacity"
    GROUP_CAP = "group_cap"
    BORROW_DEBT = "borrow_debt"
    SHUTDOWN = "shutdown"
    POLICY_DENIAL = "policy_denial"


class ReleaseStatus(enum.Enum):
    RELEASED = "released"
    DUPLICATE = "duplicate"
    FOREIGN = "foreign"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseResult:
    status: ReleaseStatus
    lease_id: int

    @property
    def released(self) -> bool:
        return self.status is ReleaseStatus.RELEASED


@dataclass(slots=True, eq=False)
class TaskAdmissionLease:
    """Proof that a task may run. Identity-compared; never reused."""

    lease_id: int
    task_id: str
    group: str
    amounts: Mapping[str, int]
    owner: int = field(repr=False)
    released: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskAdmissionDenied:
    reason: TaskDenialReason
    resource: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskAdmissionView:
    limits: Mapping[str, int]
    leased: Mapping[str, int]
    leased_by_group: Mapping[str, int]
    active_leases: int
    acquired_total: int
    released_total: int
    diagnostics_total: int
    max_leased: Mapping[str, int]
    shutting_down: bool


_owner_ids = itertools.count(1)


class TaskAdmissionController:
    """Grants task leases against per-resource limits (e.g. ``submission``, ``local``)."""

    def __init__(self, limits: Mapping[str, int]) -> None:
        for resource, limit in limits.items():
            if limit < 1:
                raise EngineError(
                    f"scheduler resource {resource!r} needs a limit >= 1, got {limit}"
                )
        self._owner = next(_owner_ids)
        self._limits = dict(limits)
        self._leased = dict.fromkeys(limits, 0)
        self._max_leased = dict.fromkeys(limits, 0)
        self._leased_by_group: dict[str, int] = {}
        self._next_id = 0
        self._active = 0
        self._acquired = 0
        self._released = 0
        self._diagnostics = 0
        self._shutting_down = False

    def is_eligible(self, item: SchedulableTask) -> bool:
        if self._shutting_down:
            return False
        leased = self._leased
        limits = self._limits
        for resource, amount in item.request.amounts.items():
            if leased[resource] + amount > limits[resource]:
                return False
        return True

    def try_acquire(self, item: SchedulableTask) -> TaskAdmissionLease | TaskAdmissionDenied:
        if self._shutting_down:
            return TaskAdmissionDenied(reason=TaskDenialReason.SHUTDOWN)
        amounts = item.request.amounts
        for resource, amount in amounts.items():
            if self._leased[resource] + amount > self._limits[resource]:
                return TaskAdmissionDenied(reason=TaskDenialReason.NO_CAPACITY, resource=resource)
        for resource, amount in amounts.items():
            now_leased = self._leased[resource] + amount
            self._leased[resource] = now_leased
            if now_leased > self._max_leased[resource]:
                self._max_leased[resource] = now_leased
        group = item.group.key
        self._leased_by_group[group] = self._leased_by_group.get(group, 0) + 1
        self._next_id += 1
        self._active += 1
        self._acquired += 1
        return TaskAdmissionLease(self._next_id, item.task_id, group, amounts, self._owner)

    def release(self, lease: TaskAdmissionLease) -> ReleaseResult:
        """Return a lease's resources. Never raises; misuse yields a diagnostic result."""
        if lease.owner != self._owner:
            self._diagnostics += 1
            return ReleaseResult(status=ReleaseStatus.FOREIGN, lease_id=lease.lease_id)
        if lease.released:
            self._diagnostics += 1
            return ReleaseResult(status=ReleaseStatus.DUPLICATE, lease_id=lease.lease_id)
        lease.released = True
        for resource, amount in lease.amounts.items():
            self._leased[resource] -= amount
        left = self._leased_by_group[lease.group] - 1
        if left:
            self._leased_by_group[lease.group] = left
        else:
            del self._leased_by_group[lease.group]
        self._active -= 1
        self._released += 1
        return ReleaseResult(status=ReleaseStatus.RELEASED, lease_id=lease.lease_id)

    def shutdown(self) -> None:
        """Deny every further acquisition; outstanding leases may still be released."""
        self._shutting_down = True

    @property
    def active_leases(self) -> int:
        return self._active

    def view(self) -> TaskAdmissionView:
        return TaskAdmissionView(
            limits=MappingProxyType(dict(self._limits)),
            leased=MappingProxyType(dict(self._leased)),
            leased_by_group=MappingProxyType(dict(self._leased_by_group)),
            active_leases=self._active,
            acquired_total=self._acquired,
            released_total=self._released,
            diagnostics_total=self._diagnostics,
            max_leased=MappingProxyType(dict(self._max_leased)),
            shutting_down=self._shutting_down,
        )
