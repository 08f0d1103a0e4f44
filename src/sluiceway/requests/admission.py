"""Request admission: may this concrete model request go now (SPEC §6.2, §6.3, §6.5).

Each provider/model has a static aggregate cap over all its domains, one weighted-fair waiter
queue and a circuit breaker; each domain has a limit read from a :class:`RequestLimit` (static or
adaptive) which may also impose a cooldown. Optional rpm / tpm budgets (per provider/model and
per shared account key, :mod:`sluiceway.requests.budgets`) are charged in the step that grants a
lease and settled at its release. Every state change that hands out capacity goes through
``_assign`` (synchronous), which resolves waiter futures with their lease before the waiters
run. Cooldown ends, ramp steps and budget windows wake waiters by a timer, never by polling.
Every lease is released exactly once. Request admission events (SPEC §9.1) are built only when
a sink of the controller's ``EventBus`` listens; events about one acquire are emitted in the
caller's context.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import itertools
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, TypedDict

from sluiceway.context import TaskCorrelation, current_task
from sluiceway.errors import EngineError, RequestAdmissionError
from sluiceway.fair_queue import QueueEntry, WeightedFairQueue
from sluiceway.observability import EventBus, EventKind
from sluiceway.observability.codes import (
    LimitChangeCode,
    PacingWindowCode,
    ReleaseDiagnosticCode,
    RequestDenialCode,
    RequestDomainCode,
    RequestOutcomeCode,
)
from sluiceway.observability.request_events import (
    RequestAcquireDenied,
    RequestEffectiveCapChanged,
    RequestFullyRecovered,
    RequestLeaseAcquired,
    RequestLeaseReleased,
    RequestLimitDecreased,
    RequestLimitIncreased,
    RequestPacingHeld,
    RequestQueueDrained,
    RequestQueueFormed,
    RequestRateLimited,
    RequestReleaseDiagnostic,
    RequestResourceRegistered,
    RequestSoftCeilingRecovered,
    RequestWaitCancelled,
    RequestWaitCompleted,
    RequestWaitStarted,
    RequestWaitTimeout,
)
from sluiceway.rate_limits import RateLimitHeaders
from sluiceway.requests.budgets import (
    BudgetCharge,
    BudgetKind,
    BudgetLimits,
    BudgetStatistics,
    RequestBudgets,
    RollingBudget,
)
from sluiceway.requests.keys import ProviderModelKey, RequestDomain, RequestResourceKey
from sluiceway.requests.limits import (
    PRESSURE_OUTCOMES,
    AdaptiveLimitSettings,
    AdaptiveRequestLimit,
    LimitPhase,
    LimitReason,
    RequestLimit,
    RequestLimitFactory,
    adaptive_limits,
    static_limits,
)
from sluiceway.requests.outcomes import RequestReleaseOutcome
from sluiceway.requests.pacing import PacedKind, PacedWindow
from sluiceway.values import fast_init

DEFAULT_GROUP = "default"


# Outcomes that count as "failing" for the circuit breaker (a success resets it).
_FAILING_OUTCOMES = frozenset(
    {
        RequestReleaseOutcome.RATE_LIMITED,
        RequestReleaseOutcome.PROVIDER_FAILURE,
        RequestReleaseOutcome.PROVIDER_TIMEOUT,
    }
)


class DenialReason(enum.Enum):
    NO_CAPACITY = "no_capacity"
    COOLDOWN = "cooldown"
    QUEUED_WAITERS_AHEAD = "queued_waiters_ahead"
    SHUTDOWN = "shutdown"
    TIMEOUT = "timeout"
    UNKNOWN_RESOURCE = "unknown_resource"
    BREAKER_OPEN = "breaker_open"


class BreakerState(enum.Enum):
    """Circuit breaker of one provider/model (SPEC §5.4)."""

    CLOSED = "closed"  # normal admission
    OPEN = "open"  # no success for too long while failing: requests fail fast
    HALF_OPEN = "half_open"  # one probe request may go; its outcome closes or reopens


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestAdmissionSettings:
    """Controller-wide settings. ``breaker_open_after_seconds=None`` disables the breaker."""

    breaker_open_after_seconds: float | None = 120.0
    breaker_probe_interval_seconds: float = 30.0

    def __post_init__(self) -> None:
        after = self.breaker_open_after_seconds
        if (after is not None and after <= 0) or self.breaker_probe_interval_seconds <= 0:
            raise EngineError(
                "RequestAdmissionSettings needs breaker_open_after_seconds > 0 (or None) and "
                f"breaker_probe_interval_seconds > 0, got {after} and "
                f"{self.breaker_probe_interval_seconds}"
            )


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """Schedules a callback at a clock time; ``None`` when no timer can be set (no loop)."""

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle | None: ...


class _LoopTimers:
    """Timers on the running event loop, converting from the controller's clock.

    Callbacks run in an empty context: a cooldown end or ramp step belongs to no task, so the
    events it causes carry no correlation (not that of the task whose release armed the timer).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None  # deadlines are then applied lazily by the next acquire
        return loop.call_later(
            max(0.0, when - self._clock()), callback, context=contextvars.Context()
        )


class ReleaseResult(enum.Enum):
    """What ``release`` did. Only ``OK`` changed capacity; the others are diagnostics."""

    OK = "ok"
    DUPLICATE = "duplicate"
    FOREIGN = "foreign"
    UNKNOWN = "unknown"

    @property
    def released(self) -> bool:
        return self is ReleaseResult.OK


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestAdmissionItem:
    """One request asking for a lease: resource, fairness group and weight, correlation.

    ``estimated_tokens`` is what a ``tpm`` budget reserves at the grant (settled at release to
    the usage the provider reported); it matters only where such a budget is set.
    """

    resource: RequestResourceKey
    group: str = DEFAULT_GROUP
    weight: int = 1
    queue_wait_timeout_seconds: float | None = None
    correlation: TaskCorrelation | None = None
    attempt_id: int = 0
    estimated_tokens: int = 0

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise EngineError(
                f"request admission item for {self.resource} has weight {self.weight}; "
                "fairness weights must be >= 1"
            )
        if self.queue_wait_timeout_seconds is not None and self.queue_wait_timeout_seconds < 0:
            raise EngineError(
                f"request admission item for {self.resource} has queue_wait_timeout_seconds="
                f"{self.queue_wait_timeout_seconds}; use None (wait forever) or a value >= 0"
            )
        if self.estimated_tokens < 0:
            raise EngineError(
                f"request admission item for {self.resource} has estimated_tokens="
                f"{self.estimated_tokens}; token estimates must be >= 0"
            )

    @classmethod
    def capture(
        cls,
        resource: RequestResourceKey,
        *,
        attempt_id: int,
        group: str | None = None,
        weight: int | None = None,
        queue_wait_timeout_seconds: float | None = None,
        estimated_tokens: int = 0,
    ) -> RequestAdmissionItem:
        """Build an item for the task running now (``sluiceway.context.current_task``).

        Explicit ``group``/``weight`` win; otherwise the task's group is used, and outside any
        task the group is ``"default"`` with weight 1.
        """
        correlation = current_task.get()
        if correlation is not None:
            group = correlation.group_key if group is None else group
            weight = correlation.group_weight if weight is None else weight
        return cls(
            resource=resource,
            group=DEFAULT_GROUP if group is None else group,
            weight=1 if weight is None else weight,
            queue_wait_timeout_seconds=queue_wait_timeout_seconds,
            correlation=correlation,
            attempt_id=attempt_id,
            estimated_tokens=estimated_tokens,
        )


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class RequestAdmissionLease:
    """Proof that one request may be in flight. Identity-compared; released exactly once."""

    lease_id: int
    resource: RequestResourceKey
    group: str
    attempt_id: int
    granted_at: float
    limit_at_grant: int
    owner: int = field(repr=False)
    reserved_tokens: int = 0  # charged to the tpm budgets of its provider/model, if any
    # Grants (and their estimated tokens) of its provider/model up to and including this one:
    # what a rate-limit report in its answer may already have counted.
    sequence: int = field(default=0, repr=False)
    token_sequence: int = field(default=0, repr=False)
    in_flight_at_grant: int = 0  # of its domain, itself included: the concurrency it went at
    estimated_tokens: int = field(default=0, repr=False)  # the item's estimate


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestAdmissionDenied:
    """Why ``try_acquire`` gave no lease. A budget refusal is ``no_capacity`` with
    ``budget_ready_at`` set: the clock time at which the budget admits this request."""

    reason: DenialReason
    queued_waiters_ahead: int = 0
    budget_ready_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestDomainStatistics:
    resource: RequestResourceKey
    limit: int
    in_flight: int
    waiters: int
    granted_total: int
    released_total: int
    max_in_flight: int
    max_waiters: int
    outcomes: Mapping[RequestReleaseOutcome, int]
    limit_decreases: int = 0
    limit_increases: int = 0
    min_limit: int = 0
    cooldowns: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderModelStatistics:
    provider_model: ProviderModelKey
    static_cap: int
    in_flight: int
    waiters: int
    granted_total: int
    released_total: int
    max_in_flight: int
    max_waiters: int
    domains: Mapping[RequestDomain, RequestDomainStatistics]
    breaker: BreakerState = BreakerState.CLOSED
    breaker_openings: int = 0
    budgets: tuple[BudgetStatistics, ...] = ()
    budget_denials: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestAdmissionStatistics:
    provider_models: Mapping[ProviderModelKey, ProviderModelStatistics]
    live_leases: int
    in_flight: int
    waiters: int
    granted_total: int
    released_total: int
    release_diagnostics: int
    waiters_cancelled: int
    waiters_timed_out: int
    waiters_shut_down: int
    grants_returned_on_cancel: int
    shutting_down: bool
    waiters_failed_by_breaker: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DomainPressure:
    """Read-only state of one request resource at ``captured_at`` (SPEC §6.5)."""

    captured_at: float
    sequence: int
    resource: RequestResourceKey
    effective_max: int
    limit: int
    in_flight: int
    waiters: int
    blocked_until: float | None
    cooldown_remaining_seconds: float
    rate_limit_ceiling: int | None
    consecutive_rate_limits: int
    last_outcome: RequestReleaseOutcome | None
    release_diagnostics: int
    phase: LimitPhase | None = None  # of an adaptive limit: starting, recovering, holding, probing


