"""The two event streams and every canonical event kind of SPEC §9.1, with the stream of each.

Kinds are ``StrEnum`` members: hashing one is a plain string hash, so the bus's "does any sink
listen for this kind" check is a single frozenset lookup.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType


class EventStream(enum.StrEnum):
    """Scheduler admission events and request admission events; each has its own sequence."""

    SCHEDULER = "scheduler"
    REQUEST = "request"


class EventKind(enum.StrEnum):
    """Every canonical event kind. The value is the name written to JSONL and metrics."""

    # -- scheduler stream ------------------------------------------------------------------
    SCHEDULER_JOB_STARTED = "scheduler_job_started"
    SCHEDULER_JOB_COMPLETED = "scheduler_job_completed"
    SCHEDULER_HEALTH_SNAPSHOT = "scheduler_health_snapshot"
    DEPENDENCY_READY = "dependency_ready"
    READY_ENQUEUED = "ready_enqueued"
    ROW_GROUP_ADMITTED = "row_group_admitted"
    ROW_GROUP_ADMISSION_BLOCKED = "row_group_admission_blocked"
    ROW_GROUP_ADMISSION_TARGET_CHANGED = "row_group_admission_target_changed"
    ROW_GROUP_CHECKPOINTED = "row_group_checkpointed"
    SELECTED = "selected"
    QUEUE_EMPTY = "queue_empty"
    ADMISSION_BLOCKED = "admission_blocked"
    GROUP_CAPPED = "group_capped"
    REQUEST_PRESSURE_ADVISORY_SKIPPED = "request_pressure_advisory_skipped"
    TASK_LEASE_ACQUIRED = "task_lease_acquired"
    ADMISSION_DENIED = "admission_denied"
    WORKER_SPAWNED = "worker_spawned"
    WORKER_SPAWN_FAILED = "worker_spawn_failed"
    STALE_SELECTION = "stale_selection"
    RETRY_DEFERRED = "retry_deferred"
    NON_RETRYABLE_DROPPED = "non_retryable_dropped"
    CANCELLED = "cancelled"
    SALVAGE_REDISPATCHED = "salvage_redispatched"
    QUEUE_DRAINED = "queue_drained"
    TASK_COMPLETED = "task_completed"
    TASK_LEASE_RELEASED = "task_lease_released"
    RELEASE_DIAGNOSTIC = "release_diagnostic"
    # -- request admission stream ----------------------------------------------------------
    REQUEST_RESOURCE_REGISTERED = "request_resource_registered"
    REQUEST_EFFECTIVE_CAP_CHANGED = "request_effective_cap_changed"
    REQUEST_QUEUE_FORMED = "request_queue_formed"
    REQUEST_WAIT_STARTED = "request_wait_started"
    REQUEST_WAIT_COMPLETED = "request_wait_completed"
    REQUEST_WAIT_TIMEOUT = "request_wait_timeout"
    REQUEST_WAIT_CANCELLED = "request_wait_cancelled"
    REQUEST_ACQUIRE_DENIED = "request_acquire_denied"
    REQUEST_LEASE_ACQUIRED = "request_lease_acquired"
    MODEL_REQUEST_STARTED = "model_request_started"
    MODEL_REQUEST_COMPLETED = "model_request_completed"
    REQUEST_QUEUE_DRAINED = "request_queue_drained"
    REQUEST_RATE_LIMITED = "request_rate_limited"
    REQUEST_LIMIT_DECREASED = "request_limit_decreased"
    REQUEST_LIMIT_INCREASED = "request_limit_increased"
    REQUEST_SOFT_CEILING_RECOVERED = "request_soft_ceiling_recovered"
    REQUEST_FULLY_RECOVERED = "request_fully_recovered"
    REQUEST_PACING_HELD = "request_pacing_held"
    REQUEST_LEASE_RELEASED = "request_lease_released"
    REQUEST_RELEASE_DIAGNOSTIC = "request_release_diagnostic"
    REQUEST_ADAPTIVE_TIMEOUT = "request_adaptive_timeout"
    REQUEST_HEDGE_STARTED = "request_hedge_started"
    REQUEST_HEDGE_COMPLETED = "request_hedge_completed"

    @property
    def stream(self) -> EventStream:
        return KIND_STREAM[self]


_FIRST_REQUEST_KIND = list(EventKind).index(EventKind.REQUEST_RESOURCE_REGISTERED)

SCHEDULER_KINDS: frozenset[EventKind] = frozenset(list(EventKind)[:_FIRST_REQUEST_KIND])
"""The 27 scheduler kinds (declaration order: every kind above the request section)."""

REQUEST_KINDS: frozenset[EventKind] = frozenset(list(EventKind)[_FIRST_REQUEST_KIND:])
"""The 23 request admission kinds."""

KIND_STREAM: Mapping[EventKind, EventStream] = MappingProxyType(
    {
        kind: EventStream.SCHEDULER if kind in SCHEDULER_KINDS else EventStream.REQUEST
        for kind in EventKind
    }
)
"""The stream each kind belongs to."""
