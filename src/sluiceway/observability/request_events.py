"""Request admission events: one class per request kind of SPEC §9.1.

Every class names its provider/model and domain; attempt-level classes add ``attempt_id`` and
lease-level ones ``lease_id``. An immediate acquire still emits a zero-length wait
(``request_wait_started`` and ``request_wait_completed`` with ``waited_seconds == 0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sluiceway.observability.codes import (
    HedgeResultCode,
    LimitChangeCode,
    PacingWindowCode,
    ReleaseDiagnosticCode,
    RequestDenialCode,
    RequestOutcomeCode,
)
from sluiceway.observability.events import AttemptEvent, LeaseEvent, RequestEvent
from sluiceway.observability.kinds import EventKind
from sluiceway.values import fast_init


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestResourceRegistered(RequestEvent):
    kind: ClassVar[EventKind] = EventKind.REQUEST_RESOURCE_REGISTERED
    static_cap: int
    initial_limit: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestEffectiveCapChanged(RequestEvent):
    kind: ClassVar[EventKind] = EventKind.REQUEST_EFFECTIVE_CAP_CHANGED
    previous_cap: int
    cap: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestQueueFormed(RequestEvent):
    """The first waiter queued on a provider/model whose queue was empty."""

    kind: ClassVar[EventKind] = EventKind.REQUEST_QUEUE_FORMED
    waiters: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestWaitStarted(AttemptEvent):
    kind: ClassVar[EventKind] = EventKind.REQUEST_WAIT_STARTED
    waiters_ahead: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestWaitCompleted(AttemptEvent):
    kind: ClassVar[EventKind] = EventKind.REQUEST_WAIT_COMPLETED
    waited_seconds: float


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestWaitTimeout(AttemptEvent):
    kind: ClassVar[EventKind] = EventKind.REQUEST_WAIT_TIMEOUT
    waited_seconds: float


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestWaitCancelled(AttemptEvent):
    kind: ClassVar[EventKind] = EventKind.REQUEST_WAIT_CANCELLED
    waited_seconds: float


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestAcquireDenied(AttemptEvent):
    kind: ClassVar[EventKind] = EventKind.REQUEST_ACQUIRE_DENIED
    reason: RequestDenialCode


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestLeaseAcquired(LeaseEvent):
    """``in_flight`` counts the domain's leases after the grant; ``limit`` is the domain's limit
    in force and ``cap`` the provider/model's static cap."""

    kind: ClassVar[EventKind] = EventKind.REQUEST_LEASE_ACQUIRED
    in_flight: int
    limit: int
    cap: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRequestStarted(LeaseEvent):
    kind: ClassVar[EventKind] = EventKind.MODEL_REQUEST_STARTED


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRequestCompleted(LeaseEvent):
    """Token counts are counts only; the completion text is never carried."""

    kind: ClassVar[EventKind] = EventKind.MODEL_REQUEST_COMPLETED
    outcome: RequestOutcomeCode
    latency_seconds: float
    input_tokens: int | None = None
    output_tokens: int | None = None


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestQueueDrained(RequestEvent):
    kind: ClassVar[EventKind] = EventKind.REQUEST_QUEUE_DRAINED


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRateLimited(AttemptEvent):
    """The provider refused with a rate limit; ``cooldown_seconds`` is the cooldown the domain
    entered from ``captured_at`` (None when it entered none)."""

    kind: ClassVar[EventKind] = EventKind.REQUEST_RATE_LIMITED
    retry_after_seconds: float | None = None
    cooldown_seconds: float | None = None


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestLimitDecreased(RequestEvent):
    kind: ClassVar[EventKind] = EventKind.REQUEST_LIMIT_DECREASED
    previous_limit: int
    limit: int
    reason: LimitChangeCode


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestLimitIncreased(RequestEvent):
    kind: ClassVar[EventKind] = EventKind.REQUEST_LIMIT_INCREASED
    previous_limit: int
    limit: int
    reason: LimitChangeCode


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestPacingHeld(RequestEvent):
    """A window the provider reports in its answers (``requests`` or ``tokens``) started
    holding grants back: ``available`` units were left, the next fits in
    ``ready_in_seconds``."""

    kind: ClassVar[EventKind] = EventKind.REQUEST_PACING_HELD
    window: PacingWindowCode
    available: int
    ready_in_seconds: float


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestSoftCeilingRecovered(RequestEvent):
    kind: ClassVar[EventKind] = EventKind.REQUEST_SOFT_CEILING_RECOVERED
    limit: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestFullyRecovered(RequestEvent):
    kind: ClassVar[EventKind] = EventKind.REQUEST_FULLY_RECOVERED
    limit: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestLeaseReleased(LeaseEvent):
    """``in_flight`` counts the domain's leases after the release."""

    kind: ClassVar[EventKind] = EventKind.REQUEST_LEASE_RELEASED
    outcome: RequestOutcomeCode
    in_flight: int
    limit: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestReleaseDiagnostic(RequestEvent):
    kind: ClassVar[EventKind] = EventKind.REQUEST_RELEASE_DIAGNOSTIC
    lease_id: int
    code: ReleaseDiagnosticCode


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestAdaptiveTimeout(LeaseEvent):
    """An attempt abandoned at its adaptive deadline (released as ``provider_timeout``, then
    retried): ``timeout_seconds`` is that deadline, ``quantile_seconds`` the latency quantile
    it came from over ``samples`` recent successes of its provider/model, domain and column."""

    kind: ClassVar[EventKind] = EventKind.REQUEST_ADAPTIVE_TIMEOUT
    timeout_seconds: float
    configured_timeout_seconds: float | None
    quantile_seconds: float | None
    samples: int


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestHedgeStarted(LeaseEvent):
    """A hedged attempt got its lease: ``attempt_id`` and ``lease_id`` are the hedge's; the
    attempt it hedges had been sending for ``hedge_after_seconds``."""

    kind: ClassVar[EventKind] = EventKind.REQUEST_HEDGE_STARTED
    primary_attempt_id: int
    hedge_after_seconds: float


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestHedgeCompleted(AttemptEvent):
    """A hedged attempt ended: ``won`` (its answer is the call's), ``lost`` (cancelled: the
    hedged attempt answered first, or the call ended) or ``failed``."""

    kind: ClassVar[EventKind] = EventKind.REQUEST_HEDGE_COMPLETED
    primary_attempt_id: int
    result: HedgeResultCode
