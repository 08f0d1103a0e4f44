"""Whole-engine runs with observability on: every canonical event kind at its point, zero-length
immediate waits, request events attributed to the task (and child task) that made the call,
the events file, report and capacity plan in the run directory (also for stopped runs),
`sluiceway report` rebuilding the report, and no row value, prompt, completion or API key in
any event, log line, metric, report or other artifact."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import logging
import re
import sys
import zlib
from collections import Counter
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd
import pytest
import yaml
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from typer.testing import CliRunner

from sluiceway.cli.app import app
from sluiceway.cli.progress import LogProgress
from sluiceway.columns.base import GenerationContext
from sluiceway.config.models import DatasetConfig
from sluiceway.engine.cancellation import RunCancellation
from sluiceway.engine.progress import ProgressSnapshot
from sluiceway.engine.run import RunOptions, RunOutcome, run_dataset
from sluiceway.errors import (
    BadRequestError,
    RateLimitedError,
    RetryableGenerationError,
    RunCancelledError,
    SluicewayError,
)
from sluiceway.fair_queue import QueueEntry, WeightedFairQueue
from sluiceway.observability import (
    EVENTS_FILE_NAME,
    TRACED_KINDS,
    AttemptEvent,
    CorrelatedRuntimeView,
    Event,
    EventBus,
    EventKind,
    EventStream,
    MemoryEventSink,
    TaskEvent,
    TraceSampler,
    read_events,
    read_events_header,
)
from sluiceway.observability.otel import OpenTelemetryEventSink
from sluiceway.observability.report import Layer, build_report
from sluiceway.observability.request_events import (
    RequestLeaseAcquired,
    RequestLimitDecreased,
    RequestWaitCompleted,
    RequestWaitStarted,
)
from sluiceway.observability.scheduler_events import (
    ReadyEnqueued,
    RowGroupAdmitted,
    TaskCompleted,
    WorkerSpawned,
)
from sluiceway.providers.base import ModelRequest, ModelResponse
from sluiceway.providers.mock_server import MockProviderServer, MockServerSettings
from sluiceway.rate_limits import RateLimitHeaders, RateLimitWindow
from sluiceway.requests import (
    ProviderModelKey,
    RequestAdmissionController,
    RequestAdmissionItem,
    RequestAdmissionLease,
    RequestDomain,
    RequestReleaseOutcome,
    RequestResourceKey,
)
from sluiceway.scheduling.admission import TaskAdmissionController, TaskAdmissionLease
from sluiceway.scheduling.scheduler import commit_selection
from sluiceway.scheduling.tasks import (
    SchedulableTask,
    SchedulerResourceRequest,
    TaskGroupSpec,
    TaskKind,
    make_task,
)

CANARY = "CANARY-7f3a9c-do-not-leak"
runner = CliRunner()


def _config(num_records: int = 12, buffer_size: int = 4, **run: Any) -> dict[str, Any]:
    return {
        "providers": [{"name": "p", "type": "simulated"}],
        "models": [{"alias": "m", "provider": "p", "model": "m-1", "max_parallel_requests": 4}],
        "columns": [
            {
                "name": "topic",
                "type": "sampler",
                "sampler": {"kind": "category", "values": [f"{CANARY}-a", f"{CANARY}-b"]},
            },
            {"name": "who", "type": "sampler", "sampler": {"kind": "uuid"}},
            {
                "name": "text",
                "type": "llm_text",
                "model": "m",
                "prompt": f"{CANARY} about {{{{ topic }}}} and {{{{ who }}}}",
            },
        ],
        "run": {
            "num_records": num_records,
            "seed": 5,
            "buffer_size": buffer_size,
            "retry": {"max_attempts": 2, "backoff_base_seconds": 0.0},
            "early_shutdown": {"enabled": False},
            # These tests read full timelines: every task attempt is traced.
            "events": {"trace_sample_rate": 1.0},
            **run,
        },
    }


class CanaryProvider:
    """Answers with the canary; refuses some prompts with the canary in the error message;
    after ``hang_after`` requests, waits until cancelled."""

    name = "p"

    def __init__(self, *, hang_after: int | None = None) -> None:
        self._hang_after = hang_after
        self.sent = 0

    async def send(self, request: ModelRequest) -> ModelResponse:
        self.sent += 1
        if self._hang_after is not None and self.sent > self._hang_after:
            await asyncio.Event().wait()
        content = request.messages[-1].content
        if zlib.crc32(content.encode()) % 4 == 0:
            raise BadRequestError(f"refused: {CANARY}")
        return ModelResponse(text=f"{CANARY} says hello")

    async def aclose(self) -> None:
        pass


def _run(out: Path, provider: CanaryProvider | StormProvider, **options: Any) -> RunOutcome:
    config = DatasetConfig.model_validate(options.pop("config", None) or _config())
    return asyncio.run(
        run_dataset(
            config,
            RunOptions(
                output_dir=out,
                overwrite=True,
                extra_providers={"p": provider},
                events_file=out / EVENTS_FILE_NAME,
                report=True,
                **options,
            ),
        )
    )


def _assert_no_canary(out: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in (EVENTS_FILE_NAME, "report.md", "capacity_plan.json"):
        assert CANARY not in (out / name).read_text(), name
    assert all(CANARY not in record.getMessage() for record in caplog.records)


def test_a_run_writes_events_and_a_report_without_leaking_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    memory = MemoryEventSink()
    outcome = _run(tmp_path, CanaryProvider(), events=EventBus([memory]))
    assert outcome.info.rows_dropped > 0  # some rows were refused
    assert (tmp_path / "report.md").is_file()
    assert sorted(path.name for path in tmp_path.glob("report*.png"))
    _assert_no_canary(tmp_path, caplog)
    # The file holds what the caller's sink saw, in stream order.
    from_file = list(read_events(tmp_path / EVENTS_FILE_NAME))
    assert [(e.kind, e.sequence) for e in from_file] == [
        (e.kind, e.sequence) for e in memory.events
    ]
    for stream in EventStream:
        sequences = [e.sequence for e in from_file if e.stream is stream]
        assert sequences == list(range(len(sequences)))
    kinds = {e.kind for e in from_file}
    assert {
        EventKind.SCHEDULER_JOB_STARTED,
        EventKind.WORKER_SPAWNED,
        EventKind.NON_RETRYABLE_DROPPED,
        EventKind.ROW_GROUP_CHECKPOINTED,
        EventKind.SCHEDULER_JOB_COMPLETED,
    } <= kinds
    acquired: set[tuple[str, int]] = set()
    for event in from_file:
        if isinstance(event, TaskEvent):
            if event.kind is EventKind.TASK_LEASE_ACQUIRED:
                acquired.add((event.task_id, event.attempt))
            elif event.kind is EventKind.WORKER_SPAWNED:
                assert (event.task_id, event.attempt) in acquired


class CancelAfterFirstCheckpoint:
    def __init__(self, cancellation: RunCancellation) -> None:
        self._cancellation = cancellation

    def on_start(self, snapshot: ProgressSnapshot) -> None:
        pass

    def on_progress(self, snapshot: ProgressSnapshot) -> None:
        if snapshot.row_groups_done >= 1:
            self._cancellation.cancel()

    def on_finish(self, snapshot: ProgressSnapshot) -> None:
        pass


def test_a_cancelled_run_still_writes_its_events_and_report(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cancellation = RunCancellation()
    with pytest.raises(RunCancelledError):
        _run(
            tmp_path,
            CanaryProvider(hang_after=4),
            config=_config(max_concurrent_row_groups=1),
            cancellation=cancellation,
            progress=CancelAfterFirstCheckpoint(cancellation),
            progress_interval_seconds=0.0,
        )
    events = list(read_events(tmp_path / EVENTS_FILE_NAME))
    assert EventKind.CANCELLED in {e.kind for e in events}
    assert events[-1].kind is EventKind.SCHEDULER_JOB_COMPLETED
    assert "cancelled" in (tmp_path / "report.md").read_text()
    _assert_no_canary(tmp_path, caplog)


def test_an_unwritable_events_file_never_fails_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "events-dir"
    blocked.mkdir()  # a directory where the file should be: writing it fails
    out = tmp_path / "out"
    config = DatasetConfig.model_validate(_config())
    outcome = asyncio.run(
        run_dataset(
            config,
            RunOptions(
                output_dir=out,
                extra_providers={"p": CanaryProvider()},
                events_file=blocked,
                report=True,
            ),
        )
    )
    assert outcome.info.rows_written + outcome.info.rows_dropped == 12
    assert not (out / "report.md").exists()
    assert any(record.levelno >= logging.ERROR for record in caplog.records)


def _write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _sim_config(num_records: int) -> dict[str, Any]:
    config = _config(num_records)
    config["providers"] = [{"name": "p", "type": "simulated"}]
    del config["run"]["events"]  # the default trace sampling of `sluiceway run`
    return config


def test_cli_run_writes_events_and_report_and_report_rebuilds_it(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    result = runner.invoke(app, ["run", str(_write(tmp_path, _sim_config(9))), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / EVENTS_FILE_NAME).is_file() and (out / "report.md").is_file()
    # `sluiceway run` samples task timelines by default, and says so in the report.
    assert read_events_header(out / EVENTS_FILE_NAME)["trace_sample_rate"] == 1 / 16
    first = (out / "report.md").read_text()
    assert "## Trace sampling" in first and "1/16 of the task attempts" in first
    assert CANARY not in first and CANARY not in (out / EVENTS_FILE_NAME).read_text()
    (out / "report.md").unlink()
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.md").read_text() == first


def test_cli_run_flags_move_or_turn_off_events_and_report(tmp_path: Path) -> None:
    config = str(_write(tmp_path, _sim_config(6)))
    quiet = tmp_path / "quiet"
    result = runner.invoke(app, ["run", config, "-o", str(quiet), "-q", "--no-events"])
    assert result.exit_code == 0, result.output
    assert not (quiet / EVENTS_FILE_NAME).exists() and not (quiet / "report.md").exists()

    elsewhere = tmp_path / "logs" / "run-events.jsonl"
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["run", config, "-o", str(out), "-q", "--events", str(elsewhere), "--no-report"]
    )
    assert result.exit_code == 0, result.output
    assert elsewhere.is_file() and not (out / EVENTS_FILE_NAME).exists()
    assert not (out / "report.md").exists()
    header = json.loads(elsewhere.read_text().splitlines()[0])
    assert header["format"] == "sluiceway-events"

    result = runner.invoke(app, ["run", config, "-o", str(out), "--events", "x", "--no-events"])
    assert result.exit_code == 2

    full = tmp_path / "full"
    result = runner.invoke(app, ["run", config, "-o", str(full), "-q", "--trace-sample-rate", "1"])
    assert result.exit_code == 0, result.output
    assert read_events_header(full / EVENTS_FILE_NAME)["trace_sample_rate"] == 1.0
    spawned = [e for e in read_events(full / EVENTS_FILE_NAME) if isinstance(e, WorkerSpawned)]
    # Every task attempt: 6 text cells and 2 samplers in each of the 2 row groups.
    assert len(spawned) == 6 + 2 * 2
    result = runner.invoke(app, ["run", config, "-o", str(full), "--trace-sample-rate", "2"])
    assert result.exit_code == 2 and "trace-sample-rate" in result.output


# -- every canonical kind, each at its point ----------------------------------------------------

RETRIED: set[int] = set()


async def fanout(row: Mapping[str, Any], ctx: GenerationContext) -> str:
    """A custom column that makes two concurrent calls from child tasks; the first attempt of
    every fifth row fails retryably (the task is retried, not the call)."""
    index = ctx.row_indices[0]
    if index % 5 == 1 and index not in RETRIED:
        RETRIED.add(index)
        raise RetryableGenerationError("transient failure of the custom column")
    prompts = [f"{CANARY} fan-out {part} for {row['topic']}" for part in ("a", "b")]
    async with asyncio.TaskGroup() as group:
        calls = [group.create_task(ctx.models.generate_text("m", prompt)) for prompt in prompts]
    return " / ".join(call.result() for call in calls)


class StormProvider:
    """Refuses the first ``rate_limited_first`` requests with a rate limit, some prompts as bad
    requests, and answers the rest with the canary; yields to the loop first, so calls overlap.
    With ``hang_after`` every later request waits until cancelled."""

    name = "p"

    def __init__(self, *, rate_limited_first: int = 0, hang_after: int | None = None) -> None:
        self._rate_limited_first = rate_limited_first
        self._hang_after = hang_after
        self.sent = 0

    async def send(self, request: ModelRequest) -> ModelResponse:
        self.sent += 1
        for _ in range(self.sent % 3 + 1):
            await asyncio.sleep(0)
        if self._hang_after is not None and self.sent > self._hang_after:
            await asyncio.Event().wait()
        if self.sent <= self._rate_limited_first:
            # The refusal reports the window as spent, refilling one request per millisecond.
            window = RateLimitWindow(limit=50, remaining=0, reset_seconds=0.05)
            raise RateLimitedError(
                f"slow down {CANARY}",
                retry_after_seconds=0.0,
                rate_limit=RateLimitHeaders(requests=window),
            )
        content = request.messages[-1].content
        if "fan-out" not in content and zlib.crc32(content.encode()) % 5 == 0:
            raise BadRequestError(f"refused: {CANARY}")
        return ModelResponse(text=f"{CANARY} says hello")

    async def aclose(self) -> None:
        pass


def _storm_config(**run: Any) -> dict[str, Any]:
    config = _config(num_records=24, buffer_size=4, **run)
    config["models"][0]["max_parallel_requests"] = 2
    config["columns"].append(
        {
            "name": "fan",
            "type": "custom",
            "function": f"{__name__}:fanout",
            "models": ["m"],
            "depends_on": ["topic"],
        }
    )
    return config


def _engine_events(
    config: dict[str, Any], provider: StormProvider | HangingProvider, **options: Any
) -> tuple[Event, ...]:
    sink = MemoryEventSink()
    # The fault scenarios end the run on purpose; their events are what counts.
    with contextlib.suppress(SluicewayError):
        asyncio.run(
            run_dataset(
                DatasetConfig.model_validate(config),
                RunOptions(
                    output_dir=None,
                    extra_providers={"p": provider},
                    events=EventBus([sink]),
                    **options,
                ),
            )
        )
    return sink.events


def _busy_run(trace_sample_rate: float = 1.0) -> tuple[Event, ...]:
    """Rate limits and recovery, queued and immediate waits, pressure, retries and drops, an
    adaptive row-group horizon and a task admission that blocks and caps groups."""
    RETRIED.clear()
    config = _storm_config(
        events={"trace_sample_rate": trace_sample_rate},
        max_concurrent_row_groups=1,
        max_in_flight_tasks=8,
        max_local_tasks=1,
        task_admission={"policy": "strict_fair"},
        row_group_horizon={"mode": "adaptive", "max_rows_in_flight": 8},
        request_admission={
            "slow_start": False,
            "max_hold_seconds": 0.0,
            "default_cooldown_seconds": 0.0,
        },
    )
    # Local cells wait for the one local slot: they are peers that hold back the share of the
    # custom column's group (weight 1), which gets capped while submission slots are free.
    config["columns"][-1]["scheduling"] = {"weight": 1}
    config["columns"].append({"name": "title", "type": "expression", "template": "{{ topic }}"})
    return _engine_events(config, StormProvider(rate_limited_first=2))


class _CancelOnKind:
    """Cancels the run when ``kind`` is emitted for the ``count``-th time."""

    def __init__(self, kind: EventKind, count: int, cancellation: RunCancellation) -> None:
        self.kinds = frozenset({kind})
        self._count = count
        self._cancellation = cancellation

    def handle(self, event: Event) -> None:
        self._count -= 1
        if self._count == 0:
            self._cancellation.cancel()  # runs on the loop, after this emission

    def close(self) -> None:
        pass


def _timeout_then_cancel_run() -> tuple[Event, ...]:
    """One request hangs on the only lease: waits time out (retried tasks), then the run is
    cancelled while requests wait."""
    RETRIED.clear()
    cancellation = RunCancellation()
    config = _storm_config(request_admission={"queue_wait_timeout_seconds": 0.001})
    config["run"]["retry"]["max_attempts"] = 50
    config["models"][0]["max_parallel_requests"] = 1
    sink = MemoryEventSink()
    bus = EventBus([sink, _CancelOnKind(EventKind.REQUEST_WAIT_TIMEOUT, 5, cancellation)])
    with contextlib.suppress(RunCancelledError):
        asyncio.run(
            run_dataset(
                DatasetConfig.model_validate(config),
                RunOptions(
                    output_dir=None,
                    extra_providers={"p": StormProvider(hang_after=0)},
                    events=bus,
                    cancellation=cancellation,
                ),
            )
        )
    return sink.events


def _breaker_run() -> tuple[Event, ...]:
    """Every request is rate limited: the circuit opens and fails the waiting requests."""
    config = _storm_config(
        circuit_breaker_seconds=0.005,
        retry={
            "max_attempts": 100_000,
            "backoff_base_seconds": 0.001,
            "backoff_max_seconds": 0.001,
        },
    )
    return _engine_events(config, StormProvider(rate_limited_first=10**9))


class HangingProvider:
    """Answers after a short real wait; from the fifth request on, every fourth hangs until
    cancelled (the executor's adaptive timeout or a hedge must deal with it)."""

    name = "p"

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, request: ModelRequest) -> ModelResponse:
        self.sent += 1
        if self.sent > 4 and self.sent % 4 == 0:
            await asyncio.Event().wait()
        await asyncio.sleep(0.002)
        return ModelResponse(text=f"{CANARY} says hello")

    async def aclose(self) -> None:
        pass


