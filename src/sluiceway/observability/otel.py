"""``OpenTelemetryEventSink``: turns events into OpenTelemetry metrics through the API package.

Only ``opentelemetry-api`` is used; the application installs any SDK and exporter. Metric
attributes come from closed sets only (event stream and kind, task kind, scheduling group kind,
request domain, outcome, reason), so their cardinality is bounded: model ids, task ids, group
keys and column names stay in traces and JSONL, never in labels.

Instruments (all prefixed ``sluiceway.``):

=========================================  ===============  ================================
name                                       type             attributes
=========================================  ===============  ================================
events                                     counter          stream, kind
scheduler.tasks.running                    up-down counter  group_kind
scheduler.tasks.completed                  counter          group_kind, outcome
scheduler.task_admission.denied            counter          reason
scheduler.row_groups.checkpointed          counter          (none)
scheduler.rows.written                     counter          (none)
request.in_flight                          up-down counter  domain
request.wait.duration (s)                  histogram        domain, result
request.duration (s)                       histogram        domain, outcome
request.rate_limited                       counter          domain
request.limit.changes                      counter          domain, direction, reason
=========================================  ===============  ================================

Trace sampling (``observability.sampling``): the bridge records what the bus delivers, so with
``run.events.trace_sample_rate`` below 1 the instruments fed by per-task-attempt detail kinds
see the traced task attempts only: ``scheduler.tasks.running``, ``scheduler.tasks.completed``,
``request.in_flight``, ``request.wait.duration`` (granted waits), ``request.duration`` and the
``events`` counts of those kinds. They are not scaled: each traced attempt adds its own events,
so the up-down counters still return to 0 and the histograms hold the sample's distribution.
Instruments fed by always-recorded kinds (``task_admission.denied``, ``row_groups``,
``rows.written``, ``request.rate_limited``, ``request.limit.changes``, timed-out and cancelled
waits) count the whole run. Set the rate to 1 for complete task and request metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from opentelemetry import metrics

from sluiceway.observability.codec import group_kind_of
from sluiceway.observability.events import Event
from sluiceway.observability.kinds import EventKind
from sluiceway.observability.request_events import (
    ModelRequestCompleted,
    RequestLeaseAcquired,
    RequestLeaseReleased,
    RequestLimitDecreased,
    RequestLimitIncreased,
    RequestRateLimited,
    RequestWaitCancelled,
    RequestWaitCompleted,
    RequestWaitTimeout,
)
from sluiceway.observability.scheduler_events import (
    AdmissionDenied,
    RowGroupCheckpointed,
    TaskCompleted,
    WorkerSpawned,
)

METER_NAME = "sluiceway"
KNOWN_GROUP_KINDS = frozenset({"local", "model", "custom_model"})


def _group_kind_label(group_key: str) -> str:
    kind = group_kind_of(group_key)
    return kind if kind in KNOWN_GROUP_KINDS else "other"


class OpenTelemetryEventSink:
    """Records metrics on a meter from ``meter_provider`` (default: the global provider, a
    no-op until the application sets one). With ``count_every_kind`` (the default) it listens
    for every kind to feed ``sluiceway.events``; without it, only for the kinds that feed the
    other instruments, so other events stay unbuilt. ``handle`` never blocks."""

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        count_every_kind: bool = True,
    ) -> None:
        provider = meter_provider or metrics.get_meter_provider()
        meter = provider.get_meter(METER_NAME)
        self._events = meter.create_counter(
            "sluiceway.events", unit="{event}", description="Events emitted, by stream and kind"
        )
        self._tasks_running = meter.create_up_down_counter(
            "sluiceway.scheduler.tasks.running", unit="{task}", description="Task attempts running"
        )
        self._tasks_completed = meter.create_counter(
            "sluiceway.scheduler.tasks.completed",
            unit="{task}",
            description="Task attempts finished, by outcome",
        )
        self._admission_denied = meter.create_counter(
            "sluiceway.scheduler.task_admission.denied",
            unit="{denial}",
            description="Task lease denials, by reason",
        )
        self._row_groups = meter.create_counter(
            "sluiceway.scheduler.row_groups.checkpointed",
            unit="{row_group}",
            description="Row groups checkpointed",
        )
        self._rows_written = meter.create_counter(
            "sluiceway.scheduler.rows.written", unit="{row}", description="Rows checkpointed"
        )
        self._requests_in_flight = meter.create_up_down_counter(
            "sluiceway.request.in_flight", unit="{request}", description="Request leases held"
        )
        self._wait_duration = meter.create_histogram(
            "sluiceway.request.wait.duration",
            unit="s",
            description="Time request attempts waited for a request lease",
        )
        self._request_duration = meter.create_histogram(
            "sluiceway.request.duration",
            unit="s",
            description="Provider latency of request attempts, by outcome",
        )
        self._rate_limited = meter.create_counter(
            "sluiceway.request.rate_limited",
            unit="{request}",
            description="Request attempts refused with a rate limit",
        )
        self._limit_changes = meter.create_counter(
            "sluiceway.request.limit.changes",
            unit="{change}",
            description="Request limit changes, by direction and reason",
        )
        self._handlers: Mapping[EventKind, Callable[[Event], None]] = MappingProxyType(
            {
                EventKind.WORKER_SPAWNED: self._on_worker_spawned,
                EventKind.TASK_COMPLETED: self._on_task_completed,
                EventKind.ADMISSION_DENIED: self._on_admission_denied,
                EventKind.ROW_GROUP_CHECKPOINTED: self._on_row_group_checkpointed,
                EventKind.REQUEST_LEASE_ACQUIRED: self._on_request_lease_acquired,
                EventKind.REQUEST_LEASE_RELEASED: self._on_request_lease_released,
                EventKind.REQUEST_WAIT_COMPLETED: self._on_wait_ended,
                EventKind.REQUEST_WAIT_TIMEOUT: self._on_wait_ended,
                EventKind.REQUEST_WAIT_CANCELLED: self._on_wait_ended,
                EventKind.MODEL_REQUEST_COMPLETED: self._on_model_request_completed,
                EventKind.REQUEST_RATE_LIMITED: self._on_rate_limited,
                EventKind.REQUEST_LIMIT_DECREASED: self._on_limit_changed,
                EventKind.REQUEST_LIMIT_INCREASED: self._on_limit_changed,
            }
        )
        self._listened = frozenset(EventKind) if count_every_kind else frozenset(self._handlers)
        self._count_every_kind = count_every_kind
        # One attribute dict per kind, built once: the per-event cost is a dict lookup.
        self._kind_attributes = {
            kind: {"stream": kind.stream.value, "kind": kind.value} for kind in EventKind
        }

    @property
    def kinds(self) -> frozenset[EventKind]:
        return self._listened

    def handle(self, event: Event) -> None:
        if self._count_every_kind:
            self._events.add(1, self._kind_attributes[event.kind])
        handler = self._handlers.get(event.kind)
        if handler is not None:
            handler(event)

    def close(self) -> None:
        pass

    # -- scheduler -------------------------------------------------------------------------------

    def _on_worker_spawned(self, event: Event) -> None:
        assert isinstance(event, WorkerSpawned)
        self._tasks_running.add(1, {"group_kind": _group_kind_label(event.group)})

    def _on_task_completed(self, event: Event) -> None:
        assert isinstance(event, TaskCompleted)
        group_kind = _group_kind_label(event.group)
        self._tasks_running.add(-1, {"group_kind": group_kind})
        self._tasks_completed.add(1, {"group_kind": group_kind, "outcome": event.outcome.value})

    def _on_admission_denied(self, event: Event) -> None:
        assert isinstance(event, AdmissionDenied)
        self._admission_denied.add(1, {"reason": event.reason.value})

    def _on_row_group_checkpointed(self, event: Event) -> None:
        assert isinstance(event, RowGroupCheckpointed)
        self._row_groups.add(1)
        self._rows_written.add(event.rows_written)

    # -- requests --------------------------------------------------------------------------------

    def _on_request_lease_acquired(self, event: Event) -> None:
        assert isinstance(event, RequestLeaseAcquired)
        self._requests_in_flight.add(1, {"domain": event.domain.value})

    def _on_request_lease_released(self, event: Event) -> None:
        assert isinstance(event, RequestLeaseReleased)
        self._requests_in_flight.add(-1, {"domain": event.domain.value})

    def _on_wait_ended(self, event: Event) -> None:
        assert isinstance(event, RequestWaitCompleted | RequestWaitTimeout | RequestWaitCancelled)
        result = {
            EventKind.REQUEST_WAIT_COMPLETED: "granted",
            EventKind.REQUEST_WAIT_TIMEOUT: "timeout",
            EventKind.REQUEST_WAIT_CANCELLED: "cancelled",
        }[event.kind]
        self._wait_duration.record(
            event.waited_seconds, {"domain": event.domain.value, "result": result}
        )

    def _on_model_request_completed(self, event: Event) -> None:
        assert isinstance(event, ModelRequestCompleted)
        self._request_duration.record(
            event.latency_seconds, {"domain": event.domain.value, "outcome": event.outcome.value}
        )

    def _on_rate_limited(self, event: Event) -> None:
        assert isinstance(event, RequestRateLimited)
        self._rate_limited.add(1, {"domain": event.domain.value})

    def _on_limit_changed(self, event: Event) -> None:
        assert isinstance(event, RequestLimitDecreased | RequestLimitIncreased)
        direction = "decrease" if isinstance(event, RequestLimitDecreased) else "increase"
        self._limit_changes.add(
            1,
            {"domain": event.domain.value, "direction": direction, "reason": event.reason.value},
        )