class BudgetScope(enum.Enum):
    MODEL = "model"  # the rpm / tpm of one provider/model
    ACCOUNT = "account"  # a budget key shared by several provider/models


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetPressure:
    """One budget a provider/model's leases are charged to, at ``captured_at``."""

    scope: BudgetScope
    name: str  # the provider/model, or the account's budget key
    kind: BudgetKind
    limit: int
    used: int  # inside the rolling window; may exceed ``limit`` after usage above the estimate
    ready_in_seconds: float  # until one more request (rpm) or one more token (tpm) fits


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderModelPressure:
    """Read-only state of one provider/model and its domains."""

    provider_model: ProviderModelKey
    static_cap: int
    in_flight: int
    waiters: int
    aliases: tuple[str, ...]
    breaker: BreakerState
    domains: Mapping[RequestDomain, DomainPressure]
    budgets: tuple[BudgetPressure, ...] = ()
    paced_in_seconds: float = 0.0  # until a window the provider reports admits one more request

    @property
    def budget_blocked(self) -> bool:
        """True while a budget of this provider/model admits no further request."""
        return any(budget.ready_in_seconds > 0 for budget in self.budgets)

    @property
    def headroom(self) -> int:
        """Leases a new request could get now across the aggregate cap (0 while blocked by the
        breaker or a budget)."""
        if self.breaker is not BreakerState.CLOSED or self.budget_blocked:
            return 0
        return max(0, self.static_cap - self.in_flight)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestPressureSnapshot:
    """One internally consistent picture of request admission, built in one synchronous step."""

    captured_at: float
    sequence: int
    provider_models: Mapping[ProviderModelKey, ProviderModelPressure]

    def domain(self, resource: RequestResourceKey) -> DomainPressure | None:
        pool = self.provider_models.get(resource.provider_model)
        return None if pool is None else pool.domains.get(resource.domain)


class RequestPressure:
    """Read-only snapshot provider over one controller; building a snapshot costs O(domains)."""

    __slots__ = ("_controller",)

    def __init__(self, controller: RequestAdmissionController) -> None:
        self._controller = controller

    def snapshot(self) -> RequestPressureSnapshot:
        return self._controller._pressure_snapshot()


class _Budget:
    """One rolling budget and the provider/models whose leases are charged to it."""

    __slots__ = ("budget", "name", "pools", "scope")

    def __init__(self, scope: BudgetScope, name: str, budget: RollingBudget) -> None:
        self.scope = scope
        self.name = name
        self.budget = budget
        self.pools: list[_Pool] = []

    def amount(self, item: RequestAdmissionItem) -> int:
        return 1 if self.budget.kind is BudgetKind.REQUESTS else item.estimated_tokens


class _Pool:
    """Mutable state of one provider/model: aggregate cap, in flight, waiter queue, breaker,
    budgets and the timer that wakes waiters a budget holds back."""

    __slots__ = (
        "breaker",
        "breaker_openings",
        "budget_deadline",
        "budget_denials",
        "budget_timer",
        "budgets",
        "cap",
        "failing_since",
        "granted_tokens",
        "granted_total",
        "in_flight",
        "key",
        "max_in_flight",
        "max_waiters",
        "paced",
        "pacers",
        "pacing_held",
        "probe_at",
        "probe_lease_id",
        "queue",
        "released_total",
        "token_scale",
    )

    def __init__(self, key: ProviderModelKey, cap: int) -> None:
        self.key = key
        self.cap = cap
        self.in_flight = 0
        self.max_in_flight = 0
        self.max_waiters = 0
        self.granted_total = 0
        self.released_total = 0
        self.queue: WeightedFairQueue[_Waiter] = WeightedFairQueue()
        self.breaker = BreakerState.CLOSED
        self.breaker_openings = 0
        self.failing_since: float | None = None
        self.probe_at = 0.0
        # The one lease a half-open breaker let through, until its release resolves it.
        self.probe_lease_id: int | None = None
        self.budgets: tuple[_Budget, ...] = ()
        self.budget_deadline: float | None = None
        self.budget_timer: TimerHandle | None = None
        self.budget_denials = 0
        # Windows the provider reports in its answers (requests, tokens); ``paced`` once any
        # answer reported one, so a provider that reports none costs nothing.
        self.pacers = (PacedWindow(PacedKind.REQUESTS), PacedWindow(PacedKind.TOKENS))
        self.paced = False
        self.pacing_held = False  # a paced window holds a waiter back (for the event's edge)
        self.granted_tokens = 0
        # Reported usage over the estimate, a moving average: a token window paces by the
        # tokens requests will use, which the estimate (prompt / 4 + max_tokens) may miss.
        self.token_scale = 1.0


class RequestEventTags(TypedDict):
    """The fields every request event names its resource with."""

    provider: str
    model: str
    domain: RequestDomainCode


def request_event_tags(resource: RequestResourceKey) -> RequestEventTags:
    """``provider``, ``model`` and ``domain`` of a request event about ``resource``."""
    key = resource.provider_model
    return RequestEventTags(
        provider=key.provider,
        model=key.model_id,
        domain=RequestDomainCode(resource.domain.value),
    )


class _Domain:
    """Mutable state of one request resource (provider/model + domain)."""

    __slots__ = (
        "consecutive_rate_limits",
        "cooldowns",
        "cooling",
        "deadline",
        "effective_max",
        "granted_total",
        "in_flight",
        "last_outcome",
        "limit",
        "limit_decreases",
        "limit_increases",
        "limit_source",
        "max_in_flight",
        "max_waiters",
        "min_limit",
        "outcomes",
        "pool",
        "recovering",
        "released_total",
        "resource",
        "tags",
        "timer",
        "waiting",
    )

    def __init__(self, resource: RequestResourceKey, pool: _Pool, limit: RequestLimit) -> None:
        self.resource = resource
        self.tags = request_event_tags(resource)
        self.pool = pool
        self.limit_source = limit
        self.limit = _checked_limit(resource, limit.limit)
        self.effective_max = (
            limit.effective_max if isinstance(limit, AdaptiveRequestLimit) else pool.cap
        )
        # True from a pressure decrease until the limit is back at effective_max.
        self.recovering = False
        self.min_limit = self.limit
        self.cooling = False
        self.deadline: float | None = None
        self.timer: TimerHandle | None = None
        self.in_flight = 0
        self.waiting = 0
        self.max_in_flight = 0
        self.max_waiters = 0
        self.granted_total = 0
        self.released_total = 0
        self.limit_decreases = 0
        self.limit_increases = 0
        self.cooldowns = 0
        self.consecutive_rate_limits = 0
        self.last_outcome: RequestReleaseOutcome | None = None
        self.outcomes = dict.fromkeys(RequestReleaseOutcome, 0)

    def has_capacity(self) -> bool:
        return (
            not self.cooling and self.in_flight < self.limit and self.pool.in_flight < self.pool.cap
        )


class _Waiter:
    __slots__ = ("domain", "future", "in_flight_at_grant", "item", "timer", "waiter_id")

    def __init__(
        self,
        waiter_id: int,
        item: RequestAdmissionItem,
        domain: _Domain,
        future: asyncio.Future[RequestAdmissionLease],
    ) -> None:
        self.waiter_id = waiter_id
        self.item = item
        self.domain = domain
        self.future = future
        self.timer: TimerHandle | None = None
        self.in_flight_at_grant = 0


def _checked_limit(resource: RequestResourceKey, limit: int) -> int:
    if limit < 1:
        raise EngineError(f"the request limit of {resource} must be >= 1, got {limit}")
    return limit


