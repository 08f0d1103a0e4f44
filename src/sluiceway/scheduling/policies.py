"""Task admission policies: may this ready task start now, beyond the hard ledger (SPEC §5.2).

A policy is pure. ``evaluate`` reads the ready queue and the ledger and returns a decision;
``on_acquire`` / ``on_release`` return a :class:`PolicyStateDelta` that the controller applies in
the same synchronous step as the lease change. Policy state (borrow debt) lives in the controller,
apart from the hard resource ledger.

Weighted strict share of group ``g`` on resource ``r``::

    share(g, r) = limit(r) * w(g) / (w(g) + W_other(r))

where ``W_other(r)`` is the weight of every other group that contends for ``r``: it has queued
demand for ``r`` or holds a lease on ``r``. A lone group's share is the whole limit. A group is
under *peer pressure* on ``r`` when another group has queued demand for ``r``; under pressure the
cap is the work-conserving share::

    pressure_share(g, r) = (limit(r) - H(r)) * w(g) / (w(g) + Q_other(r))

with ``H`` the amount held by groups without queued demand and ``Q_other`` the weight of the other
groups with queued demand, so the caps of the waiting groups add up to what is not held elsewhere.

- ``StrictFairTaskAdmissionPolicy``: a group holding at least its pressure share is denied
  (``group_cap``) while under peer pressure; without pressure it may take anything the ledger has.
- ``BoundedBorrowTaskAdmissionPolicy``: without peer pressure a group may go beyond its share by
  up to ``borrow_ceiling_fraction * limit``; every lease taken at or above the share adds one unit
  of debt. Under peer pressure a group in debt is withheld (``borrow_debt``) until its own
  completions repay the debt (one unit per release), and a group at its pressure share is capped.

Debt never exceeds the group's live leases, so with nothing in flight no policy denies anything.

Both built-in policies have *stable denials* (``stable_denials = True``): a denial of group
``g``'s head can only turn into an admission when ``g``'s head, leases or debt change, when a group
without queued demand for a resource acquires or releases it (``H``, leased-only weight), or when
the queue's demand shape changes (``Q``, pressure). Under pressure, with ``g`` demanding ``r``,
the cap reads ``held(g, r) / w(g) >= (limit(r) - H(r)) / Q(r)``: leases of other contenders do not
move it. The controller uses this to park denied groups instead of evaluating them every cycle.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

from sluiceway.fair_queue import QueueView
from sluiceway.scheduling.tasks import SchedulableTask


class TaskDenialReason(enum.Enum):
    """Why a ready task may not start now."""

    NO_CAPACITY = "no_capacity"  # the hard ledger lacks the amount
    GROUP_CAP = "group_cap"  # the group holds its share (or its borrow ceiling) under pressure
    BORROW_DEBT = "borrow_debt"  # the group borrowed earlier and a peer is waiting
    SHUTDOWN = "shutdown"  # the controller admits nothing any more
    POLICY_DENIAL = "policy_denial"  # any other rule of a custom policy


class TaskAdmissionPolicyKind(enum.Enum):
    BOUNDED_BORROW = "bounded_borrow"
    STRICT_FAIR = "strict_fair"


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyDecision:
    """The verdict of :meth:`TaskAdmissionPolicy.evaluate`."""

    allowed: bool
    reason: TaskDenialReason | None = None
    resource: str | None = None
    detail: str = ""


ALLOWED = PolicyDecision(allowed=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyStateDelta:
    """A change of policy state for one group, applied by the controller with the lease change."""

    group: str
    debt_change: int = 0

    @property
    def is_empty(self) -> bool:
        return self.debt_change == 0


class TaskLedgerReader(Protocol):
    """Read-only access to the controller's ledger and policy state (no copies are made)."""

    def limit(self, resource: str) -> int: ...

    def leased(self, resource: str) -> int: ...

    def group_leased(self, group: str, resource: str) -> int: ...

    def debt(self, group: str) -> int: ...

    def leased_only_weight(self, resource: str, queue_view: QueueView[SchedulableTask]) -> float:
        """Weight of groups holding leases on ``resource`` and having no queued demand for it."""
        ...

    def leased_only_held(self, resource: str, queue_view: QueueView[SchedulableTask]) -> int:
        """Amount of ``resource`` those groups hold."""
        ...

    def group_weight(self, group: str) -> float | None:
        """The weight of a group that holds leases (``None`` if it holds none)."""
        ...


