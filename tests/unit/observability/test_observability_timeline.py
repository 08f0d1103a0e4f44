"""CorrelatedRuntimeView joins both streams into per-task timelines."""

from __future__ import annotations

import random

from observability_samples import T0, synthetic_run

from sluiceway.observability import CorrelatedRuntimeView, EventBus, WaitResult
from sluiceway.observability.codes import RequestOutcomeCode, TaskOutcomeCode

SPEC_ORDER = [
    "dependency_ready",
    "enqueued",
    "selected",
    "task_lease_acquired",
    "worker_spawned",
    "request_wait_started",
    "request_wait_ended",
    "request_lease_acquired",
    "model_request_started",
    "model_request_completed",
    "request_lease_released",
    "task_completed",
    "task_lease_released",
]


def test_timelines_follow_the_spec_order() -> None:
    view = CorrelatedRuntimeView.from_events(synthetic_run())
    timelines = view.timelines()
    assert [t.task_id for t in timelines] == ["topic/0/0", "topic/0/1", "text/0/0", "text/0/1"]
    assert all(t.is_complete for t in timelines)
    second = view.timeline("text/0/1")
    assert second is not None
    assert [name for name, _ in second.stages()] == SPEC_ORDER
    times = [at for _, at in second.stages()]
    assert times == sorted(times)
    assert second.row_group_admitted_at == T0
    assert second.outcome is TaskOutcomeCode.SUCCEEDED


def test_request_attempts_attach_to_the_task_that_made_them() -> None:
    view = CorrelatedRuntimeView.from_events(synthetic_run())
    first = view.timeline("text/0/0")
    assert first is not None
    assert [r.attempt_id for r in first.requests] == [1, 2]
    limited, retried = first.requests
    assert limited.outcome is RequestOutcomeCode.RATE_LIMITED
    assert limited.cooldown_seconds == 0.5
    assert limited.wait_started_at == limited.wait_ended_at  # an immediate acquire
    assert retried.wait_result is WaitResult.GRANTED
    assert retried.outcome is RequestOutcomeCode.SUCCESS
    topic = view.timeline("topic/0/0")
    assert topic is not None and topic.requests == ()
    assert view.unattributed_requests() == ()


def test_arrival_order_does_not_matter() -> None:
    events = synthetic_run()
    shuffled = list(events)
    random.Random(7).shuffle(shuffled)
    expected = CorrelatedRuntimeView.from_events(events).timelines()
    assert CorrelatedRuntimeView.from_events(shuffled).timelines() == expected


def test_the_view_is_a_sink_and_leaves_out_what_it_cannot_attribute() -> None:
    view = CorrelatedRuntimeView()
    bus = EventBus([view])
    events = synthetic_run()
    # Drop the worker_spawned of text/0/1: its request attempt has no task to join.
    for event in events:
        if event.kind == "worker_spawned" and getattr(event, "task_id", "") == "text/0/1":
            continue
        if event.kind == "task_completed" and getattr(event, "task_id", "") == "text/0/1":
            continue
        bus.emit(event)
    missing = view.timeline("text/0/1")
    assert missing is not None and not missing.is_complete
    assert [r.attempt_id for r in view.unattributed_requests()] == [3]
