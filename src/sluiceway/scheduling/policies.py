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
Likewise, when the ledger has room for every amount of a request (each ``>= 1``), a group of
weight ``> 0`` that holds nothing and owes nothing is admitted by both policies, with no debt:
``H <= leased <= limit - amount < limit`` makes every pressure share ``> 0``, and every strict
share is ``> 0`` (``limit >= 1``), so ``held = 0`` is below each of them.

Both built-in policies have *stable denials* (``stable_denials = True``): a denial of group
``g``'s head can only turn into an admission when ``g``'s head, leases or debt change, when a group
without queued demand for a resource acquires or releases it (``H``, leased-only weight), or when
the queue's demand shape changes (``Q``, pressure). Under pressure, with ``g`` demanding ``r``,
the cap reads ``held(g, r) / w(g) >= (limit(r) - H(r)) / Q(r)``, the right side being the *fair
level* of ``r`` (``Q`` = total weight of the groups with queued demand, ``g`` included): leases of
other contenders do not move it, and the denial lifts only once the level rises above
``held / w`` (``PolicyDecision.level_bound``) or the peers leave. A borrow-debt denial lifts only
through ``g``'s own completions or the peers leaving (bound ``inf``). The controller uses this to
park denied groups instead of evaluating them every cycle (``sluiceway.scheduling.parking``).

Fast path: a built-in policy can be *bound* (``bind``) to the controller's live tables
(:class:`PolicyTables`). The bound ``admit`` answers, in one call, what ``evaluate`` and then
``on_acquire`` would answer for the watched queue: admitted with its debt change, or denied on a
resource with the denial's ``level_bound``. It is the same arithmetic on the same values in the
same order (so the same floats); ``tests/unit/scheduling/test_scheduling_fast_path.py`` checks
that it agrees with ``evaluate`` / ``on_acquire`` / ``on_release``. A subclass that overrides any
of those three gets no fast path.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Final, NamedTuple, Protocol

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
    """The verdict of :meth:`TaskAdmissionPolicy.evaluate`.

    ``level_bound`` (a denial of a policy with ``stable_denials``, on ``resource``): a promise
    that the denial stands while the group's own head, leases and debt do not change, another
    group keeps queued demand for ``resource``, and the resource's fair level
    ``(limit - held_outside) / queued_demand_weight`` (see the module docstring) stays at or below
    the bound. ``None`` promises less: any change of contention may lift the denial.
    """

    allowed: bool
    reason: TaskDenialReason | None = None
    resource: str | None = None
    detail: str = ""
    level_bound: float | None = None