class TaskAdmissionPolicy(Protocol):
    """Pure admission rule on top of the hard ledger. See the module docstring for the contract."""

    @property
    def kind(self) -> TaskAdmissionPolicyKind: ...

    def evaluate(
        self,
        item: SchedulableTask,
        queue_view: QueueView[SchedulableTask],
        ledger: TaskLedgerReader,
    ) -> PolicyDecision: ...

    def on_acquire(
        self,
        item: SchedulableTask,
        queue_view: QueueView[SchedulableTask],
        ledger: TaskLedgerReader,
    ) -> PolicyStateDelta: ...

    def on_release(self, group: str, ledger: TaskLedgerReader) -> PolicyStateDelta: ...


def queued_peer_weight(
    group: str, weight: float, resource: str, queue_view: QueueView[SchedulableTask]
) -> float:
    """Weight of the other groups with queued demand for ``resource`` (peer pressure if > 0)."""
    total = queue_view.demand_weight(resource)
    if queue_view.demand(group, resource) > 0:
        total -= weight
    return total if total > 1e-9 else 0.0


def strict_share(
    group: str,
    weight: float,
    resource: str,
    queue_view: QueueView[SchedulableTask],
    ledger: TaskLedgerReader,
) -> float:
    """``limit * w / (w + W_other)`` over the groups contending for ``resource``."""
    others = queued_peer_weight(group, weight, resource, queue_view)
    leased_only = ledger.leased_only_weight(resource, queue_view)
    if ledger.group_leased(group, resource) and queue_view.demand(group, resource) == 0:
        own = ledger.group_weight(group)
        leased_only -= own if own is not None else 0.0
    others += max(leased_only, 0.0)
    return ledger.limit(resource) * weight / (weight + others)


def pressure_share(
    group: str,
    weight: float,
    resource: str,
    queue_view: QueueView[SchedulableTask],
    ledger: TaskLedgerReader,
) -> float:
    """The share a group may hold while peers wait: what groups without queued demand do not
    hold, split by weight among the groups with queued demand (work-conserving among them)."""
    held_elsewhere = ledger.leased_only_held(resource, queue_view)
    if queue_view.demand(group, resource) == 0:
        held_elsewhere -= ledger.group_leased(group, resource)
    others = queued_peer_weight(group, weight, resource, queue_view)
    return (ledger.limit(resource) - held_elsewhere) * weight / (weight + others)


class StrictFairTaskAdmissionPolicy:
    """Group caps at the weighted share, biting only while a peer group has queued demand."""

    stable_denials: ClassVar[bool] = True

    @property
    def kind(self) -> TaskAdmissionPolicyKind:
        return TaskAdmissionPolicyKind.STRICT_FAIR

    def evaluate(
        self,
        item: SchedulableTask,
        queue_view: QueueView[SchedulableTask],
        ledger: TaskLedgerReader,
    ) -> PolicyDecision:
        group = item.group.key
        weight = item.group.weight
        for resource in item.request.amounts:
            if not queued_peer_weight(group, weight, resource, queue_view):
                continue
            held = ledger.group_leased(group, resource)
            share = pressure_share(group, weight, resource, queue_view, ledger)
            if held >= share:
                return PolicyDecision(
                    allowed=False,
                    reason=TaskDenialReason.GROUP_CAP,
                    resource=resource,
                    detail=f"holds {held} of {resource}, weighted share {share:.2f}",
                )
        return ALLOWED

    def on_acquire(
        self,
        item: SchedulableTask,
        queue_view: QueueView[SchedulableTask],
        ledger: TaskLedgerReader,
    ) -> PolicyStateDelta:
        return PolicyStateDelta(group=item.group.key)

    def on_release(self, group: str, ledger: TaskLedgerReader) -> PolicyStateDelta:
        return PolicyStateDelta(group=group)