def _is_eligible(entry: QueueEntry[_Waiter]) -> bool:
    return entry.item.domain.has_capacity()


def _settle(
    charges: tuple[tuple[_Budget, BudgetCharge], ...], amount: int, now: float, *, tokens_only: bool
) -> list[_Pool]:
    """Correct a lease's charges to ``amount``; returns the pools of budgets that got room."""
    freed: list[_Pool] = []
    for budget, charge in charges:
        if tokens_only and budget.budget.kind is not BudgetKind.TOKENS:
            continue
        if budget.budget.settle(charge, amount, now) < 0:
            freed.extend(budget.pools)
    return freed


def _budget_pressure(budget: _Budget, now: float) -> BudgetPressure:
    rolling = budget.budget
    return BudgetPressure(
        scope=budget.scope,
        name=budget.name,
        kind=rolling.kind,
        limit=rolling.limit,
        used=rolling.used(now),
        ready_in_seconds=rolling.ready_at(1, now) - now,
    )


def _budget_ready_at(pool: _Pool, item: RequestAdmissionItem, now: float) -> float:
    """When every budget of ``pool`` can be charged for ``item`` (``now`` if it can be now)."""
    ready_at = now
    for budget in pool.budgets:
        at = budget.budget.ready_at(budget.amount(item), now)
        if at > ready_at:
            ready_at = at
    return ready_at


def _paced_ready_at(pool: _Pool, item: RequestAdmissionItem, now: float) -> float:
    """When the windows ``pool``'s provider reports have room for ``item``."""
    requests, tokens = pool.pacers
    ready_at = requests.ready_at(1, now)
    if item.estimated_tokens:
        needed = math.ceil(item.estimated_tokens * pool.token_scale)
        ready_at = max(ready_at, tokens.ready_at(needed, now))
    return ready_at


def _breaker_cap(pool: _Pool) -> int:
    """The provider/model's cap as its breaker lets it be used: 0 open, 1 probing."""
    if pool.breaker is BreakerState.OPEN:
        return 0
    if pool.breaker is BreakerState.HALF_OPEN:
        return 1
    return pool.cap


_LIMIT_REASONS = {reason: LimitChangeCode(reason.value) for reason in LimitReason}


def _decrease_reason(source: RequestLimit, cause: RequestReleaseOutcome | None) -> LimitChangeCode:
    if cause is None:
        return LimitChangeCode.STARTUP_RAMP  # only a ramp moves the limit as time passes
    if cause in PRESSURE_OUTCOMES:
        if isinstance(source, AdaptiveRequestLimit) and source.reason is not None:
            return _LIMIT_REASONS[source.reason]
        return LimitChangeCode.RATE_LIMITED
    return LimitChangeCode.LATENCY_GRADIENT


def _increase_reason(source: RequestLimit, cause: RequestReleaseOutcome | None) -> LimitChangeCode:
    if cause is None:
        return LimitChangeCode.STARTUP_RAMP
    if isinstance(source, AdaptiveRequestLimit):
        if source.ramping:
            return LimitChangeCode.STARTUP_RAMP
        if source.latency_bound:
            return LimitChangeCode.LATENCY_GRADIENT
        if source.reason is not None:
            return _LIMIT_REASONS[source.reason]
    return LimitChangeCode.RECOVERY


_TOKEN_SCALE_ALPHA = 0.2
_owner_ids = itertools.count(1)
_DENIED_SHUTDOWN = RequestAdmissionDenied(reason=DenialReason.SHUTDOWN)
_DENIED_NO_CAPACITY = RequestAdmissionDenied(reason=DenialReason.NO_CAPACITY)
_DENIED_COOLDOWN = RequestAdmissionDenied(reason=DenialReason.COOLDOWN)
_DENIED_UNKNOWN = RequestAdmissionDenied(reason=DenialReason.UNKNOWN_RESOURCE)
_DENIED_BREAKER = RequestAdmissionDenied(reason=DenialReason.BREAKER_OPEN)