ALLOWED = PolicyDecision(allowed=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyStateDelta:
    """A change of policy state for one group, applied by the controller with the lease change.

    A delta that changes something names its ``group``; :data:`NO_POLICY_CHANGE` changes
    nothing (policies return it on the common path, so a dispatch builds no delta)."""

    group: str | None = None
    debt_change: int = 0

    @property
    def is_empty(self) -> bool:
        return self.debt_change == 0


NO_POLICY_CHANGE = PolicyStateDelta()


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


class PolicyTables(NamedTuple):
    """The live tables a bound policy reads: the controller's ledger and policy state, and its
    watched queue's demand (:meth:`sluiceway.fair_queue.QueueView.demand_tables`). The dicts
    themselves, updated in place by their owners; a bound policy only reads them."""

    limits: Mapping[str, int]
    leased: Mapping[str, int]  # amount leased per resource, by every group
    group_leased: Mapping[str, Mapping[str, int]]  # group -> resource -> amount held (> 0)
    group_weight: Mapping[str, float]  # weight of each group holding leases
    debt: Mapping[str, int]
    outside_held: Mapping[str, int]  # ``leased_only_held`` of the watched queue, per resource
    outside_weight: Mapping[str, float]  # ``leased_only_weight`` of the watched queue
    # group -> the resources it has queued demand for (keys only: ``QueueView.demand_tables``)
    queued_demand: Mapping[Hashable, Mapping[str, int]]
    demand_weight: Mapping[str, float]  # ``QueueView.demand_weight`` per resource


# What a bound ``admit(group, weight, pairs)`` answers: ``(debt_change, resource, level_bound)``.
# ``debt_change >= 0``: the ledger has room, ``evaluate`` allows and ``on_acquire`` would return
# that debt change for ``group``. ``NO_CAPACITY``: the ledger lacks some amount (the policy is not
# asked). ``DENIED``: ``evaluate`` denies on ``resource`` with ``level_bound``. ``UNDECIDED``: no
# fast answer (ask ``evaluate``). A resource without a limit raises ``KeyError``.
AdmitAnswer = tuple[int, str | None, float | None]
AdmitFunction = Callable[[str, float, tuple[tuple[str, int], ...]], AdmitAnswer]
DENIED: Final = -1
UNDECIDED: Final = -2
NO_CAPACITY: Final = -3
ADMIT: Final[AdmitAnswer] = (0, None, None)
ADMIT_BORROWING: Final[AdmitAnswer] = (1, None, None)
NO_ROOM: Final[AdmitAnswer] = (NO_CAPACITY, None, None)
_UNDECIDED_ANSWER: Final[AdmitAnswer] = (UNDECIDED, None, None)
_NOTHING: Mapping[str, int] = {}


class BoundPolicy(NamedTuple):
    """A policy bound to one controller's :class:`PolicyTables` (see the module docstring).

    ``admit(group, weight, pairs)`` judges a head of ``group`` asking for ``pairs``
    (``SchedulerResourceRequest.pairs``) against the watched queue. ``repays_debt``: on release,
    ``on_release`` returns one unit of debt back for a group in debt, and nothing otherwise
    (``False``: it always returns ``NO_POLICY_CHANGE``)."""

    admit: AdmitFunction
    repays_debt: bool


def _overrides(policy: object, base: type) -> bool:
    """``policy``'s class replaces a method the fast path stands in for."""
    cls = type(policy)
    return cls is not base and any(
        getattr(cls, name) is not getattr(base, name)
        for name in ("evaluate", "on_acquire", "on_release")
    )


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
    demands = queue_view.demand(group, resource) > 0
    return _strict_share(group, weight, resource, demands, queue_view, ledger)


def pressure_share(
    group: str,
    weight: float,
    resource: str,
    queue_view: QueueView[SchedulableTask],
    ledger: TaskLedgerReader,
) -> float:
    """The share a group may hold while peers wait: what groups without queued demand do not
    hold, split by weight among the groups with queued demand (work-conserving among them)."""
    demands = queue_view.demand(group, resource) > 0
    others = _peers(weight, resource, demands, queue_view)
    return _pressure_share(group, weight, resource, demands, others, queue_view, ledger)


# The helpers below take what the caller already read (does ``group`` have queued demand for
# ``resource``, the queued peer weight), so one evaluation reads each value once.


def _peers(
    weight: float, resource: str, demands: bool, queue_view: QueueView[SchedulableTask]
) -> float:
    total = queue_view.demand_weight(resource)
    if demands:
        total -= weight
    return total if total > 1e-9 else 0.0


def _strict_share(
    group: str,
    weight: float,
    resource: str,
    demands: bool,
    queue_view: QueueView[SchedulableTask],
    ledger: TaskLedgerReader,
) -> float:
    others = queue_view.demand_weight(resource)
    if demands:
        others -= weight
    if others <= 1e-9:
        others = 0.0
    leased_only = ledger.leased_only_weight(resource, queue_view)
    if not demands and ledger.group_leased(group, resource):
        own = ledger.group_weight(group)
        leased_only -= own if own is not None else 0.0
    if leased_only > 0.0:
        others += leased_only
    return ledger.limit(resource) * weight / (weight + others)


def _pressure_share(
    group: str,
    weight: float,
    resource: str,
    demands: bool,
    others: float,
    queue_view: QueueView[SchedulableTask],
    ledger: TaskLedgerReader,
) -> float:
    held_elsewhere = ledger.leased_only_held(resource, queue_view)
    if not demands:
        held_elsewhere -= ledger.group_leased(group, resource)
    return (ledger.limit(resource) - held_elsewhere) * weight / (weight + others)


def _group_cap(
    resource: str, held: int, bound: str, value: float, level_bound: float | None
) -> PolicyDecision:
    return PolicyDecision(
        allowed=False,
        reason=TaskDenialReason.GROUP_CAP,
        resource=resource,
        detail=f"holds {held} of {resource}, {bound} {value:.2f}",
        level_bound=level_bound,
    )


def _cap_bound(held: int, weight: float, demands: bool) -> float | None:
    """The level bound of a cap at the pressure share. With ``demands`` the group is one of the
    ``Q`` contenders, so ``held >= (limit - H) * w / Q`` reads ``held / w >= level``."""
    return held / weight if demands else None


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
        spec = item.group
        group = spec.key
        weight = spec.weight
        for resource in item.request.amounts:
            demands = queue_view.demand(group, resource) > 0
            others = queue_view.demand_weight(resource)
            if demands:
                others -= weight
            if others <= 1e-9:
                continue  # no peer pressure on this resource
            held = ledger.group_leased(group, resource)
            # The pressure share, inline (this is the dispatch path).
            outside = ledger.leased_only_held(resource, queue_view)
            if not demands:
                outside -= held
            share = (ledger.limit(resource) - outside) * weight / (weight + others)
            if held >= share:
                return _group_cap(
                    resource, held, "weighted share", share, _cap_bound(held, weight, demands)
                )
        return ALLOWED

    def on_acquire(
        self,
        item: SchedulableTask,
        queue_view: QueueView[SchedulableTask],
        ledger: TaskLedgerReader,
    ) -> PolicyStateDelta:
        return NO_POLICY_CHANGE

    def on_release(self, group: str, ledger: TaskLedgerReader) -> PolicyStateDelta:
        return NO_POLICY_CHANGE

    def bind(self, tables: PolicyTables) -> BoundPolicy | None:
        """The capacity check, then ``evaluate`` (``on_acquire`` changes nothing), as one call
        on ``tables``."""
        if _overrides(self, StrictFairTaskAdmissionPolicy):
            return None
        limits = tables.limits
        leased = tables.leased
        group_leased = tables.group_leased
        outside_held = tables.outside_held
        queued_demand = tables.queued_demand
        demand_weight = tables.demand_weight

        def admit(group: str, weight: float, pairs: tuple[tuple[str, int], ...]) -> AdmitAnswer:
            positive = True
            for resource, amount in pairs:
                if leased[resource] + amount > limits[resource]:
                    return NO_ROOM
                if amount <= 0:
                    positive = False
            held_by = group_leased.get(group)
            if not held_by and positive and weight > 0:
                return ADMIT  # holds nothing: below every share (module docstring)
            # ``evaluate``, line for line, on the tables.
            queued = queued_demand.get(group) or _NOTHING
            for resource, _ in pairs:
                demands = resource in queued  # ``queue_view.demand(...) > 0``
                others = demand_weight.get(resource, 0.0)
                if demands:
                    others -= weight
                if others <= 1e-9:
                    continue
                held = held_by.get(resource, 0) if held_by else 0
                outside = outside_held[resource]
                if not demands:
                    outside -= held
                if held >= (limits[resource] - outside) * weight / (weight + others):
                    return (DENIED, resource, held / weight if demands else None)
            return ADMIT

        return BoundPolicy(admit, False)


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
        spec = item.group
        group = spec.key
        weight = spec.weight
        amounts = item.request.amounts
        debt = ledger.debt(group)
        if debt:
            for resource in amounts:
                if queued_peer_weight(group, weight, resource, queue_view):
                    # Only the group's own completions or the peers leaving lift it.
                    return PolicyDecision(
                        allowed=False,
                        reason=TaskDenialReason.BORROW_DEBT,
                        resource=resource,
                        detail=f"owes {debt} borrowed lease(s) while a peer group waits",
                        level_bound=math.inf,
                    )
        for resource, amount in amounts.items():
            held = ledger.group_leased(group, resource)
            demands = queue_view.demand(group, resource) > 0
            others = queue_view.demand_weight(resource)
            if demands:
                others -= weight
            if others > 1e-9:
                # The pressure share, inline (this is the dispatch path).
                outside = ledger.leased_only_held(resource, queue_view)
                if not demands:
                    outside -= held
                share = (ledger.limit(resource) - outside) * weight / (weight + others)
                if held < share:
                    continue
                return _group_cap(
                    resource, held, "weighted share", share, _cap_bound(held, weight, demands)
                )
            share = _strict_share(group, weight, resource, demands, queue_view, ledger)
            if held < share:
                continue
            ceiling = share + math.ceil(self._ceiling_fraction * ledger.limit(resource))
            if held + amount > ceiling:
                # Without pressure: a peer arriving or leased-only weight moving may lift it.
                return _group_cap(resource, held, "borrow ceiling", ceiling, None)
        return ALLOWED

    def on_acquire(
        self,
        item: SchedulableTask,
        queue_view: QueueView[SchedulableTask],
        ledger: TaskLedgerReader,
    ) -> PolicyStateDelta:
        spec = item.group
        group = spec.key
        weight = spec.weight
        for resource in item.request.amounts:
            held = ledger.group_leased(group, resource)
            if not held and weight > 0:
                continue  # the share is > 0 (limit >= 1): holding nothing is below it
            demands = queue_view.demand(group, resource) > 0
            if held >= _strict_share(group, weight, resource, demands, queue_view, ledger):
                return PolicyStateDelta(group=group, debt_change=1)
        return NO_POLICY_CHANGE

    def on_release(self, group: str, ledger: TaskLedgerReader) -> PolicyStateDelta:
        if ledger.debt(group):
            return PolicyStateDelta(group=group, debt_change=-1)
        return NO_POLICY_CHANGE

    def bind(self, tables: PolicyTables) -> BoundPolicy | None:
        """The capacity check, then ``evaluate`` and ``on_acquire``, as one call on ``tables``."""
        if _overrides(self, BoundedBorrowTaskAdmissionPolicy):
            return None
        limits = tables.limits
        leased = tables.leased
        group_leased = tables.group_leased
        group_weight = tables.group_weight
        debt_of = tables.debt
        outside_held = tables.outside_held
        outside_weight = tables.outside_weight
        queued_demand = tables.queued_demand
        demand_weight = tables.demand_weight
        fraction = self._ceiling_fraction
        inf = math.inf
        ceil = math.ceil

        def admit(group: str, weight: float, pairs: tuple[tuple[str, int], ...]) -> AdmitAnswer:
            positive = True
            for resource, amount in pairs:
                if leased[resource] + amount > limits[resource]:
                    return NO_ROOM
                if amount <= 0:
                    positive = False
            if weight <= 0:
                return _UNDECIDED_ANSWER  # ``on_acquire`` treats it apart; not on this path
            held_by = group_leased.get(group) or _NOTHING
            if not held_by and positive and group not in debt_of:
                return ADMIT  # holds nothing, owes nothing: below every share (module docstring)
            queued = queued_demand.get(group) or _NOTHING
            if debt_of.get(group):
                for resource, _ in pairs:  # ``queued_peer_weight``
                    peers = demand_weight.get(resource, 0.0)
                    if resource in queued:
                        peers -= weight
                    if peers > 1e-9:
                        return (DENIED, resource, inf)
            borrows = False
            for resource, amount in pairs:
                held = held_by.get(resource, 0)
                demands = resource in queued  # ``queue_view.demand(...) > 0``
                others = demand_weight.get(resource, 0.0)
                if demands:
                    others -= weight
                limit = limits[resource]
                pressed = others > 1e-9
                if pressed:
                    outside = outside_held[resource]
                    if not demands:
                        outside -= held
                    if held >= (limit - outside) * weight / (weight + others):
                        return (DENIED, resource, held / weight if demands else None)
                    if not held or borrows:
                        continue  # ``on_acquire`` needs no strict share here
                    strict_others = others
                else:
                    strict_others = 0.0
                # ``_strict_share``.
                leased_only = outside_weight[resource]
                if not demands and held:
                    own = group_weight.get(group)
                    leased_only -= own if own is not None else 0.0
                if leased_only > 0.0:
                    strict_others += leased_only
                share = limit * weight / (weight + strict_others)
                if held < share:
                    continue
                if not pressed and held + amount > share + ceil(fraction * limit):
                    return (DENIED, resource, None)  # the borrow ceiling, without pressure
                if held:
                    borrows = True  # ``on_acquire``: held at or above the strict share
            return ADMIT_BORROWING if borrows else ADMIT

        return BoundPolicy(admit, True)


def make_policy(
    kind: TaskAdmissionPolicyKind, *, borrow_ceiling_fraction: float = 0.5
) -> TaskAdmissionPolicy:
    if kind is TaskAdmissionPolicyKind.STRICT_FAIR:
        return StrictFairTaskAdmissionPolicy()
    return BoundedBorrowTaskAdmissionPolicy(borrow_ceiling_fraction=borrow_ceiling_fraction)