class BoundedBorrowTaskAdmissionPolicy:
    """Borrow beyond the share while no peer waits; repay the debt before peers are crowded out."""

    stable_denials: ClassVar[bool] = True

    def __init__(self, *, borrow_ceiling_fraction: float = 0.5) -> None:
        if not 0.0 < borrow_ceiling_fraction <= 1.0:
            raise ValueError(
                f"borrow_ceiling_fraction must be in (0, 1], got {borrow_ceiling_fraction!r}"
            )
        self._ceiling_fraction = borrow_ceiling_fraction

    @property
    def kind(self) -> TaskAdmissionPolicyKind:
        return TaskAdmissionPolicyKind.BOUNDED_BORROW

    @property
    def borrow_ceiling_fraction(self) -> float:
        return self._ceiling_fraction

    def evaluate(
        self,
        item: SchedulableTask,
        queue_view: QueueView[SchedulableTask],
        ledger: TaskLedgerReader,
    ) -> PolicyDecision:
        group = item.group.key
        weight = item.group.weight
        debt = ledger.debt(group)
        amounts = item.request.amounts
        if debt:
            for resource in amounts:
                if queued_peer_weight(group, weight, resource, queue_view):
                    return PolicyDecision(
                        allowed=False,
                        reason=TaskDenialReason.BORROW_DEBT,
                        resource=resource,
                        detail=f"owes {debt} borrowed lease(s) while a peer group waits",
                    )
        for resource, amount in amounts.items():
            held = ledger.group_leased(group, resource)
            if queued_peer_weight(group, weight, resource, queue_view):
                share = pressure_share(group, weight, resource, queue_view, ledger)
                if held < share:
                    continue
                return PolicyDecision(
                    allowed=False,
                    reason=TaskDenialReason.GROUP_CAP,
                    resource=resource,
                    detail=f"holds {held} of {resource}, weighted share {share:.2f}",
                )
            share = strict_share(group, weight, resource, queue_view, ledger)
            if held < share:
                continue
            ceiling = share + math.ceil(self._ceiling_fraction * ledger.limit(resource))
            if held + amount > ceiling:
                return PolicyDecision(
                    allowed=False,
                    reason=TaskDenialReason.GROUP_CAP,
                    resource=resource,
                    detail=f"holds {held} of {resource}, borrow ceiling {ceiling:.2f}",
                )
        return ALLOWED

    def on_acquire(
        self,
        item: SchedulableTask,
        queue_view: QueueView[SchedulableTask],
        ledger: TaskLedgerReader,
    ) -> PolicyStateDelta:
        group = item.group.key
        weight = item.group.weight
        for resource in item.request.amounts:
            held = ledger.group_leased(group, resource)
            if held >= strict_share(group, weight, resource, queue_view, ledger):
                return PolicyStateDelta(group=group, debt_change=1)
        return PolicyStateDelta(group=group)

    def on_release(self, group: str, ledger: TaskLedgerReader) -> PolicyStateDelta:
        return PolicyStateDelta(group=group, debt_change=-1 if ledger.debt(group) else 0)


def make_policy(
    kind: TaskAdmissionPolicyKind, *, borrow_ceiling_fraction: float = 0.5
) -> TaskAdmissionPolicy:
    if kind is TaskAdmissionPolicyKind.STRICT_FAIR:
        return StrictFairTaskAdmissionPolicy()
    return BoundedBorrowTaskAdmissionPolicy(borrow_ceiling_fraction=borrow_ceiling_fraction)
