"""Time series and totals of one run, read from its events in one pass.

Times are seconds since the run's first event (``scheduler_job_started`` when present).
Per-model state is per provider/model and domain: in flight and the limit in force come from
the request lease events, the cap from registration and cap changes, rate-limit marks from
``request_rate_limited``, adaptive-timeout and hedge marks and counts from
``request_adaptive_timeout``, ``request_hedge_started`` and ``request_hedge_completed`` (always
recorded, so exact under trace sampling too). Queue depth per task group follows
``ready_enqueued`` (the group's depth after the enqueue), minus one per
``worker_spawned``/``worker_spawn_failed``;
``queue_drained`` sets a group (or every group) to 0 and each health snapshot resets every
group to its exact count, so tasks withdrawn without an event (rows dropped while queued)
cannot make the series drift for long.

Trace sampling (``observability.sampling``): with ``trace_sample_rate`` below 1 the detail
events exist for a sample of task attempts only. Then the counts taken from them (task and
request completions, the per-model completed counts, the task and request throughput) are the
sample's, and :meth:`RunSeries.scaled` / :meth:`RunSeries.throughput` scale them by
``1 / rate``; in flight keeps the exact values the sampled lease events carry; queue depth
takes the exact depths of the sampled ``ready_enqueued``, the periodic health snapshots and
the drains, and in between each sampled ``worker_spawned`` counts it down by ``1 / rate`` (an
estimate, never below 0); rate-limit marks, limits, caps, rows and row groups come from events
that are always recorded, so they stay exact.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sluiceway.observability.codes import RequestOutcomeCode
from sluiceway.observability.events import Event, RequestEvent, TaskEvent
from sluiceway.observability.kinds import EventKind, EventStream
from sluiceway.observability.request_events import (
    ModelRequestCompleted,
    RequestAdaptiveTimeout,
    RequestEffectiveCapChanged,
    RequestHedgeCompleted,
    RequestHedgeStarted,
    RequestLeaseAcquired,
    RequestLeaseReleased,
    RequestLimitDecreased,
    RequestLimitIncreased,
    RequestPacingHeld,
    RequestRateLimited,
    RequestResourceRegistered,
    RequestWaitCompleted,
)
from sluiceway.observability.scheduler_events import (
    QueueDrained,
    ReadyEnqueued,
    RowGroupCheckpointed,
    SchedulerHealthSnapshot,
    SchedulerJobCompleted,
    SchedulerJobStarted,
    TaskCompleted,
)


@dataclass(slots=True)
class StepSeries:
    """A value that holds from each time until the next one."""

    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def append(self, at: float, value: float) -> None:
        self.times.append(at)
        self.values.append(value)

    @property
    def maximum(self) -> float:
        return max(self.values, default=0.0)

    @property
    def last(self) -> float | None:
        return self.values[-1] if self.values else None


@dataclass(slots=True)
class ResourceSeries:
    """One provider/model and domain over the run."""

    provider: str
    model: str
    domain: str
    in_flight: StepSeries = field(default_factory=StepSeries)
    limit: StepSeries = field(default_factory=StepSeries)
    cap: StepSeries = field(default_factory=StepSeries)
    rate_limited_at: list[float] = field(default_factory=list)
    # (time, reason) of every limit change, and when reported windows started holding grants.
    limit_changes: list[tuple[float, str]] = field(default_factory=list)
    paced_at: list[float] = field(default_factory=list)
    completed: int = 0  # request attempts seen completing (traced ones when sampled)
    wait_seconds: list[float] = field(default_factory=list)
    latency_seconds: list[float] = field(default_factory=list)
    # (time, deadline) of each attempt abandoned at its adaptive timeout
    adaptive_timeouts: list[tuple[float, float]] = field(default_factory=list)
    hedges_started_at: list[float] = field(default_factory=list)
    hedge_results: Counter[str] = field(default_factory=Counter)  # won / lost / failed

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model} ({self.domain})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Throughput:
    """Completions per second in consecutive buckets starting at ``bucket_starts``."""

    bucket_seconds: float
    bucket_starts: tuple[float, ...]
    requests_per_second: tuple[float, ...]
    tasks_per_second: tuple[float, ...]
    rows_per_second: tuple[float, ...]


@dataclass(slots=True)
class RunSeries:
    """Everything the report plots and totals, from one pass over the events.

    ``trace_sample_rate`` is the share of task attempts whose detail events were recorded;
    ``tasks_by_outcome``, ``requests_by_outcome``, ``task_completions``,
    ``request_completions`` and ``ResourceSeries.completed`` count the sample (see
    :meth:`scaled`). ``rate_limited`` counts every rate-limited attempt."""

    trace_sample_rate: float = 1.0
    origin: float = 0.0
    wall_seconds: float = 0.0
    run_id: str | None = None
    status: str | None = None
    records_total: int | None = None
    rows_written: int = 0
    rows_dropped: int = 0
    events_by_stream: Counter[str] = field(default_factory=Counter)
    tasks_by_outcome: Counter[str] = field(default_factory=Counter)
    requests_by_outcome: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    resources: dict[tuple[str, str, str], ResourceSeries] = field(default_factory=dict)
    queue_depth: dict[str, StepSeries] = field(default_factory=dict)
    request_completions: list[float] = field(default_factory=list)
    task_completions: list[float] = field(default_factory=list)
    row_checkpoints: list[tuple[float, int]] = field(default_factory=list)

    @property
    def sampled(self) -> bool:
        """Whether the detail events cover only a sample of the task attempts."""
        return self.trace_sample_rate < 1.0

    def scaled(self, count: float) -> float:
        """A count of sampled detail events scaled to the whole run (``count / rate``); 0 when
        nothing was traced (rate 0)."""
        rate = self.trace_sample_rate
        return count / rate if rate > 0 else 0.0

    def throughput(self, buckets: int = 60) -> Throughput:
        """Completions per second per bucket; task and request completions scaled by
        ``1 / trace_sample_rate`` (exact at rate 1), checkpointed rows always exact."""
        width = max(self.wall_seconds / buckets, 1e-3) if self.wall_seconds > 0 else 1.0
        count = max(1, min(buckets, int(self.wall_seconds / width) + 1))
        requests = [0.0] * count
        tasks = [0.0] * count
        rows = [0.0] * count
        weight = self.scaled(1.0)
        for at in self.request_completions:
            requests[min(count - 1, int(at / width))] += weight
        for at in self.task_completions:
            tasks[min(count - 1, int(at / width))] += weight
        for at, written in self.row_checkpoints:
            rows[min(count - 1, int(at / width))] += written
        return Throughput(
            bucket_seconds=width,
            bucket_starts=tuple(i * width for i in range(count)),
            requests_per_second=tuple(v / width for v in requests),
            tasks_per_second=tuple(v / width for v in tasks),
            rows_per_second=tuple(v / width for v in rows),
        )


def build_series(events: Iterable[Event], *, trace_sample_rate: float = 1.0) -> RunSeries:
    """Reads ``events`` (in sequence order within each stream) into a :class:`RunSeries`.

    ``trace_sample_rate`` is the rate the events were recorded at (the events file's header
    says it; 1 for a full trace)."""
    ordered = sorted(events, key=lambda e: (e.captured_at, e.stream != EventStream.SCHEDULER))
    series = RunSeries(trace_sample_rate=trace_sample_rate)
    if not ordered:
        return series
    started = next((e for e in ordered if isinstance(e, SchedulerJobStarted)), None)
    origin = started.captured_at if started is not None else ordered[0].captured_at
    series.origin = origin
    series.wall_seconds = max(0.0, ordered[-1].captured_at - origin)
    depth: dict[str, float] = {}
    for event in ordered:
        at = event.captured_at - origin
        series.events_by_stream[event.stream.value] += 1
        if isinstance(event, RequestEvent):
            _request_event(series, event, at)
        elif isinstance(event, TaskEvent):
            _queue_event(series, depth, event, at, step=series.scaled(1.0))
            if isinstance(event, TaskCompleted):
                series.tasks_by_outcome[event.outcome.value] += 1
                series.task_completions.append(at)
        elif isinstance(event, SchedulerHealthSnapshot):
            for group in set(event.queued_by_group) | set(depth):
                _set_depth(series, depth, group, event.queued_by_group.get(group, 0), at)
        elif isinstance(event, QueueDrained):
            for group in list(depth) if event.group is None else [event.group]:
                _set_depth(series, depth, group, 0, at)
        elif isinstance(event, RowGroupCheckpointed):
            series.rows_written += event.rows_written
            series.rows_dropped += event.rows_dropped
            series.row_checkpoints.append((at, event.rows_written))
        elif isinstance(event, SchedulerJobStarted):
            series.run_id = event.run_id
            series.records_total = event.records_total
        elif isinstance(event, SchedulerJobCompleted):
            series.run_id = series.run_id or event.run_id
            series.status = event.status.value
    return series


def _set_depth(
    series: RunSeries, depth: dict[str, float], group: str, value: float, at: float
) -> None:
    if depth.get(group) == value and group in series.queue_depth:
        return
    depth[group] = value
    series.queue_depth.setdefault(group, StepSeries()).append(at, value)


def _queue_event(
    series: RunSeries, depth: dict[str, float], event: TaskEvent, at: float, *, step: float
) -> None:
    """``step``: the dispatches one ``worker_spawned`` stands for (``1 / rate``)."""
    kind = event.kind
    if isinstance(event, ReadyEnqueued):
        _set_depth(series, depth, event.group, event.group_depth, at)
    elif kind in (EventKind.WORKER_SPAWNED, EventKind.WORKER_SPAWN_FAILED):
        # A spawn failure is always recorded, so it stands for itself only. A withdrawn task
        # (its row dropped) leaves no event: never count below zero, and the next snapshot or
        # drain resets the group.
        taken = step if kind is EventKind.WORKER_SPAWNED else 1.0
        _set_depth(series, depth, event.group, max(0.0, depth.get(event.group, 0) - taken), at)


def _request_event(series: RunSeries, event: RequestEvent, at: float) -> None:
    key = (event.provider, event.model, event.domain.value)
    resource = series.resources.get(key)
    if resource is None:
        resource = series.resources[key] = ResourceSeries(
            provider=event.provider, model=event.model, domain=event.domain.value
        )
    if isinstance(event, RequestLeaseAcquired):
        resource.in_flight.append(at, event.in_flight)
        resource.limit.append(at, event.limit)
        if resource.cap.last != event.cap:
            resource.cap.append(at, event.cap)
    elif isinstance(event, RequestLeaseReleased):
        resource.in_flight.append(at, event.in_flight)
        resource.limit.append(at, event.limit)
    elif isinstance(event, RequestResourceRegistered):
        resource.cap.append(at, event.static_cap)
        resource.limit.append(at, event.initial_limit)
        resource.in_flight.append(at, 0)
    elif isinstance(event, RequestEffectiveCapChanged):
        resource.cap.append(at, event.cap)
    elif isinstance(event, RequestLimitDecreased | RequestLimitIncreased):
        resource.limit.append(at, event.limit)
        resource.limit_changes.append((at, event.reason.value))
    elif isinstance(event, RequestPacingHeld):
        resource.paced_at.append(at)
    elif isinstance(event, RequestWaitCompleted):
        resource.wait_seconds.append(event.waited_seconds)
    elif isinstance(event, ModelRequestCompleted):
        resource.completed += 1
        resource.latency_seconds.append(event.latency_seconds)
        series.requests_by_outcome[event.outcome.value] += 1
        if event.outcome is RequestOutcomeCode.SUCCESS:
            series.request_completions.append(at)
    elif isinstance(event, RequestRateLimited):
        # Always recorded (not a detail kind): one per rate-limited attempt of any task.
        series.rate_limited += 1
        resource.rate_limited_at.append(at)
    elif isinstance(event, RequestAdaptiveTimeout):
        resource.adaptive_timeouts.append((at, event.timeout_seconds))
    elif isinstance(event, RequestHedgeStarted):
        resource.hedges_started_at.append(at)
    elif isinstance(event, RequestHedgeCompleted):
        resource.hedge_results[event.result.value] += 1


def read_only_counts(counter: Counter[str]) -> Mapping[str, int]:
    return MappingProxyType(dict(sorted(counter.items())))