class RequestAdmissionController:
    """Grants request leases per provider/model (aggregate cap) and domain (limit, cooldown).

    ``try_acquire`` never blocks and never jumps queued waiters. ``acquire`` waits in the
    provider/model's weighted-fair queue (fair across groups, FIFO within one) and raises
    :class:`RequestAdmissionError` on queue-wait timeout, shutdown, an open circuit breaker or
    an unknown resource. Cancelled while waiting: the waiter leaves the queue and
    ``CancelledError`` propagates. Cancelled after being granted but before running: the lease
    is released as ``local_cancelled`` (waking the next waiter) and ``CancelledError``
    propagates. ``acquire_sync`` is the same wait for code running in a worker thread.

    ``clock`` and ``timers`` are collaborators: the default clock is ``time.monotonic`` and the
    default timers run on the event loop; tests pass a fake clock that also schedules timers.
    ``events`` receives the request admission events (default: a bus with no sinks, so none is
    built); their ``captured_at`` is read from ``clock``. ``budgets`` adds rpm / tpm budgets per
    provider/model and per shared account key: a lease is granted only when every budget of its
    provider/model can be charged, and a waiter held by a budget is woken by a timer when the
    window has room. Every acquisition, blocking or not,
    emits ``request_wait_started`` and then exactly one of ``request_wait_completed``,
    ``request_wait_timeout``, ``request_wait_cancelled`` or ``request_acquire_denied``.
    """

    def __init__(
        self,
        static_caps: Mapping[ProviderModelKey, int],
        *,
        clock: Callable[[], float] = time.monotonic,
        limits: RequestLimitFactory = static_limits,
        settings: RequestAdmissionSettings | None = None,
        timers: Timers | None = None,
        aliases: Mapping[ProviderModelKey, tuple[str, ...]] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        events: EventBus | None = None,
        budgets: RequestBudgets | None = None,
    ) -> None:
        for key, cap in static_caps.items():
            if cap < 1:
                raise EngineError(
                    f"the static cap of {key} must be >= 1, got {cap}; set "
                    "max_parallel_requests >= 1 on every alias of this model"
                )
        # Mutable state, all of it:
        self._pools = {key: _Pool(key, cap) for key, cap in static_caps.items()}
        self._domains: dict[RequestResourceKey, _Domain] = {}
        self._live: dict[int, RequestAdmissionLease] = {}
        # Budget charges of each live lease (only for provider/models with budgets).
        self._charges: dict[int, tuple[tuple[_Budget, BudgetCharge], ...]] = {}
        self._next_lease_id = 0
        self._next_waiter_id = 0
        self._release_diagnostics = 0
        self._waiters_cancelled = 0
        self._waiters_timed_out = 0
        self._waiters_shut_down = 0
        self._waiters_failed_by_breaker = 0
        self._grants_returned = 0
        self._snapshot_sequence = 0
        self._shutting_down = False
        self._loop = loop
        # Collaborators:
        self._owner = next(_owner_ids)
        self._clock = clock
        self._limits = limits
        self._settings = settings or RequestAdmissionSettings()
        self._timers: Timers = timers or _LoopTimers(clock)
        self._aliases = dict(aliases or {})
        self._pressure = RequestPressure(self)
        self._events = events if events is not None else EventBus()
        if budgets is not None:
            self._install_budgets(budgets)

    def _install_budgets(self, budgets: RequestBudgets) -> None:
        unknown = [
            str(key) for key in (*budgets.models, *budgets.account_of) if key not in self._pools
        ]
        if unknown:
            known = ", ".join(str(key) for key in self._pools) or "none"
            raise EngineError(
                f"budgets name provider/models that request admission does not know: "
                f"{', '.join(sorted(set(unknown)))}; known provider/models: {known}"
            )
        window = budgets.held_seconds

        def made(scope: BudgetScope, name: str, limits: BudgetLimits) -> list[_Budget]:
            return [
                _Budget(scope, name, RollingBudget(kind, limit, window))
                for kind, limit in (
                    (BudgetKind.REQUESTS, limits.rpm),
                    (BudgetKind.TOKENS, limits.tpm),
                )
                if limit is not None
            ]

        accounts = {
            name: made(BudgetScope.ACCOUNT, name, limits)
            for name, limits in budgets.accounts.items()
        }
        for key, pool in self._pools.items():
            own = made(BudgetScope.MODEL, str(key), budgets.models.get(key, BudgetLimits()))
            account = budgets.account_of.get(key)
            shared = accounts[account] if account is not None else []
            pool.budgets = (*own, *shared)
            for budget in pool.budgets:
                budget.pools.append(pool)

    # -- acquiring ---------------------------------------------------------------------------

    def try_acquire(
        self, item: RequestAdmissionItem
    ) -> RequestAdmissionLease | RequestAdmissionDenied:
        """Grant a lease now or say why not; never waits and never overtakes a queued waiter."""
        result = self._try_acquire(item)
        if isinstance(result, RequestAdmissionLease):
            self._emit_granted_at_once(item, result)
        else:
            self._emit_denied_at_once(item, RequestDenialCode(result.reason.value))
        return result

    def _try_acquire(
        self, item: RequestAdmissionItem
    ) -> RequestAdmissionLease | RequestAdmissionDenied:
        """``try_acquire`` without its events (``acquire`` emits its own)."""
        if self._shutting_down:
            return _DENIED_SHUTDOWN
        domain = self._domains.get(item.resource)
        if domain is None:
            domain = self._register(item.resource)
            if domain is None:
                return _DENIED_UNKNOWN
        pool = domain.pool
        deadline = domain.deadline
        if deadline is not None and self._clock() >= deadline:
            self._refresh(domain)  # a deadline passed without its timer (no loop running)
        if pool.breaker is not BreakerState.CLOSED and not self._may_probe(domain):
            return _DENIED_BREAKER
        queued = len(pool.queue)
        if queued:
            return RequestAdmissionDenied(
                reason=DenialReason.QUEUED_WAITERS_AHEAD, queued_waiters_ahead=queued
            )
        if domain.cooling:
            return _DENIED_COOLDOWN
        if pool.in_flight >= pool.cap or domain.in_flight >= domain.limit:
            return _DENIED_NO_CAPACITY
        if pool.breaker is BreakerState.HALF_OPEN and pool.probe_lease_id is not None:
            return _DENIED_NO_CAPACITY  # the one probe is out; its outcome decides for the rest
        now = self._clock()  # one reading for the budget check and the charge
        if pool.budgets:
            ready_at = _budget_ready_at(pool, item, now)
            if ready_at > now:
                pool.budget_denials += 1
                return RequestAdmissionDenied(
                    reason=DenialReason.NO_CAPACITY, budget_ready_at=ready_at
                )
        if pool.paced:
            ready_at = _paced_ready_at(pool, item, now)
            if ready_at > now:
                self._pacing_holds(domain, ready_at, now)
                return RequestAdmissionDenied(
                    reason=DenialReason.NO_CAPACITY, budget_ready_at=ready_at
                )
        return self._grant(domain, item, now)

    async def acquire(self, item: RequestAdmissionItem) -> RequestAdmissionLease:
        """Wait for a lease; see the class docstring for what raises and what cancellation does."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        result = self._try_acquire(item)
        if isinstance(result, RequestAdmissionLease):
            self._emit_granted_at_once(item, result)
            return result
        reason = result.reason
        if reason is DenialReason.SHUTDOWN:
            self._emit_denied_at_once(item, RequestDenialCode.SHUTDOWN)
            raise self._shutdown_error(item.resource)
        if reason is DenialReason.BREAKER_OPEN:
            self._emit_denied_at_once(item, RequestDenialCode.BREAKER_OPEN)
            raise self._breaker_error(self._domains[item.resource].pool)
        if reason is DenialReason.UNKNOWN_RESOURCE:
            self._emit_denied_at_once(item, RequestDenialCode.UNKNOWN_RESOURCE)
            known = ", ".join(str(key) for key in self._pools) or "none"
            raise RequestAdmissionError(
                DenialReason.UNKNOWN_RESOURCE.value,
                f"no request admission is registered for {item.resource}; known provider/models: "
                f"{known} (every model alias must be given to the resolver the controller is "
                "built from)",
            )
        timeout_seconds = item.queue_wait_timeout_seconds
        domain = self._domains[item.resource]
        events = self._events
        started_at = self._clock()
        ahead = len(domain.pool.queue)
        # Trace sampling: detail events only for a traced task attempt (or outside any task).
        correlation = item.correlation
        traced = correlation is None or correlation.traced
        if traced and events.wants(EventKind.REQUEST_WAIT_STARTED):
            events.emit(
                RequestWaitStarted(
                    **domain.tags,
                    attempt_id=item.attempt_id,
                    waiters_ahead=ahead,
                    captured_at=started_at,
                )
            )
        if timeout_seconds == 0:
            self._waiters_timed_out += 1
            if events.wants(EventKind.REQUEST_WAIT_TIMEOUT):
                events.emit(
                    RequestWaitTimeout(
                        **domain.tags,
                        attempt_id=item.attempt_id,
                        waited_seconds=0.0,
                        captured_at=started_at,
                    )
                )
            raise self._timeout_error(domain, 0.0)
        self._next_waiter_id += 1
        waiter = _Waiter(self._next_waiter_id, item, domain, loop.create_future())
        self._enqueue(waiter)
        if ahead == 0 and events.wants(EventKind.REQUEST_QUEUE_FORMED):
            events.emit(RequestQueueFormed(**domain.tags, waiters=1, captured_at=started_at))
        if domain.pool.in_flight < domain.pool.cap:
            # Free capacity with queued waiters means they are held by their domain limits or
            # cooldowns; the newcomer may still be eligible, in fair order.
            self._assign(domain.pool)
        if timeout_seconds is not None and not waiter.future.done():
            # On the controller's timers, so a fake clock drives queue-wait timeouts too.
            waiter.timer = self._timers.call_at(
                started_at + timeout_seconds,
                functools.partial(self._expire, waiter, timeout_seconds),
            )
        try:
            lease = await waiter.future
        except BaseException as error:
            # The wait's end is emitted before a granted-then-cancelled lease is handed back.
            self._emit_wait_failed(waiter, started_at, error)
            self._abandon(waiter)
            raise
        finally:
            if waiter.timer is not None:
                waiter.timer.cancel()
        if traced and (
            events.wants(EventKind.REQUEST_WAIT_COMPLETED)
            or events.wants(EventKind.REQUEST_LEASE_ACQUIRED)
        ):
            self._emit_granted_after_wait(waiter, lease, started_at)
        return lease

    def acquire_sync(
        self, item: RequestAdmissionItem, *, loop: asyncio.AbstractEventLoop | None = None
    ) -> RequestAdmissionLease:
        """``acquire`` for a worker thread: blocks the thread until the loop grants a lease.

        Runs the wait on ``loop`` (default: the loop of the first async ``acquire`` or the one
        given to the constructor), in a copy of the calling thread's context, so its events
        carry the correlation the thread runs under. Calling it on the loop's own thread raises
        :class:`EngineError` (it would deadlock). If the thread is interrupted after the grant,
        the lease is handed back as ``local_cancelled``. Release with ``release_threadsafe``.
        """
        target = loop or self._loop
        if target is None:
            raise EngineError(
                "RequestAdmissionController.acquire_sync has no event loop to wait on; pass "
                "loop=... or build the controller with loop=..."
            )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is target:
            raise EngineError(
                "RequestAdmissionController.acquire_sync was called on the event loop's own "
                f"thread ({threading.current_thread().name}); await acquire() instead"
            )
        # run_coroutine_threadsafe schedules the task from this thread: the task's context is a
        # copy of this thread's, so ``current_task`` (and the events' correlation) carries over.
        future = asyncio.run_coroutine_threadsafe(self.acquire(item), target)
        try:
            return future.result()
        except BaseException:
            granted = (
                not future.cancel()
                and future.done()
                and not future.cancelled()
                and future.exception() is None
            )
            if granted:
                target.call_soon_threadsafe(self._return_grant, future.result())
            raise

    def release_threadsafe(
        self,
        lease: RequestAdmissionLease,
        outcome: RequestReleaseOutcome,
        *,
        retry_after_seconds: float | None = None,
        usage_tokens: int | None = None,
        rate_limit: RateLimitHeaders | None = None,
    ) -> None:
        """Schedule ``release`` on the controller's loop from a worker thread."""
        if self._loop is None:
            raise EngineError("release_threadsafe needs the loop the lease was acquired on")
        self._loop.call_soon_threadsafe(
            functools.partial(
                self.release,
                lease,
                outcome,
                retry_after_seconds=retry_after_seconds,
                usage_tokens=usage_tokens,
                rate_limit=rate_limit,
            )
        )

    # -- releasing ---------------------------------------------------------------------------

    def release(
        self,
        lease: RequestAdmissionLease,
        outcome: RequestReleaseOutcome,
        *,
        retry_after_seconds: float | None = None,
        usage_tokens: int | None = None,
        rate_limit: RateLimitHeaders | None = None,
    ) -> ReleaseResult:
        """Return a lease's capacity and report its outcome to the domain's limit.

        ``usage_tokens`` (the tokens the provider reported) settles the lease's tpm charges;
        without it the estimate reserved at the grant stays charged. ``rate_limit`` (the windows
        the answer reported) paces later grants of the provider/model (:mod:`.pacing`).
        Never raises for misuse: a second release, a lease of another controller or an unknown
        lease returns a diagnostic result and changes nothing. Raises :class:`EngineError` only
        when the controller's own counts are broken or ``usage_tokens`` is negative.
        """
        if usage_tokens is not None and usage_tokens < 0:
            raise EngineError(
                f"releasing lease {lease.lease_id} of {lease.resource} with usage_tokens="
                f"{usage_tokens}; reported usage must be >= 0 (or None when unknown)"
            )
        if lease.owner != self._owner:
            return self._diagnose(lease, ReleaseResult.FOREIGN)
        live = self._live.pop(lease.lease_id, None)
        if live is not lease:
            if live is not None:
                self._live[lease.lease_id] = live
                return self._diagnose(lease, ReleaseResult.UNKNOWN)
            if lease.lease_id <= self._next_lease_id:
                return self._diagnose(lease, ReleaseResult.DUPLICATE)
            return self._diagnose(lease, ReleaseResult.UNKNOWN)
        domain = self._domains[lease.resource]
        pool = domain.pool
        if domain.in_flight < 1 or pool.in_flight < 1:
            raise EngineError(
                f"releasing lease {lease.lease_id} of {lease.resource} found in-flight counts "
                f"{domain.in_flight} (domain) / {pool.in_flight} (provider/model) below 1"
            )
        now = self._clock()
        if rate_limit is not None:
            self._take_report(pool, lease, rate_limit, now)
        freed: list[_Pool] = []
        charges = self._charges.pop(lease.lease_id, None) if self._charges else None
        if usage_tokens is not None and lease.estimated_tokens > 0:
            ratio = usage_tokens / lease.estimated_tokens
            pool.token_scale += _TOKEN_SCALE_ALPHA * (ratio - pool.token_scale)
        if charges is not None and usage_tokens is not None:
            freed = _settle(charges, usage_tokens, now, tokens_only=True)
        in_flight_with_this = domain.in_flight
        domain.in_flight -= 1
        pool.in_flight -= 1
        domain.released_total += 1
        pool.released_total += 1
        domain.outcomes[outcome] += 1
        domain.last_outcome = outcome
        if outcome in PRESSURE_OUTCOMES:
            domain.consecutive_rate_limits += 1
        elif outcome is RequestReleaseOutcome.SUCCESS:
            domain.consecutive_rate_limits = 0
        was_cooling = domain.cooling
        domain.limit_source.on_outcome(
            outcome,
            now=now,
            limit_at_grant=lease.limit_at_grant,
            in_flight=in_flight_with_this,
            in_flight_at_grant=lease.in_flight_at_grant,
            retry_after_seconds=retry_after_seconds,
            latency_seconds=max(0.0, now - lease.granted_at),
        )
        events = self._events
        if outcome is RequestReleaseOutcome.RATE_LIMITED and events.wants(
            EventKind.REQUEST_RATE_LIMITED
        ):
            blocked_until = domain.limit_source.blocked_until
            events.emit(
                RequestRateLimited(
                    **domain.tags,
                    attempt_id=lease.attempt_id,
                    retry_after_seconds=retry_after_seconds,
                    cooldown_seconds=(
                        blocked_until - now
                        if blocked_until is not None and blocked_until > now
                        else None
                    ),
                    captured_at=now,
                )
            )
        self._refresh(domain, now=now, assign=False, cause=outcome)
        if domain.cooling and not was_cooling:
            domain.cooldowns += 1
        self._track_breaker(domain, lease.lease_id, outcome, now)
        if events.wants(EventKind.REQUEST_LEASE_RELEASED) and (
            (correlation := current_task.get()) is None or correlation.traced
        ):
            events.emit(
                RequestLeaseReleased(
                    **domain.tags,
                    attempt_id=lease.attempt_id,
                    lease_id=lease.lease_id,
                    outcome=RequestOutcomeCode(outcome.value),
                    in_flight=domain.in_flight,
                    limit=domain.limit,
                    captured_at=now,
                )
            )
        if pool.queue:
            self._assign(pool)
        for other in freed:
            # Usage below the estimate left room in a budget shared with other provider/models.
            if other is not pool and other.queue:
                self._assign(other)
        return ReleaseResult.OK

    def _diagnose(self, lease: RequestAdmissionLease, result: ReleaseResult) -> ReleaseResult:
        """Count (and report) a release that changed nothing."""
        self._release_diagnostics += 1
        if self._events.wants(EventKind.REQUEST_RELEASE_DIAGNOSTIC):
            self._events.emit(
                RequestReleaseDiagnostic(
                    **request_event_tags(lease.resource),
                    lease_id=lease.lease_id,
                    code=ReleaseDiagnosticCode(result.value),
                    captured_at=self._clock(),
                )
            )
        return result

    def shutdown(self) -> None:
        """Deny further acquisitions and fail every waiter; live leases can still be released."""
        if self._shutting_down:
            return
        self._shutting_down = True
        for pool in self._pools.values():
            self._waiters_shut_down += self._fail_waiters(
                pool, lambda waiter: self._shutdown_error(waiter.item.resource)
            )
        for domain in self._domains.values():
            if domain.timer is not None:
                domain.timer.cancel()
                domain.timer = None
        for pool in self._pools.values():
            self._arm_budget_timer(pool, math.inf)

    # -- reading -----------------------------------------------------------------------------

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def clock(self) -> Callable[[], float]:
        """The clock leases, deadlines and event timestamps are read from."""
        return self._clock

    @property
    def events(self) -> EventBus:
        return self._events

    @property
    def pressure(self) -> RequestPressure:
        """The read-only snapshot provider of this controller (SPEC §6.5)."""
        return self._pressure

    def has_capacity(self, resource: RequestResourceKey) -> bool:
        """True when a ``try_acquire`` for ``resource`` would be granted now (for a budget:
        one more request of one token)."""
        if self._shutting_down:
            return False
        domain = self._domains.get(resource)
        if domain is None:
            pool = self._pools.get(resource.provider_model)
            if pool is None or pool.breaker is not BreakerState.CLOSED:
                return False
            return pool.in_flight < pool.cap and not self._budget_blocked(pool)
        pool = domain.pool
        return (
            pool.breaker is BreakerState.CLOSED
            and not pool.queue
            and domain.has_capacity()
            and not self._budget_blocked(pool)
        )

    def reserves_tokens(self, resource: RequestResourceKey) -> bool:
        """True when a tpm budget applies to ``resource`` (items then need a token estimate)."""
        pool = self._pools.get(resource.provider_model)
        return pool is not None and (
            pool.pacers[1].active
            or any(budget.budget.kind is BudgetKind.TOKENS for budget in pool.budgets)
        )

    def _budget_blocked(self, pool: _Pool) -> bool:
        if not pool.budgets and not pool.paced:
            return False
        now = self._clock()
        return (
            any(budget.budget.ready_at(1, now) > now for budget in pool.budgets)
            or pool.pacers[0].ready_at(1, now) > now
        )

    def statistics(self) -> RequestAdmissionStatistics:
        now = self._clock()
        domains_by_pool: dict[ProviderModelKey, dict[RequestDomain, RequestDomainStatistics]] = {
            key: {} for key in self._pools
        }
        for resource, domain in self._domains.items():
            domains_by_pool[resource.provider_model][resource.domain] = RequestDomainStatistics(
                resource=resource,
                limit=domain.limit,
                in_flight=domain.in_flight,
                waiters=domain.waiting,
                granted_total=domain.granted_total,
                released_total=domain.released_total,
                max_in_flight=domain.max_in_flight,
                max_waiters=domain.max_waiters,
                outcomes=MappingProxyType(dict(domain.outcomes)),
                limit_decreases=domain.limit_decreases,
                limit_increases=domain.limit_increases,
                min_limit=domain.min_limit,
                cooldowns=domain.cooldowns,
            )
        pools = {
            key: ProviderModelStatistics(
                provider_model=key,
                static_cap=pool.cap,
                in_flight=pool.in_flight,
                waiters=len(pool.queue),
                granted_total=pool.granted_total,
                released_total=pool.released_total,
                max_in_flight=pool.max_in_flight,
                max_waiters=pool.max_waiters,
                domains=MappingProxyType(domains_by_pool[key]),
                breaker=pool.breaker,
                breaker_openings=pool.breaker_openings,
                budgets=tuple(budget.budget.statistics(now) for budget in pool.budgets),
                budget_denials=pool.budget_denials,
            )
            for key, pool in self._pools.items()
        }
        return RequestAdmissionStatistics(
            provider_models=MappingProxyType(pools),
            live_leases=len(self._live),
            in_flight=sum(pool.in_flight for pool in self._pools.values()),
            waiters=sum(len(pool.queue) for pool in self._pools.values()),
            granted_total=sum(pool.granted_total for pool in self._pools.values()),
            released_total=sum(pool.released_total for pool in self._pools.values()),
            release_diagnostics=self._release_diagnostics,
            waiters_cancelled=self._waiters_cancelled,
            waiters_timed_out=self._waiters_timed_out,
            waiters_shut_down=self._waiters_shut_down,
            grants_returned_on_cancel=self._grants_returned,
            shutting_down=self._shutting_down,
            waiters_failed_by_breaker=self._waiters_failed_by_breaker,
        )

    def _pressure_snapshot(self) -> RequestPressureSnapshot:
        now = self._clock()
        self._snapshot_sequence += 1
        sequence = self._snapshot_sequence
        by_pool: dict[ProviderModelKey, dict[RequestDomain, DomainPressure]] = {
            key: {} for key in self._pools
        }
        for resource, domain in self._domains.items():
            source = domain.limit_source
            blocked_until = source.blocked_until if domain.cooling else None
            effective_max = (
                source.effective_max
                if isinstance(source, AdaptiveRequestLimit)
                else domain.pool.cap
            )
            by_pool[resource.provider_model][resource.domain] = DomainPressure(
                captured_at=now,
                sequence=sequence,
                resource=resource,
                effective_max=effective_max,
                limit=domain.limit,
                in_flight=domain.in_flight,
                waiters=domain.waiting,
                blocked_until=blocked_until,
                cooldown_remaining_seconds=(
                    max(0.0, blocked_until - now) if blocked_until is not None else 0.0
                ),
                rate_limit_ceiling=source.ceiling,
                consecutive_rate_limits=domain.consecutive_rate_limits,
                last_outcome=domain.last_outcome,
                release_diagnostics=self._release_diagnostics,
                phase=source.phase if isinstance(source, AdaptiveRequestLimit) else None,
            )
        return RequestPressureSnapshot(
            captured_at=now,
            sequence=sequence,
            provider_models=MappingProxyType(
                {
                    key: ProviderModelPressure(
                        provider_model=key,
                        static_cap=pool.cap,
                        in_flight=pool.in_flight,
                        waiters=len(pool.queue),
                        aliases=self._aliases.get(key, ()),
                        breaker=pool.breaker,
                        domains=MappingProxyType(by_pool[key]),
                        budgets=tuple(_budget_pressure(budget, now) for budget in pool.budgets),
                        paced_in_seconds=(
                            pool.pacers[0].ready_at(1, now) - now if pool.paced else 0.0
                        ),
                    )
                    for key, pool in self._pools.items()
                }
            ),
        )

    # -- the synchronous core ----------------------------------------------------------------

    def _assign(self, pool: _Pool) -> None:
        """Hand free capacity to waiters in fair order; the only place waiters are granted.

        Invariant on return: no queued waiter of ``pool`` is eligible (capacity is not free
        for it, or its domain is cooling down), so nobody waits while capacity it could use
        is idle.
        """
        queue = pool.queue
        last: _Waiter | None = None
        eligible = _is_eligible
        held_until = [math.inf]  # earliest instant a budget admits a waiter it holds back
        # One clock reading for every check and charge of this step: a budget is never asked
        # about an instant before a charge this step already made.
        now = self._clock()
        # A domain a window the provider reports holds back, and when that window has room.
        paced: list[tuple[_Domain, float]] = []
        if pool.budgets or pool.paced:

            def eligible(entry: QueueEntry[_Waiter]) -> bool:
                if not entry.item.domain.has_capacity():
                    return False
                item = entry.item.item
                ready_at = _budget_ready_at(pool, item, now) if pool.budgets else now
                if pool.paced:
                    paced_at = _paced_ready_at(pool, item, now)
                    if paced_at > now:
                        paced.append((entry.item.domain, paced_at))
                        ready_at = max(ready_at, paced_at)
                if ready_at > now:
                    held_until[0] = min(held_until[0], ready_at)
                    return False
                return True

        while queue and pool.in_flight < pool.cap:
            if pool.breaker is not BreakerState.CLOSED and (
                pool.breaker is BreakerState.OPEN or pool.probe_lease_id is not None
            ):
                break  # half-open admits exactly one probe until its outcome is known
            selection = queue.select_next(eligible)
            if selection is None:
                break
            waiter = queue.commit(selection)
            if waiter is None:
                raise EngineError("a fresh waiter selection was stale inside one synchronous step")
            last = waiter
            waiter.domain.waiting -= 1
            if waiter.future.done():
                # Cancelled but not yet resumed: its own cleanup counts it; it gets nothing.
                continue
            waiter.future.set_result(self._grant(waiter.domain, waiter.item, now))
            waiter.in_flight_at_grant = waiter.domain.in_flight
        if last is not None and not queue:
            self._emit_queue_drained(last.domain)
        if pool.budgets or pool.paced:
            if queue and paced:
                self._pacing_holds(*paced[-1], now)
            self._arm_budget_timer(pool, held_until[0] if queue else math.inf)

    def _take_report(
        self, pool: _Pool, lease: RequestAdmissionLease, report: RateLimitHeaders, now: float
    ) -> None:
        """Let the windows an answer reported pace the provider/model's later grants."""
        requests_window, tokens_window = pool.pacers
        if report.requests is not None:
            requests_window.report(
                report.requests,
                now=now,
                sequence=lease.sequence,
                unseen=pool.granted_total - lease.sequence,
            )
        if report.tokens is not None:
            tokens_window.report(
                report.tokens,
                now=now,
                sequence=lease.sequence,
                unseen=pool.granted_tokens - lease.token_sequence,
            )
        pool.paced = pool.paced or requests_window.active or tokens_window.active

    def _pacing_holds(self, domain: _Domain, ready_at: float, now: float) -> None:
        """Count a grant a reported window holds back; the first of a hold is an event."""
        pool = domain.pool
        requests_window, tokens_window = pool.pacers
        window = requests_window if requests_window.ready_at(1, now) > now else tokens_window
        window.holds += 1
        if pool.pacing_held:
            return
        pool.pacing_held = True
        if self._events.wants(EventKind.REQUEST_PACING_HELD):
            self._events.emit(
                RequestPacingHeld(
                    **domain.tags,
                    window=PacingWindowCode(window.kind.value),
                    available=max(0, math.floor(window.available(now))),
                    ready_in_seconds=max(0.0, ready_at - now),
                    captured_at=now,
                )
            )

    def _arm_budget_timer(self, pool: _Pool, deadline: float) -> None:
        """Wake ``pool``'s waiters when a budget next has room for one of them."""
        wanted = None if deadline == math.inf or self._shutting_down else deadline
        if wanted == pool.budget_deadline:
            return
        if pool.budget_timer is not None:
            pool.budget_timer.cancel()
            pool.budget_timer = None
        pool.budget_deadline = wanted
        if wanted is not None:
            pool.budget_timer = self._timers.call_at(
                wanted, functools.partial(self._on_budget_deadline, pool)
            )

    def _on_budget_deadline(self, pool: _Pool) -> None:
        pool.budget_timer = None
        pool.budget_deadline = None
        if not self._shutting_down and pool.queue:
            self._guarded(pool, functools.partial(self._assign, pool))

    def _refresh(
        self,
        domain: _Domain,
        *,
        now: float | None = None,
        assign: bool = True,
        cause: RequestReleaseOutcome | None = None,
    ) -> None:
        """Apply the limit's time-based changes and (re)arm the timer for the next one.

        ``cause`` is the release outcome just reported to the limit (None: only time passed).
        """
        if now is None:
            now = self._clock()
        source = domain.limit_source
        deadline = source.advance(now)
        limit = _checked_limit(domain.resource, source.limit)
        previous = domain.limit
        if limit < previous:
            domain.limit_decreases += 1
            domain.min_limit = min(domain.min_limit, limit)
        elif limit > previous:
            domain.limit_increases += 1
        domain.limit = limit
        if limit != previous:
            self._limit_changed(domain, previous, cause, now)
        blocked_until = source.blocked_until
        domain.cooling = blocked_until is not None and now < blocked_until
        if deadline != domain.deadline:
            if domain.timer is not None:
                domain.timer.cancel()
                domain.timer = None
            domain.deadline = deadline
            if deadline is not None and not self._shutting_down:
                domain.timer = self._timers.call_at(
                    deadline, functools.partial(self._on_deadline, domain)
                )
        if assign and domain.pool.queue:
            self._assign(domain.pool)

    def _on_deadline(self, domain: _Domain) -> None:
        """Timer callback: a cooldown ended or a ramp step is due; wake whoever can go."""
        domain.timer = None
        domain.deadline = None
        if not self._shutting_down:
            self._guarded(domain.pool, functools.partial(self._refresh, domain))

    def _guarded(self, pool: _Pool, step: Callable[[], None]) -> None:
        """Run a timer's step; if it raises, fail ``pool``'s waiters with the error instead of
        leaving them to wait for a wake-up that will not come (the loop would only log it)."""
        try:
            step()
        except Exception as error:
            failure = EngineError(
                f"request admission of {pool.key} failed in a timer step: "
                f"{type(error).__name__}: {error}"
            )
            self._fail_waiters(pool, lambda waiter: failure)

    def _track_breaker(
        self, domain: _Domain, lease_id: int, outcome: RequestReleaseOutcome, now: float
    ) -> None:
        """Move the breaker on one release. A probe resolves however its lease ends: success
        closes, a failing outcome reopens, any other end (cancelled, local timeout, an error
        of ours) lets the next waiter probe."""
        pool = domain.pool
        open_after = self._settings.breaker_open_after_seconds
        if pool.probe_lease_id == lease_id:
            pool.probe_lease_id = None
        if outcome is RequestReleaseOutcome.SUCCESS:
            pool.failing_since = None
            if pool.breaker is not BreakerState.CLOSED:
                self._emit_cap_changed(domain, _breaker_cap(pool), pool.cap, now)
            pool.breaker = BreakerState.CLOSED
            return
        if outcome not in _FAILING_OUTCOMES or open_after is None:
            return
        if pool.breaker is BreakerState.HALF_OPEN:
            self._open_breaker(domain, now)
            return
        if pool.failing_since is None:
            pool.failing_since = now
        elif pool.breaker is BreakerState.CLOSED and now - pool.failing_since >= open_after:
            self._open_breaker(domain, now)

    def _open_breaker(self, domain: _Domain, now: float) -> None:
        pool = domain.pool
        self._emit_cap_changed(domain, _breaker_cap(pool), 0, now)
        pool.breaker = BreakerState.OPEN
        pool.breaker_openings += 1
        pool.probe_lease_id = None
        pool.probe_at = now + self._settings.breaker_probe_interval_seconds
        self._waiters_failed_by_breaker += self._fail_waiters(
            pool, lambda waiter: self._breaker_error(pool), now=now
        )

    def _may_probe(self, domain: _Domain) -> bool:
        """While not closed: whether requests may wait for the probe (moves OPEN to HALF_OPEN
        once the probe interval has passed). Only one of them is granted until it resolves."""
        pool = domain.pool
        if pool.breaker is BreakerState.OPEN:
            now = self._clock()
            if now >= pool.probe_at:
                self._emit_cap_changed(domain, 0, 1, now)
                pool.breaker = BreakerState.HALF_OPEN
                pool.probe_lease_id = None
        return pool.breaker is BreakerState.HALF_OPEN

    def _fail_waiters(
        self,
        pool: _Pool,
        error: Callable[[_Waiter], Exception],
        *,
        now: float | None = None,
    ) -> int:
        """Fail every queued waiter of ``pool`` with ``error(waiter)``; returns how many.
        ``now``: the time of the state change that fails them, if the caller has one."""
        failed = 0
        queue = pool.queue
        last: _Waiter | None = None
        while (selection := queue.select_next()) is not None:
            waiter = queue.commit(selection)
            if waiter is None:
                raise EngineError("a fresh waiter selection was stale while failing waiters")
            last = waiter
            waiter.domain.waiting -= 1
            if not waiter.future.done():
                failed += 1
                waiter.future.set_exception(error(waiter))
        if last is not None:
            self._emit_queue_drained(last.domain, now)
        return failed

    def _grant(
        self, domain: _Domain, item: RequestAdmissionItem, now: float
    ) -> RequestAdmissionLease:
        """Count one lease; callers checked capacity, breaker and budgets in this same step at
        the same ``now``."""
        pool = domain.pool
        self._next_lease_id += 1
        if pool.breaker is BreakerState.HALF_OPEN:
            pool.probe_lease_id = self._next_lease_id
        tokens = item.estimated_tokens
        if tokens and pool.paced:
            tokens = math.ceil(tokens * pool.token_scale)
        pool.granted_tokens += tokens
        if pool.paced:
            requests_window, tokens_window = pool.pacers
            requests_window.charge(1)
            tokens_window.charge(tokens)
            pool.pacing_held = False
        budgets = pool.budgets
        reserved_tokens = 0
        if budgets:
            # Charged in the step that grants: the budget check and the count cannot drift.
            self._charges[self._next_lease_id] = tuple(
                (budget, budget.budget.charge(budget.amount(item), now)) for budget in budgets
            )
            if any(budget.budget.kind is BudgetKind.TOKENS for budget in budgets):
                reserved_tokens = item.estimated_tokens
        lease = RequestAdmissionLease(
            lease_id=self._next_lease_id,
            resource=domain.resource,
            group=item.group,
            attempt_id=item.attempt_id,
            granted_at=now,
            limit_at_grant=domain.limit,
            owner=self._owner,
            reserved_tokens=reserved_tokens,
            estimated_tokens=item.estimated_tokens,
            sequence=pool.granted_total + 1,
            token_sequence=pool.granted_tokens,
            in_flight_at_grant=domain.in_flight + 1,
        )
        self._live[self._next_lease_id] = lease
        in_flight = pool.in_flight + 1
        pool.in_flight = in_flight
        if in_flight > pool.max_in_flight:
            pool.max_in_flight = in_flight
        in_flight = domain.in_flight + 1
        domain.in_flight = in_flight
        if in_flight > domain.max_in_flight:
            domain.max_in_flight = in_flight
        pool.granted_total += 1
        domain.granted_total += 1
        return lease

    def _enqueue(self, waiter: _Waiter) -> None:
        item = waiter.item
        pool = waiter.domain.pool
        pool.queue.enqueue(
            (
                QueueEntry(
                    item_id=waiter.waiter_id, group=item.group, weight=item.weight, item=waiter
                ),
            )
        )
        domain = waiter.domain
        domain.waiting += 1
        if domain.waiting > domain.max_waiters:
            domain.max_waiters = domain.waiting
        if len(pool.queue) > pool.max_waiters:
            pool.max_waiters = len(pool.queue)

    def _withdraw(self, waiter: _Waiter) -> bool:
        """Take a still-queued waiter out of its queue; False if it had already left."""
        pool = waiter.domain.pool
        if pool.queue.remove(waiter.waiter_id) is None:
            return False
        waiter.domain.waiting -= 1
        if not pool.queue:
            self._emit_queue_drained(waiter.domain)
            return True
        # A withdrawn group head may have hidden an eligible waiter of another domain behind it.
        self._assign(pool)
        return True

    def _abandon(self, waiter: _Waiter) -> None:
        """Clean up after a waiter whose ``acquire`` is exiting with an exception."""
        future = waiter.future
        if not future.done():
            future.cancel()
        if future.cancelled():
            self._waiters_cancelled += 1
            self._withdraw(waiter)
            return
        if future.exception() is None:
            # Granted, but cancelled before it could run: give the lease back (wakes the next).
            # The request was never sent, so its budget charges are taken back as well.
            self._grants_returned += 1
            self._return_grant(future.result())

    def _return_grant(self, lease: RequestAdmissionLease) -> None:
        """Release a lease whose request was never sent, taking back its budget charges."""
        charges = self._charges.get(lease.lease_id) if self._charges else None
        freed = [] if charges is None else _settle(charges, 0, self._clock(), tokens_only=False)
        self.release(lease, RequestReleaseOutcome.LOCAL_CANCELLED)
        for other in freed:
            if other.queue:
                self._assign(other)

    def _expire(self, waiter: _Waiter, timeout_seconds: float) -> None:
        if waiter.future.done():
            return
        if not self._withdraw(waiter):
            raise EngineError(
                f"waiter {waiter.waiter_id} of {waiter.item.resource} is pending but not queued"
            )
        self._waiters_timed_out += 1
        waiter.future.set_exception(self._timeout_error(waiter.domain, timeout_seconds))

    def _register(self, resource: RequestResourceKey) -> _Domain | None:
        pool = self._pools.get(resource.provider_model)
        if pool is None:
            return None
        domain = _Domain(resource, pool, self._limits(resource, pool.cap))
        self._domains[resource] = domain
        events = self._events
        if events.wants(EventKind.REQUEST_RESOURCE_REGISTERED):
            events.emit(
                RequestResourceRegistered(
                    **domain.tags,
                    static_cap=pool.cap,
                    initial_limit=domain.limit,
                    captured_at=self._clock(),
                )
            )
        if domain.effective_max != pool.cap:
            # A configured clamp below the static cap bounds this domain from the start.
            self._emit_cap_changed(domain, pool.cap, domain.effective_max, self._clock())
        self._refresh(domain, assign=False)  # starts a startup ramp, arms its timer
        return domain

    # -- events ------------------------------------------------------------------------------
    # Each helper checks ``wants`` before building anything; with no sink they build nothing.

    def _emit_granted_at_once(
        self, item: RequestAdmissionItem, lease: RequestAdmissionLease
    ) -> None:
        """A lease granted without queueing: a zero-length wait, all at the grant instant."""
        correlation = item.correlation
        if correlation is not None and not correlation.traced:
            return  # outside the trace sample: every event here is per-attempt detail
        events = self._events
        wants = events.wants
        if not (
            wants(EventKind.REQUEST_WAIT_STARTED)
            or wants(EventKind.REQUEST_WAIT_COMPLETED)
            or wants(EventKind.REQUEST_LEASE_ACQUIRED)
        ):
            return
        domain = self._domains[lease.resource]
        at = lease.granted_at
        if wants(EventKind.REQUEST_WAIT_STARTED):
            events.emit(
                RequestWaitStarted(
                    **domain.tags, attempt_id=item.attempt_id, waiters_ahead=0, captured_at=at
                )
            )
        if wants(EventKind.REQUEST_WAIT_COMPLETED):
            events.emit(
                RequestWaitCompleted(
                    **domain.tags, attempt_id=item.attempt_id, waited_seconds=0.0, captured_at=at
                )
            )
        if wants(EventKind.REQUEST_LEASE_ACQUIRED):
            events.emit(
                RequestLeaseAcquired(
                    **domain.tags,
                    attempt_id=item.attempt_id,
                    lease_id=lease.lease_id,
                    in_flight=domain.in_flight,
                    limit=lease.limit_at_grant,
                    cap=domain.pool.cap,
                    captured_at=at,
                )
            )

    def _emit_denied_at_once(self, item: RequestAdmissionItem, reason: RequestDenialCode) -> None:
        """An acquisition refused without queueing: a zero-length wait ending in a denial."""
        events = self._events
        wants = events.wants
        if not (wants(EventKind.REQUEST_WAIT_STARTED) or wants(EventKind.REQUEST_ACQUIRE_DENIED)):
            return
        tags = request_event_tags(item.resource)
        at = self._clock()
        correlation = item.correlation
        if wants(EventKind.REQUEST_WAIT_STARTED) and (correlation is None or correlation.traced):
            queued = 0
            pool = self._pools.get(item.resource.provider_model)
            if pool is not None:
                queued = len(pool.queue)
            events.emit(
                RequestWaitStarted(
                    **tags, attempt_id=item.attempt_id, waiters_ahead=queued, captured_at=at
                )
            )
        if wants(EventKind.REQUEST_ACQUIRE_DENIED):
            events.emit(
                RequestAcquireDenied(
                    **tags, attempt_id=item.attempt_id, reason=reason, captured_at=at
                )
            )

    def _emit_granted_after_wait(
        self, waiter: _Waiter, lease: RequestAdmissionLease, started_at: float
    ) -> None:
        """Emitted by the waiter itself once it resumes, so its own task is the correlation."""
        events = self._events
        domain = waiter.domain
        now = self._clock()
        if events.wants(EventKind.REQUEST_WAIT_COMPLETED):
            events.emit(
                RequestWaitCompleted(
                    **domain.tags,
                    attempt_id=waiter.item.attempt_id,
                    waited_seconds=now - started_at,
                    captured_at=now,
                )
            )
        if events.wants(EventKind.REQUEST_LEASE_ACQUIRED):
            events.emit(
                RequestLeaseAcquired(
                    **domain.tags,
                    attempt_id=waiter.item.attempt_id,
                    lease_id=lease.lease_id,
                    in_flight=waiter.in_flight_at_grant,
                    limit=lease.limit_at_grant,
                    cap=domain.pool.cap,
                    captured_at=now,
                )
            )

    def _emit_wait_failed(self, waiter: _Waiter, started_at: float, error: BaseException) -> None:
        """The end of a wait that gave the caller no lease: timeout, denial or cancellation."""
        events = self._events
        if isinstance(error, RequestAdmissionError):
            if error.reason == DenialReason.TIMEOUT.value:
                if not events.wants(EventKind.REQUEST_WAIT_TIMEOUT):
                    return
                now = self._clock()
                events.emit(
                    RequestWaitTimeout(
                        **waiter.domain.tags,
                        attempt_id=waiter.item.attempt_id,
                        waited_seconds=now - started_at,
                        captured_at=now,
                    )
                )
                return
            if events.wants(EventKind.REQUEST_ACQUIRE_DENIED):
                events.emit(
                    RequestAcquireDenied(
                        **waiter.domain.tags,
                        attempt_id=waiter.item.attempt_id,
                        reason=RequestDenialCode(error.reason),
                        captured_at=self._clock(),
                    )
                )
            return
        if events.wants(EventKind.REQUEST_WAIT_CANCELLED):
            now = self._clock()
            events.emit(
                RequestWaitCancelled(
                    **waiter.domain.tags,
                    attempt_id=waiter.item.attempt_id,
                    waited_seconds=now - started_at,
                    captured_at=now,
                )
            )

    def _emit_queue_drained(self, domain: _Domain, now: float | None = None) -> None:
        if self._events.wants(EventKind.REQUEST_QUEUE_DRAINED):
            at = self._clock() if now is None else now
            self._events.emit(RequestQueueDrained(**domain.tags, captured_at=at))

    def _emit_cap_changed(self, domain: _Domain, previous_cap: int, cap: int, now: float) -> None:
        if previous_cap != cap and self._events.wants(EventKind.REQUEST_EFFECTIVE_CAP_CHANGED):
            self._events.emit(
                RequestEffectiveCapChanged(
                    **domain.tags, previous_cap=previous_cap, cap=cap, captured_at=now
                )
            )

    def _limit_changed(
        self,
        domain: _Domain,
        previous: int,
        cause: RequestReleaseOutcome | None,
        now: float,
    ) -> None:
        """Track recovery and emit the limit events of one change of ``domain.limit``."""
        events = self._events
        limit = domain.limit
        if limit < previous:
            if cause is not None:
                domain.recovering = True  # a ramp start is not a setback to recover from
            if events.wants(EventKind.REQUEST_LIMIT_DECREASED):
                events.emit(
                    RequestLimitDecreased(
                        **domain.tags,
                        previous_limit=previous,
                        limit=limit,
                        reason=_decrease_reason(domain.limit_source, cause),
                        captured_at=now,
                    )
                )
            return
        source = domain.limit_source
        if events.wants(EventKind.REQUEST_LIMIT_INCREASED):
            events.emit(
                RequestLimitIncreased(
                    **domain.tags,
                    previous_limit=previous,
                    limit=limit,
                    reason=_increase_reason(source, cause),
                    captured_at=now,
                )
            )
        ceiling = source.ceiling
        if (
            ceiling is not None
            and previous < ceiling <= limit
            and events.wants(EventKind.REQUEST_SOFT_CEILING_RECOVERED)
        ):
            events.emit(RequestSoftCeilingRecovered(**domain.tags, limit=limit, captured_at=now))
        if domain.recovering and limit >= domain.effective_max:
            domain.recovering = False
            if events.wants(EventKind.REQUEST_FULLY_RECOVERED):
                events.emit(RequestFullyRecovered(**domain.tags, limit=limit, captured_at=now))

    def _timeout_error(self, domain: _Domain, timeout_seconds: float) -> RequestAdmissionError:
        pool = domain.pool
        now = self._clock()
        spent = [
            f"{budget.name} {budget.budget.kind.value} {budget.budget.used(now)}/"
            f"{budget.budget.limit}"
            for budget in pool.budgets
            if budget.budget.ready_at(1, now) > now
        ]
        budgets = f", budgets spent: {'; '.join(spent)}" if spent else ""
        return RequestAdmissionError(
            DenialReason.TIMEOUT.value,
            f"a request for {domain.resource} waited {timeout_seconds:g}s for a lease without "
            f"getting one (static cap {pool.cap}, limit {domain.limit}, {pool.in_flight} in "
            f"flight, {len(pool.queue)} waiting{budgets}); raise queue_wait_timeout_seconds or "
            "lower the work in flight for this model",
        )

    def _shutdown_error(self, resource: RequestResourceKey) -> RequestAdmissionError:
        return RequestAdmissionError(
            DenialReason.SHUTDOWN.value,
            f"request admission is shut down; the request for {resource} was not sent",
        )

    def _breaker_error(self, pool: _Pool) -> RequestAdmissionError:
        open_after = self._settings.breaker_open_after_seconds
        return RequestAdmissionError(
            DenialReason.BREAKER_OPEN.value,
            f"provider {pool.key.provider!r} model {pool.key.model_id!r} is unavailable: no "
            f"request succeeded for {open_after:g}s while requests failed or were rate limited; "
            "check the endpoint, its credentials and quota, or raise run.circuit_breaker_seconds",
        )


