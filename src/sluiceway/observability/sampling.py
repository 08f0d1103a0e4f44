"""Per-task trace sampling: which task attempts have their full timeline recorded.

Most events of a run are per-task-attempt detail: the scheduler's dependency ready -> ...
-> task lease released and, for every request attempt the task makes, the wait, lease and
model call events (:data:`TRACED_KINDS`). A run records that detail for a deterministic sample
of task attempts only, at ``run.events.trace_sample_rate``; every other kind
(:data:`ALWAYS_RECORDED_KINDS`: job start and end, health snapshots, row groups, queue
episodes, retries, drops, cancellations, spawn failures, diagnostics, request resources, caps,
limits, rate limits, recoveries, wait timeouts and cancellations, denials) is recorded whatever
the sample says.

The decision (:meth:`TraceSampler.traces`) is a pure function of the task id, the attempt
number and the rate: the first 8 bytes of the BLAKE2b digest of ``"<task_id>#<attempt>"``
(UTF-8), read as a big-endian integer, below ``rate * 2**64``. So one config traces the same
task attempts in every run and process, a resumed run keeps the decisions of the run it
continues, and a task traced at one rate is traced at every higher rate. (A CRC-32 would be
cheaper, but it is linear: ids that differ in a character or two, like the cells of one row
group, land in a biased share of the range.) It costs about a microsecond per task attempt.
The scheduler takes it once per task attempt, when the attempt becomes ready, and carries it
on the ready item (``SchedulableTask.traced``) and on the task correlation
(``TaskCorrelation.traced``); emission sites read that flag before they build a detail event.
Requests made outside any task are traced.

Figures that count detail events (tasks and requests completed, throughput of tasks and
requests) are estimates from the sample, scaled by ``1 / rate``; the run report says so and
writes the rate. Ratios over task attempts (the bottleneck attribution shares, wait and
latency percentiles) are estimated from the traced attempts, each attempt being in the sample
independently of its timing.
"""

from __future__ import annotations

import hashlib
import math

from sluiceway.observability.kinds import EventKind

__all__ = [
    "ALWAYS_RECORDED_KINDS",
    "DEFAULT_TRACE_SAMPLE_RATE",
    "TRACED_KINDS",
    "TraceSampler",
    "check_trace_sample_rate",
]

DEFAULT_TRACE_SAMPLE_RATE = 1 / 16
"""The rate of ``run.events.trace_sample_rate`` when the config leaves it out."""

TRACED_KINDS: frozenset[EventKind] = frozenset(
    {
        # scheduler stream: one task attempt from ready to lease release
        EventKind.DEPENDENCY_READY,
        EventKind.READY_ENQUEUED,
        EventKind.SELECTED,
        EventKind.REQUEST_PRESSURE_ADVISORY_SKIPPED,
        EventKind.TASK_LEASE_ACQUIRED,
        EventKind.WORKER_SPAWNED,
        EventKind.TASK_COMPLETED,
        EventKind.TASK_LEASE_RELEASED,
        # request stream: one request attempt from wait start to lease release
        EventKind.REQUEST_WAIT_STARTED,
        EventKind.REQUEST_WAIT_COMPLETED,
        EventKind.REQUEST_LEASE_ACQUIRED,
        EventKind.MODEL_REQUEST_STARTED,
        EventKind.MODEL_REQUEST_COMPLETED,
        EventKind.REQUEST_LEASE_RELEASED,
    }
)
"""The per-task-attempt detail kinds: emitted only for traced task attempts (and for request
attempts made outside any task)."""

ALWAYS_RECORDED_KINDS: frozenset[EventKind] = frozenset(EventKind) - TRACED_KINDS
"""Every other kind: emitted whatever the trace sample says."""

_SCALE = 1 << 64


def check_trace_sample_rate(rate: float) -> float:
    """``rate`` if it is a number in [0, 1]; ``ValueError`` naming the setting otherwise."""
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise ValueError(
            f"trace_sample_rate must be a number in [0, 1], got {type(rate).__name__} {rate!r}"
        )
    if not math.isfinite(rate) or not 0.0 <= rate <= 1.0:
        raise ValueError(
            f"trace_sample_rate must be in [0, 1] (1 traces every task attempt, 0 none), "
            f"got {rate!r}"
        )
    return float(rate)


class TraceSampler:
    """Decides, per task attempt, whether its full timeline is recorded (see the module doc).

    ``traces(task_id, attempt)`` is True for about ``rate`` of the task attempts: always at
    rate 1 (without hashing), never at rate 0."""

    __slots__ = ("_threshold", "rate", "traces_all")

    def __init__(self, rate: float = 1.0) -> None:
        self.rate = check_trace_sample_rate(rate)
        self.traces_all = self.rate >= 1.0
        self._threshold = min(_SCALE, math.floor(self.rate * _SCALE))

    def traces(self, task_id: str, attempt: int) -> bool:
        if self.traces_all:
            return True
        digest = hashlib.blake2b(f"{task_id}#{attempt}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") < self._threshold

    def __repr__(self) -> str:
        return f"TraceSampler(rate={self.rate!r})"
