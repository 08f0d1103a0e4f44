"""Closed sets of reasons and outcomes that events carry, as enums owned by the event model.

Values equal those of the engine enums they mirror (``TaskOutcomeKind``, ``TaskDenialReason``,
``RequestReleaseOutcome``, ``DenialReason``, ``RequestDomain``, ``HedgeResult``), so an
emission point converts with ``Code(engine_value.value)``; a unit test keeps the two sides in
step. They live here because the event model imports no engine code.
"""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    """How a scheduler job ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskOutcomeCode(enum.StrEnum):
    """How one task attempt ended (mirrors ``scheduling.scheduler.TaskOutcomeKind``)."""

    SUCCEEDED = "succeeded"
    RETRY = "retry"
    DROPPED = "dropped"
    STOP = "stop"
    CANCELLED = "cancelled"


class TaskDenialCode(enum.StrEnum):
    """Why task admission refused a lease (mirrors ``scheduling.admission.TaskDenialReason``)."""

    NO_CAPACITY = "no_capacity"
    GROUP_CAP = "group_cap"
    BORROW_DEBT = "borrow_debt"
    SHUTDOWN = "shutdown"
    POLICY_DENIAL = "policy_denial"


class CancelCode(enum.StrEnum):
    """Why the scheduler stopped starting work."""

    RUN_CANCELLED = "run_cancelled"
    EARLY_SHUTDOWN = "early_shutdown"
    FATAL_ERROR = "fatal_error"


class ReleaseDiagnosticCode(enum.StrEnum):
    """A release that changed nothing (task ``ReleaseStatus`` / request ``ReleaseResult``)."""

    DUPLICATE = "duplicate"
    FOREIGN = "foreign"
    UNKNOWN = "unknown"


class RequestDomainCode(enum.StrEnum):
    """The kind of call a request is (mirrors ``requests.keys.RequestDomain``)."""

    CHAT = "chat"
    EMBEDDING = "embedding"
    IMAGE = "image"
    HEALTHCHECK = "healthcheck"


class RequestOutcomeCode(enum.StrEnum):
    """How one request attempt ended (mirrors ``requests.outcomes.RequestReleaseOutcome``)."""

    SUCCESS = "success"
    RATE_LIMITED = "rate_limited"
    PROVIDER_FAILURE = "provider_failure"
    PROVIDER_TIMEOUT = "provider_timeout"
    LOCAL_CANCELLED = "local_cancelled"
    LOCAL_TIMEOUT = "local_timeout"
    UNEXPECTED_EXCEPTION = "unexpected_exception"


class RequestDenialCode(enum.StrEnum):
    """Why a request lease was not granted (mirrors ``requests.admission.DenialReason``)."""

    NO_CAPACITY = "no_capacity"
    COOLDOWN = "cooldown"
    QUEUED_WAITERS_AHEAD = "queued_waiters_ahead"
    SHUTDOWN = "shutdown"
    TIMEOUT = "timeout"
    UNKNOWN_RESOURCE = "unknown_resource"
    BREAKER_OPEN = "breaker_open"


class PacingWindowCode(enum.StrEnum):
    """Which window a provider reports holds grants back."""

    REQUESTS = "requests"
    TOKENS = "tokens"


class LimitChangeCode(enum.StrEnum):
    """Why a domain's request limit moved."""

    RATE_LIMITED = "rate_limited"  # refused at or below the served level: decrease, cool down
    PROVIDER_FAILURE = "provider_failure"
    SLOW_START = "slow_start"  # +1 per success from below the cap until the first refusal
    RECOVERY = "recovery"  # +1 per success back to the concurrency recently served
    PROBE = "probe"  # above the served level, faster every round trip without refusal
    PROBE_REFUSED = "probe_refused"  # a probe found the edge: back to what was served
    HEADER_PACING = "header_pacing"  # the provider's rate-limit headers hold grants back
    STARTUP_RAMP = "startup_ramp"
    LATENCY_GRADIENT = "latency_gradient"
    COOLDOWN_ENDED = "cooldown_ended"


class HedgeResultCode(enum.StrEnum):
    """How a hedged attempt ended (mirrors ``requests.latency.HedgeResult``)."""

    WON = "won"
    LOST = "lost"
    FAILED = "failed"