class AdaptiveRequestAdmissionController(RequestAdmissionController):
    """A :class:`RequestAdmissionController` whose domains use :class:`AdaptiveRequestLimit`
    (AIMD, one decrease per burst, ceiling memory, startup ramp, cooldown; SPEC §6.3).

    ``model_limit_settings`` overrides ``limit_settings`` for some provider/models, e.g. to turn
    the latency-gradient limit on only for a self-hosted server that queues instead of
    answering 429."""

    def __init__(
        self,
        static_caps: Mapping[ProviderModelKey, int],
        *,
        limit_settings: AdaptiveLimitSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        settings: RequestAdmissionSettings | None = None,
        timers: Timers | None = None,
        aliases: Mapping[ProviderModelKey, tuple[str, ...]] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        events: EventBus | None = None,
        budgets: RequestBudgets | None = None,
        model_limit_settings: Mapping[ProviderModelKey, AdaptiveLimitSettings] | None = None,
    ) -> None:
        super().__init__(
            static_caps,
            clock=clock,
            limits=adaptive_limits(
                limit_settings or AdaptiveLimitSettings(), per_model=model_limit_settings
            ),
            settings=settings,
            timers=timers,
            aliases=aliases,
            loop=loop,
            events=events,
            budgets=budgets,
        )
