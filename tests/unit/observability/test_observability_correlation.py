"""Correlation is captured from ``current_task`` when an event is built, also in child tasks."""

from __future__ import annotations

import asyncio

from observability_samples import CORRELATION, sample_event

from sluiceway.context import current_task
from sluiceway.observability import EventBus, EventKind, MemoryEventSink
from sluiceway.observability.codes import RequestDomainCode
from sluiceway.observability.request_events import RequestWaitStarted


def _wait_started(attempt_id: int) -> RequestWaitStarted:
    return RequestWaitStarted(
        provider="sim",
        model="sim-writer",
        domain=RequestDomainCode.CHAT,
        attempt_id=attempt_id,
        waiters_ahead=0,
    )


def test_outside_any_task_the_correlation_is_none() -> None:
    assert _wait_started(1).correlation is None


def test_the_running_task_is_captured_at_construction() -> None:
    token = current_task.set(CORRELATION)
    try:
        event = _wait_started(1)
    finally:
        current_task.reset(token)
    assert event.correlation is CORRELATION
    assert _wait_started(2).correlation is None


async def test_child_tasks_and_threads_of_a_task_carry_its_correlation() -> None:
    sink = MemoryEventSink({EventKind.REQUEST_WAIT_STARTED})
    bus = EventBus([sink])

    async def child(attempt_id: int) -> None:
        bus.emit(_wait_started(attempt_id))

    def in_thread() -> None:
        bus.emit(_wait_started(3))

    async def task_body() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(child(1))
            group.create_task(child(2))
        await asyncio.to_thread(in_thread)

    token = current_task.set(CORRELATION)
    try:
        running = asyncio.create_task(task_body())
    finally:
        current_task.reset(token)
    bus.emit(_wait_started(4))  # the parent context is back to no task
    await running
    by_attempt = {event.attempt_id: event.correlation for event in sink.events}  # type: ignore[attr-defined]
    assert by_attempt == {1: CORRELATION, 2: CORRELATION, 3: CORRELATION, 4: None}


def test_explicit_correlation_wins() -> None:
    event = sample_event(EventKind.SELECTED, correlation=None)
    token = current_task.set(CORRELATION)
    try:
        assert sample_event(EventKind.SELECTED, correlation=None).correlation is None
    finally:
        current_task.reset(token)
    assert event.correlation is None
