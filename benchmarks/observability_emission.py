"""Emission cost of one scheduler event with no sink, an in-memory sink and the JSONL sink.

Each case runs the emission-point pattern ``if bus.wants(kind): bus.emit(Event(...))`` N times
inside a task context (so correlation is captured; the request cases emit a correlated
request event instead of a task event; the last one runs the trace-sampling guard of the
request side, ``correlation is None or correlation.traced``, for a task attempt outside the
sample, so it builds nothing) and reports events per second and
nanoseconds per emission, best of ``--repeat`` runs. The JSONL case includes ``close()``, i.e.
until every event is encoded and written. Figures depend on the machine and its load.

    .venv/bin/python benchmarks/observability_emission.py --events 200000
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sluiceway.context import TaskCorrelation, current_task
from sluiceway.observability import EventBus, EventKind, JsonlEventSink, MemoryEventSink
from sluiceway.observability.codes import RequestDomainCode, RequestOutcomeCode
from sluiceway.observability.request_events import ModelRequestCompleted
from sluiceway.observability.scheduler_events import TaskLeaseAcquired

KIND = EventKind.TASK_LEASE_ACQUIRED
REQUEST_KIND = EventKind.MODEL_REQUEST_COMPLETED
CORRELATION = TaskCorrelation(
    run_id="bench",
    task_id="text/0/1",
    column="text",
    row_group=0,
    row_index=1,
    task_kind="cell",
    group_key="local",
    group_weight=1,
    execution_id=1,
)
UNTRACED = dataclasses.replace(CORRELATION, traced=False)


def emit_loop(bus: EventBus, count: int) -> None:
    wants = bus.wants
    for index in range(count):
        if wants(KIND):
            bus.emit(
                TaskLeaseAcquired(
                    task_id="text/0/1", column="text", row_group=0, group="local", lease_id=index
                )
            )


def request_loop(bus: EventBus, count: int) -> None:
    """A correlated request event with a float field (its correlation is the task's)."""
    wants = bus.wants
    chat, success = RequestDomainCode.CHAT, RequestOutcomeCode.SUCCESS
    for index in range(count):
        if wants(REQUEST_KIND):
            bus.emit(
                ModelRequestCompleted(
                    provider="sim",
                    model="sim-fast",
                    domain=chat,
                    attempt_id=index,
                    lease_id=index,
                    outcome=success,
                    latency_seconds=0.000157616,
                    input_tokens=7,
                    output_tokens=27,
                )
            )


def untraced_request_loop(bus: EventBus, count: int) -> None:
    """``request_loop`` behind the trace-sampling guard, for an untraced task attempt."""
    wants = bus.wants
    chat, success = RequestDomainCode.CHAT, RequestOutcomeCode.SUCCESS
    correlation = UNTRACED
    for index in range(count):
        if (correlation is None or correlation.traced) and wants(REQUEST_KIND):
            bus.emit(
                ModelRequestCompleted(
                    provider="sim",
                    model="sim-fast",
                    domain=chat,
                    attempt_id=index,
                    lease_id=index,
                    outcome=success,
                    latency_seconds=0.000157616,
                    input_tokens=7,
                    output_tokens=27,
                )
            )


def bare_loop(bus: EventBus, count: int) -> None:
    for _ in range(count):
        pass


def measure(
    name: str, count: int, repeat: int, make: Callable[[Path], EventBus], loop=emit_loop
) -> tuple[str, float]:
    best = float("inf")
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            bus = make(Path(tmp))
            started = time.perf_counter()
            loop(bus, count)
            bus.close()
            best = min(best, time.perf_counter() - started)
    return name, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    count, repeat = args.events, args.repeat
    token = current_task.set(CORRELATION)
    try:
        results = [
            measure("empty loop (reference)", count, repeat, lambda _: EventBus(), bare_loop),
            measure("no sink", count, repeat, lambda _: EventBus()),
            measure(
                "sink for another kind",
                count,
                repeat,
                lambda _: EventBus([MemoryEventSink({EventKind.QUEUE_EMPTY})]),
            ),
            measure("in-memory sink", count, repeat, lambda _: EventBus([MemoryEventSink()])),
            measure(
                "JSONL sink (incl. close)",
                count,
                repeat,
                lambda tmp: EventBus([JsonlEventSink(tmp / "events.jsonl")]),
            ),
            measure(
                "request event, in-memory",
                count,
                repeat,
                lambda _: EventBus([MemoryEventSink()]),
                request_loop,
            ),
            measure(
                "request event, JSONL",
                count,
                repeat,
                lambda tmp: EventBus([JsonlEventSink(tmp / "events.jsonl")]),
                request_loop,
            ),
            measure(
                "untraced request, JSONL",
                count,
                repeat,
                lambda tmp: EventBus([JsonlEventSink(tmp / "events.jsonl")]),
                untraced_request_loop,
            ),
        ]
    finally:
        current_task.reset(token)
    print(f"{count:,} emissions, best of {repeat}")
    print(f"{'case':<30}{'events/s':>16}{'ns/emission':>14}")
    for name, seconds in results:
        print(f"{name:<30}{count / seconds:>16,.0f}{seconds / count * 1e9:>14,.0f}")


if __name__ == "__main__":
    main()