def _straggler_run(*, hedging: bool) -> tuple[Event, ...]:
    """Hanging requests abandoned at their adaptive timeout, or answered by a hedge (at most
    two requests in flight, so a hedge always finds capacity)."""
    config = _config(
        num_records=12,
        buffer_size=2,
        max_concurrent_row_groups=1,
        stragglers={
            "min_samples": 3,
            "min_timeout_seconds": 0.05,
            "hedging": hedging,
            "hedge_budget_ratio": 1.0,
        },
    )
    config["models"][0]["timeout_seconds"] = 5.0
    config["columns"][-1]["prompt"] = f"{CANARY} about {{{{ who }}}}"  # no bad requests
    return _engine_events(config, HangingProvider())


def _dispatching() -> bool:
    """Whether the scheduler's dispatch is on the calling stack (not a worker starting one)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_dispatch":
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _spawn_failure_run() -> tuple[Event, ...]:
    """The loop's task factory refuses the second worker the dispatcher starts: a fatal error
    for the run."""

    async def run() -> tuple[Event, ...]:
        loop = asyncio.get_running_loop()
        created = 0

        def factory(
            loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
        ) -> asyncio.Task[Any]:
            nonlocal created
            if getattr(coro, "__name__", "") == "_work" and _dispatching():
                created += 1
                if created == 2:
                    coro.close()
                    raise RuntimeError("no more tasks")
            return asyncio.Task(coro, loop=loop, **kwargs)

        sink = MemoryEventSink()
        loop.set_task_factory(factory)  # type: ignore[arg-type]
        try:
            with pytest.raises(RuntimeError, match="no more tasks"):
                await run_dataset(
                    DatasetConfig.model_validate(_config()),
                    RunOptions(
                        output_dir=None,
                        extra_providers={"p": StormProvider()},
                        events=EventBus([sink]),
                    ),
                )
        finally:
            loop.set_task_factory(None)
        return sink.events

    return asyncio.run(run())


def _diagnostic_events() -> tuple[Event, ...]:
    """Kinds that a correct run never produces, from the real admission controllers: a denied
    task lease, a stale selection, and releases that change nothing (task and request)."""
    sink = MemoryEventSink()
    bus = EventBus([sink])
    tasks = TaskAdmissionController({"submission": 1}, events=bus)
    request = SchedulerResourceRequest(amounts=MappingProxyType({"submission": 1}))

    def item(row: int, group: str) -> SchedulableTask:
        return SchedulableTask(
            make_task(0, "c", 0, row, TaskKind.CELL), TaskGroupSpec(key=group, weight=1), request
        )

    queue: WeightedFairQueue[SchedulableTask] = WeightedFairQueue()
    first = item(0, "g")
    queue.enqueue([QueueEntry(item_id=first.task_id, group="g", weight=1, item=first)])
    selection = queue.select_next()
    assert selection is not None
    lease = tasks.try_acquire(selection.entry.item)
    assert isinstance(lease, TaskAdmissionLease)
    assert not isinstance(tasks.try_acquire(item(1, "g")), TaskAdmissionLease)
    other = item(2, "h")
    queue.enqueue([QueueEntry(item_id=other.task_id, group="h", weight=1, item=other)])
    assert commit_selection(queue, tasks, selection, lease) is None
    assert not tasks.release(lease).released
    key = ProviderModelKey(provider="p", model_id="m-1")
    requests = RequestAdmissionController({key: 1}, events=bus)
    resource = RequestResourceKey(provider_model=key, domain=RequestDomain.CHAT)
    granted = requests.try_acquire(
        RequestAdmissionItem.capture(resource=resource, group="g", attempt_id=1)
    )
    assert isinstance(granted, RequestAdmissionLease)
    requests.release(granted, RequestReleaseOutcome.SUCCESS)
    assert not requests.release(granted, RequestReleaseOutcome.SUCCESS).released
    return sink.events


def _by_attempt(events: Sequence[Event]) -> dict[tuple[str, int], dict[EventKind, Event]]:
    found: dict[tuple[str, int], dict[EventKind, Event]] = {}
    for event in events:
        if isinstance(event, TaskEvent):
            found.setdefault((event.task_id, event.attempt), {}).setdefault(event.kind, event)
    return found


TASK_POINTS = (
    EventKind.DEPENDENCY_READY,
    EventKind.READY_ENQUEUED,
    EventKind.SELECTED,
    EventKind.TASK_LEASE_ACQUIRED,
    EventKind.REQUEST_PRESSURE_ADVISORY_SKIPPED,
    EventKind.WORKER_SPAWNED,
    EventKind.TASK_COMPLETED,
    EventKind.TASK_LEASE_RELEASED,
)


def _assert_emitted_at_their_points(events: Sequence[Event]) -> None:
    """Per stream: sequences from 0 without gaps, ``captured_at`` never going back. Per task
    attempt: its events in pipeline order, never a worker before its lease; a redispatch after
    its deferral; request events inside the attempt that made them."""
    for stream in EventStream:
        in_stream = [e for e in events if e.stream is stream]
        assert [e.sequence for e in in_stream] == list(range(len(in_stream)))
        times = [e.captured_at for e in in_stream]
        assert times == sorted(times), stream
    attempts = _by_attempt(events)
    position = {id(event): index for index, event in enumerate(events)}
    for key, seen in attempts.items():
        order = [position[id(seen[kind])] for kind in TASK_POINTS if kind in seen]
        assert order == sorted(order), (key, sorted(seen, key=lambda k: position[id(seen[k])]))
        if EventKind.WORKER_SPAWNED in seen:
            assert EventKind.TASK_LEASE_ACQUIRED in seen, key
        if EventKind.SALVAGE_REDISPATCHED in seen:
            deferred = attempts[(key[0], key[1] - 1)][EventKind.RETRY_DEFERRED]
            assert position[id(deferred)] < position[id(seen[EventKind.SALVAGE_REDISPATCHED])]
    spawned = {e.execution_id: e for e in events if isinstance(e, WorkerSpawned)}
    ended = {e.execution_id: e for e in events if isinstance(e, TaskCompleted)}
    for event in events:
        # (An untraced attempt of a sampled run has no worker_spawned to compare with.)
        if (
            isinstance(event, AttemptEvent)
            and event.correlation is not None
            and event.correlation.traced
        ):
            worker = spawned[event.correlation.execution_id]
            assert (event.correlation.task_id, event.correlation.column) == (
                worker.task_id,
                worker.column,
            )
            end = ended.get(worker.execution_id)
            assert worker.captured_at <= event.captured_at
            if end is not None and event.kind is not EventKind.REQUEST_LEASE_RELEASED:
                assert event.captured_at <= end.captured_at


def test_every_canonical_kind_is_emitted_at_its_point() -> None:
    seen: set[EventKind] = set()
    for scenario in (
        _busy_run,
        _timeout_then_cancel_run,
        _breaker_run,
        _spawn_failure_run,
        functools.partial(_straggler_run, hedging=False),
        functools.partial(_straggler_run, hedging=True),
    ):
        events = scenario()
        _assert_emitted_at_their_points(events)
        seen |= {event.kind for event in events}
    seen |= {event.kind for event in _diagnostic_events()}
    assert sorted(set(EventKind) - seen) == []


def test_immediate_acquires_are_zero_length_waits_and_queued_ones_are_not() -> None:
    events = _busy_run()
    started = {e.attempt_id: e for e in events if isinstance(e, RequestWaitStarted)}
    completed = [e for e in events if isinstance(e, RequestWaitCompleted)]
    immediate = [e for e in completed if e.waited_seconds == 0.0]
    queued = [e for e in completed if e.waited_seconds > 0.0]
    assert immediate and queued
    for event in immediate:
        assert event.captured_at == started[event.attempt_id].captured_at
    for event in queued:
        wait = event.captured_at - started[event.attempt_id].captured_at
        assert wait == pytest.approx(event.waited_seconds)


def test_request_events_carry_the_task_that_made_the_call_also_from_child_tasks() -> None:
    events = _busy_run()
    spawned = {e.execution_id: e for e in events if isinstance(e, WorkerSpawned)}
    by_attempt: dict[int, set[tuple[str, int]]] = {}
    for event in events:
        if isinstance(event, AttemptEvent):
            assert event.correlation is not None, event
            correlation = event.correlation
            worker = spawned[correlation.execution_id]
            assert (correlation.task_id, correlation.row_group) == (
                worker.task_id,
                worker.row_group,
            )
            by_attempt.setdefault(event.attempt_id, set()).add(
                (correlation.task_id, correlation.execution_id)
            )
    assert all(len(owners) == 1 for owners in by_attempt.values())
    calls_per_execution = Counter(next(iter(owners))[1] for owners in by_attempt.values())
    fan_out = [
        execution
        for execution, calls in calls_per_execution.items()
        if spawned[execution].column == "fan" and calls >= 2
    ]
    assert fan_out  # the custom column's two child-task calls went to its own attempt
    view = CorrelatedRuntimeView.from_events(events)
    assert view.unattributed_requests() == ()
    timeline = view.timeline(spawned[fan_out[0]].task_id, spawned[fan_out[0]].attempt)
    assert timeline is not None and len(timeline.requests) >= 2
    assert [name for name, _ in timeline.stages()][:5] == [
        "dependency_ready",
        "enqueued",
        "selected",
        "task_lease_acquired",
        "worker_spawned",
    ]
    times = [at for _, at in timeline.stages()]
    assert times[0] <= min(times[1:]) and times[-1] == max(times)


# -- the canary over real HTTP ------------------------------------------------------------------

KEY_ENV = "SLUICEWAY_EVENTS_CANARY_KEY"
OTEL_LABELS = {"stream", "kind", "group_kind", "outcome", "reason", "domain", "result", "direction"}
API_KEY = f"sk-{CANARY}-key"


class CleanErrorsProvider(StormProvider):
    """A ``StormProvider`` whose refusals quote no content (the manifest keeps a drop's
    reason, which quotes the provider's message)."""

    async def send(self, request: ModelRequest) -> ModelResponse:
        try:
            return await super().send(request)
        except BadRequestError:
            raise BadRequestError("refused by the test provider") from None


def test_the_canary_reaches_no_event_log_report_metric_or_artifact(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The canary is in row values, prompts, completions and the API key of an HTTP provider
    (the loopback mock server refuses requests without that key). Outside the dataset's own
    Parquet files and the saved config, no file of the run directory, log record, event or
    metric holds it; the API key is in no file at all."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, API_KEY)
    RETRIED.clear()
    out = tmp_path / "run"
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    memory = MemoryEventSink()
    bus = EventBus([memory, OpenTelemetryEventSink(meter_provider)])

    async def run() -> tuple[RunOutcome, dict[str, Any]]:
        server = MockProviderServer(MockServerSettings(api_key=API_KEY))
        await server.start()
        try:
            config = _storm_config()
            config["providers"].append(
                {
                    "name": "mock",
                    "type": "openai",
                    "base_url": server.base_url,
                    "api_key_env": KEY_ENV,
                }
            )
            config["models"].append(
                {"alias": "w", "provider": "mock", "model": "mock-w", "max_parallel_requests": 4}
            )
            config["columns"].append(
                {
                    "name": "summary",
                    "type": "llm_text",
                    "model": "w",
                    "prompt": f"{CANARY} summarize {{{{ text }}}} on {{{{ topic }}}}",
                }
            )
            outcome = await run_dataset(
                DatasetConfig.model_validate(config),
                RunOptions(
                    output_dir=out,
                    extra_providers={"p": CleanErrorsProvider(rate_limited_first=2)},
                    events=bus,
                    events_file=out / EVENTS_FILE_NAME,
                    report=True,
                ),
            )
            return outcome, server.stats()
        finally:
            await server.aclose()

    outcome, stats = asyncio.run(run())
    metrics = reader.get_metrics_data()
    meter_provider.shutdown()
    assert outcome.info.rows_written > 0 and outcome.info.rows_dropped > 0
    # Every summary went over HTTP with the key: the server refuses a request without it.
    assert "401" not in stats["responses_by_status"]
    assert stats["responses_by_status"]["200"] == outcome.info.rows_written
    rows = pd.concat(pd.read_parquet(path) for path in sorted(out.glob("part-*.parquet")))
    assert rows["text"].str.contains(CANARY).all()  # completions carry the canary...
    assert rows["topic"].str.contains(CANARY).all()  # ...and so does row data
    dataset_files = {"run_config.json"} | {path.name for path in out.glob("part-*.parquet")}
    checked = 0
    for path in sorted(out.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        assert API_KEY.encode() not in data, path.name
        if path.name not in dataset_files:
            assert CANARY.encode() not in data, path.name
            checked += 1
    assert checked >= 6  # events, report and its three plots, capacity plan, manifest
    assert {EVENTS_FILE_NAME, "report.md", "capacity_plan.json", "manifest.json"} <= {
        path.name for path in out.iterdir()
    }
    for event in memory.events:
        assert CANARY not in repr(event)
    assert metrics is not None and CANARY not in metrics.to_json()
    # Labels come from closed sets: no model id, task id, group key, column or run id.
    points = [
        (metric.name, point)
        for resource_metrics in metrics.resource_metrics
        for scope in resource_metrics.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    ]
    names = {name for name, _ in points}
    assert {
        "sluiceway.events",
        "sluiceway.request.duration",
        "sluiceway.request.rate_limited",
    } <= names
    for _, point in points:
        assert set(point.attributes) <= OTEL_LABELS
        for value in point.attributes.values():
            assert "/" not in str(value) and str(value) not in {"m-1", "mock-w", "p", "mock"}
    in_flight = [p.value for name, p in points if name == "sluiceway.request.in_flight"]
    assert sum(in_flight) == 0  # every request lease acquired was released
    for record in caplog.records:
        assert CANARY not in record.getMessage(), record.getMessage()
        assert CANARY not in str(record.args)


# -- the capacity plan --------------------------------------------------------------------------


def test_every_run_writes_a_capacity_plan_that_agrees_with_its_events(tmp_path: Path) -> None:
    RETRIED.clear()
    memory = MemoryEventSink()
    config = _storm_config(max_in_flight_tasks=6, request_admission={"initial_limit": 2})
    outcome = _run(
        tmp_path,
        StormProvider(rate_limited_first=2),
        config=config,
        events=EventBus([memory]),
    )
    plan = json.loads((tmp_path / "capacity_plan.json").read_text())
    assert plan == json.loads(outcome.capacity_plan.to_json())
    configured = plan["configured"]
    assert configured["run.num_records"] == {
        "value": 24,
        "source": "run_config",
        "fallback_from": None,
        "missing_reason": None,
    }
    assert configured["run.max_local_tasks"]["source"] == "default"
    assert configured["models.m.max_parallel_requests"]["source"] == "model_metadata"
    assert configured["models.m.initial_limit"]["value"] == 2
    assert configured["request_admission.p/m-1.static_cap"]["value"] == 2
    horizon = configured["run.row_group_horizon.max_rows_in_flight"]
    assert (horizon["source"], horizon["fallback_from"]) == ("engine_internal_config", "run_config")
    assert horizon["value"] == 4 * 4 * 4 and horizon["missing_reason"]
    runtime = plan["runtime_snapshot"]
    assert runtime["task_admission"]["active_leases"] == 0
    assert runtime["request_admission"]["live_leases"] == 0
    assert runtime["request_admission"]["waiters"] == 0
    # The maxima are what the events show.
    events = memory.events
    in_flight = max(e.in_flight for e in events if isinstance(e, RequestLeaseAcquired))
    observed = plan["observed_maxima"]
    assert observed["requests_in_flight_by_resource"] == {"p/m-1[chat]": in_flight}
    assert observed["requests_in_flight_by_provider_model"] == {"p/m-1": in_flight}
    depth: dict[str, int] = {}
    for event in events:
        if isinstance(event, ReadyEnqueued):
            depth[event.group] = max(depth.get(event.group, 0), event.group_depth)
    assert observed["queued_tasks_by_group"] == depth
    admitted = [e.row_groups_in_flight for e in events if isinstance(e, RowGroupAdmitted)]
    assert observed["row_groups_in_flight"] == max(admitted)
    limits = [e.limit for e in events if isinstance(e, RequestLimitDecreased)]
    assert observed["min_limit_by_resource"] == {"p/m-1[chat]": min(limits)}


def test_every_timeline_of_a_run_follows_the_spec_order() -> None:
    view = CorrelatedRuntimeView.from_events(_busy_run())
    timelines = [timeline for timeline in view.timelines() if timeline.is_complete]
    assert len(timelines) > 50
    with_requests = 0
    for timeline in timelines:
        task_times = [
            timeline.dependency_ready_at,
            timeline.enqueued_at,
            timeline.selected_at,
            timeline.lease_acquired_at,
            timeline.spawned_at,
            timeline.completed_at,
            timeline.lease_released_at,
        ]
        known = [at for at in task_times if at is not None]
        assert known == sorted(known), timeline
        assert timeline.spawned_at is not None and timeline.completed_at is not None
        for request in timeline.requests:
            with_requests += 1
            request_times = [
                request.wait_started_at,
                request.wait_ended_at,
                request.lease_acquired_at,
                request.model_started_at,
                request.model_completed_at,
                request.lease_released_at,
            ]
            assert None not in request_times, request
            assert request_times == sorted(request_times), request  # type: ignore[type-var]
            assert timeline.spawned_at <= request.wait_started_at  # type: ignore[operator]
            assert request.lease_released_at <= timeline.completed_at  # type: ignore[operator]
    assert with_requests > 50


class FailingSink:
    """Raises on the ``fail_at``-th event it is handed."""

    kinds = frozenset(EventKind)

    def __init__(self, fail_at: int) -> None:
        self._left = fail_at
        self.handled = 0

    def handle(self, event: Event) -> None:
        self.handled += 1
        self._left -= 1
        if self._left == 0:
            raise OSError("the metrics backend went away")

    def close(self) -> None:
        pass


def test_a_failing_sink_is_disabled_and_logged_once_while_the_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    failing = FailingSink(fail_at=25)
    healthy = MemoryEventSink()
    bus = EventBus([failing, healthy])
    with caplog.at_level(logging.ERROR, logger="sluiceway.observability"):
        outcome = _run(tmp_path, CanaryProvider(), events=bus)
    assert outcome.info.rows_written + outcome.info.rows_dropped == 12
    assert failing.handled == 25  # nothing more after it failed
    assert bus.statistics().disabled_sinks == ("FailingSink",)
    logged = [r for r in caplog.records if "FailingSink" in r.getMessage()]
    assert len(logged) == 1 and "disabled" in logged[0].getMessage()
    kinds = [event.kind for event in healthy.events]
    assert kinds[-1] is EventKind.SCHEDULER_JOB_COMPLETED and len(kinds) > 25
    # The run's own events file was written in full all the same.
    from_file = list(read_events(tmp_path / EVENTS_FILE_NAME))
    assert [e.sequence for e in from_file] == [e.sequence for e in healthy.events]


def test_plain_progress_lines_of_a_run_show_models_limits_and_rate_limits(tmp_path: Path) -> None:
    RETRIED.clear()
    stream = io.StringIO()
    outcome = _run(
        tmp_path,
        StormProvider(rate_limited_first=2),
        config=_storm_config(),
        progress=LogProgress(stream),
        progress_interval_seconds=0.0,
    )
    lines = stream.getvalue().splitlines()
    assert lines[0] == "run started: 24 records"
    done = outcome.info.rows_written + outcome.info.rows_dropped
    assert lines[-1].startswith(f"progress: {done}/24 records (100.0%), ")
    assert re.search(r"; m \(p/m-1\) 0/\d/2 in flight/limit/cap, 2 rate limited", lines[-1])
    assert len(lines) > 3  # a line per update, not only start and end


# -- trace sampling -----------------------------------------------------------------------------

ALWAYS_SEEN_IN_A_BUSY_RUN = {
    EventKind.SCHEDULER_JOB_STARTED,
    EventKind.SCHEDULER_JOB_COMPLETED,
    EventKind.SCHEDULER_HEALTH_SNAPSHOT,
    EventKind.ROW_GROUP_ADMITTED,
    EventKind.ROW_GROUP_CHECKPOINTED,
    EventKind.QUEUE_DRAINED,
    EventKind.ADMISSION_BLOCKED,
    EventKind.RETRY_DEFERRED,
    EventKind.SALVAGE_REDISPATCHED,
    EventKind.NON_RETRYABLE_DROPPED,
    EventKind.REQUEST_RESOURCE_REGISTERED,
    EventKind.REQUEST_RATE_LIMITED,
    EventKind.REQUEST_LIMIT_DECREASED,
    EventKind.REQUEST_LIMIT_INCREASED,
}


def test_a_sampled_run_records_traced_timelines_only_and_every_aggregate() -> None:
    events = _busy_run(trace_sample_rate=0.5)
    _assert_emitted_at_their_points(events)  # the invariants hold for the traced attempts
    sampler = TraceSampler(0.5)
    attempts = _by_attempt(events)
    traced = {key for key in attempts if sampler.traces(*key)}
    for key, seen in attempts.items():
        detail = set(seen) & TRACED_KINDS
        if key in traced:
            # A traced attempt has its whole timeline (the advisory only under pressure), or
            # its start when it was withdrawn from the queue because its row was dropped.
            assert {EventKind.DEPENDENCY_READY, EventKind.READY_ENQUEUED} <= detail, key
            if EventKind.SELECTED in detail:
                assert set(TASK_POINTS) - {EventKind.REQUEST_PRESSURE_ADVISORY_SKIPPED} <= detail
        else:
            assert not detail, key  # an untraced one only its always-recorded events
    untraced_failures = [
        key
        for key, seen in attempts.items()
        if key not in traced
        and {EventKind.RETRY_DEFERRED, EventKind.NON_RETRYABLE_DROPPED} & set(seen)
    ]
    assert traced and untraced_failures  # both sides of the sample are in this run
    for event in events:
        if isinstance(event, AttemptEvent) and event.kind in TRACED_KINDS:
            assert event.correlation is not None and event.correlation.traced
    assert {event.kind for event in events} >= ALWAYS_SEEN_IN_A_BUSY_RUN
    # Every rate-limited attempt is counted, traced or not.
    assert sum(e.kind is EventKind.REQUEST_RATE_LIMITED for e in events) == 2
    # The attempts that are traced make request calls attributed to their own worker.
    view = CorrelatedRuntimeView.from_events(events)
    assert {(t.task_id, t.attempt) for t in view.timelines()} == traced


def test_the_same_config_traces_the_same_task_attempts_and_rate_one_traces_all(
    tmp_path: Path,
) -> None:
    def traced_attempts(out: Path, rate: float) -> tuple[set[tuple[str, int]], RunOutcome]:
        outcome = _run(
            out,
            CanaryProvider(),
            config=_config(num_records=40, events={"trace_sample_rate": rate}),
        )
        events = list(read_events(out / EVENTS_FILE_NAME))
        assert read_events_header(out / EVENTS_FILE_NAME)["trace_sample_rate"] == rate
        return {(e.task_id, e.attempt) for e in events if isinstance(e, WorkerSpawned)}, outcome

    first, outcome = traced_attempts(tmp_path / "a", 0.25)
    second, _ = traced_attempts(tmp_path / "b", 0.25)
    assert first == second
    every, full = traced_attempts(tmp_path / "c", 1.0)
    dispatched = full.capacity_plan.runtime_snapshot["scheduler"]["tasks_dispatched"]
    assert len(every) == dispatched
    assert outcome.capacity_plan.runtime_snapshot["scheduler"]["tasks_dispatched"] == dispatched
    assert first == {key for key in every if TraceSampler(0.25).traces(*key)}
    assert 0 < len(first) < len(every)
    report = (tmp_path / "a" / "report.md").read_text()
    assert "## Trace sampling" in report and "1/4 of the task attempts" in report
    assert "## Trace sampling" not in (tmp_path / "c" / "report.md").read_text()


def _attribution_config(rate: float) -> DatasetConfig:
    """400 cells on one simulated model of 4 parallel requests at 20 ms each, 16 tasks in flight:
    cells wait in the ready queue, then for a request lease, then at the provider. Each layer
    holds a steady share of the outstanding attempts, so a stall of the machine (which the
    shares of one run cannot avoid) moves them little."""
    return DatasetConfig.model_validate(
        {
            "providers": [
                {"name": "sim", "type": "simulated", "simulation": {"latency_seconds": 0.02}}
            ],
            "models": [
                {"alias": "m", "provider": "sim", "model": "m-1", "max_parallel_requests": 4}
            ],
            "columns": [
                {
                    "name": "n",
                    "type": "sampler",
                    "sampler": {"kind": "integer", "low": 1, "high": 9},
                },
                {"name": "text", "type": "llm_text", "model": "m", "prompt": "Say {{ n }}"},
            ],
            "run": {
                "num_records": 400,
                "seed": 3,
                "buffer_size": 100,
                "max_concurrent_row_groups": 2,
                "max_in_flight_tasks": 16,
                "events": {"trace_sample_rate": rate},
            },
        }
    )


def test_a_sampled_report_attributes_time_like_a_full_trace_of_the_same_config(
    tmp_path: Path,
) -> None:
    shares = {}
    for rate in (1.0, 0.25):
        out = tmp_path / f"rate-{rate}"
        outcome = asyncio.run(
            run_dataset(
                _attribution_config(rate),
                RunOptions(output_dir=out, events_file=out / EVENTS_FILE_NAME, report=True),
            )
        )
        assert outcome.info.rows_written == 400
        artifacts = build_report(out)
        rows = {row.name: row for row in artifacts.attribution.by_column}
        rows["overall"] = artifacts.attribution.overall
        shares[rate] = {
            (name, layer): row.share(layer) for name, row in rows.items() for layer in Layer
        }
        if rate < 1:
            traced = rows["text"].attempts
            assert 60 < traced < 140  # about a quarter of the 400 cells
            text = artifacts.report_path.read_text()
            # The sample's request count is scaled back to the run: near the 400 made.
            (estimate,) = re.findall(r"model requests \| ≈([\d,]+) success", text)
            assert abs(int(estimate.replace(",", "")) - 400) < 100
        else:
            assert rows["text"].attempts == 400
    assert shares[1.0].keys() == shares[0.25].keys()
    # The cells and the whole run; the sampler column has 8 attempts (2 traced): too few.
    compared = [key for key in shares[1.0] if key[0] in ("text", "overall")]
    assert len(compared) == 2 * len(Layer)
    for key in compared:
        full = shares[1.0][key]
        assert abs(shares[0.25][key] - full) < 0.1, (key, full, shares[0.25][key])
