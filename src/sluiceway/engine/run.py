"""The composition root: one function turns a ``DatasetConfig`` into a finished run.

It builds the column graph and generators, resolves scheduling, creates providers, request
admission, the executor and the model facade, and runs the ``AsyncTaskScheduler`` with a sink that
writes Parquet (or keeps rows in memory for a preview). Nothing here makes scheduling decisions.
One ``EventBus`` serves the run (``RunOptions.events``); ``RunOptions.events_file`` adds a JSONL
sink for the run's duration, and ``RunOptions.report`` builds ``report.md`` from it afterwards.
The scheduler samples task attempts for their detail events at ``run.events.trace_sample_rate``
(written into the events file's header), and a health snapshot goes out every
``RunOptions.health_snapshot_interval_seconds`` while the run lasts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sluiceway.columns.base import ColumnGenerator, GenerationStrategy
from sluiceway.columns.factory import build_generators
from sluiceway.config.fingerprint import config_fingerprint
from sluiceway.config.graph import ColumnGraph
from sluiceway.config.models import DatasetConfig, ProviderConfig
from sluiceway.engine.cancellation import RunCancellation
from sluiceway.engine.capacity import build_capacity_plan, request_pressure_advisory
from sluiceway.engine.collector import long_lived_objects_frozen
from sluiceway.engine.progress import (
    ProgressListener,
    ProgressSnapshot,
    column_progress,
    model_progress,
)
from sluiceway.engine.resume import (
    ResumePlan,
    journal_model_generators,
    plan_resume,
    resumed_config,
)
from sluiceway.engine.row_groups import DroppedRow, EngineRowGroupHandler, RowGroupSink
from sluiceway.engine.sinks import MemorySink, ParquetSink
from sluiceway.errors import (
    RunCancelledError,
    RunInterruptedError,
    RunStoppedError,
    SluicewayError,
    StorageError,
)
from sluiceway.observability import EventBus, EventKind, JsonlEventSink
from sluiceway.providers.base import ProviderClient
from sluiceway.providers.registry import build_provider_client
from sluiceway.requests.executor import ModelRequestExecutor
from sluiceway.requests.facade import ModelFacade
from sluiceway.requests.keys import RequestResourceResolver
from sluiceway.requests.retry import RetryPolicy
from sluiceway.requests.setup import (
    budgets_from_config,
    build_request_admission,
    straggler_settings,
)
from sluiceway.scheduling.admission import TaskAdmissionController
from sluiceway.scheduling.failures import EarlyShutdownSettings
from sluiceway.scheduling.policies import TaskAdmissionPolicyKind, make_policy
from sluiceway.scheduling.resolver import TaskSchedulingResolver
from sluiceway.scheduling.row_group_admission import RowGroupHorizonMode
from sluiceway.scheduling.scheduler import AsyncTaskScheduler, SchedulerSettings
from sluiceway.scheduling.tasks import SchedulerResource, TaskKind
from sluiceway.scheduling.tracker import CompletionTracker, TrackerNode
from sluiceway.storage.capacity_plan import (
    CAPACITY_PLAN_FILE_NAME,
    CapacityPlan,
    capacity_plan_from_json,
)

logger = logging.getLogger(__name__)

_KIND_OF_STRATEGY = {
    GenerationStrategy.CELL: TaskKind.CELL,
    GenerationStrategy.BATCH: TaskKind.BATCH,
    GenerationStrategy.FROM_SCRATCH: TaskKind.FROM_SCRATCH,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInfo:
    """What a finished run produced and what it cost."""

    run_id: str
    output_path: Path | None
    config_fingerprint: str
    seed: int
    num_records: int
    rows_written: int
    rows_dropped: int
    dropped_rows: tuple[DroppedRow, ...]
    model_requests: int
    model_calls_succeeded: int
    rate_limited: int
    wall_seconds: float
    columns: tuple[str, ...]
    row_groups_resumed: int = 0  # row groups already on disk when a resumed run started
    cells_replayed: int = 0  # model-backed results taken from the journal, not regenerated
    # A resume found the run already complete: nothing ran and nothing was written.
    already_complete: bool = False


@dataclass(slots=True, kw_only=True)
class RunOptions:
    """How to run: where to write (``None`` = keep rows in memory), and who watches."""

    output_dir: Path | None
    overwrite: bool = False
    resume: bool = False  # continue the stopped run in ``output_dir`` (SPEC §8)
    journal: bool = True  # journal completed model-backed cells (``journal.sqlite``)
    progress: ProgressListener | None = None
    progress_interval_seconds: float = 0.5
    extra_providers: Mapping[str, ProviderClient] = field(default_factory=dict)
    cancellation: RunCancellation | None = None  # cancel() stops the run in order (SPEC §5.5)
    # Observability (SPEC §9.1): the bus every component emits on (None: a bus with no sinks;
    # its sinks belong to the caller), a JSONL events file written for this run (truncated at
    # start; ``events.jsonl`` in the run directory by convention), and whether to build
    # ``report.md`` in ``output_dir`` from that file after the run, whatever its outcome.
    events: EventBus | None = None
    events_file: Path | None = None
    report: bool = False
    # A scheduler health snapshot every so many seconds while the run lasts (when a sink
    # listens; None or 0: only at job start, checkpoints and job end). It keeps queue depths in the
    # report exact between checkpoints when task attempts are trace-sampled.
    health_snapshot_interval_seconds: float | None = 0.5


@dataclass(slots=True, kw_only=True)
class RunOutcome:
    info: RunInfo
    rows: list[dict[str, Any]] | None  # only for in-memory runs
    capacity_plan: CapacityPlan


def output_columns(config: DatasetConfig) -> tuple[str, ...]:
    """Columns written to the dataset: every produced column of every non-dropped column."""
    columns: list[str] = []
    for column in config.columns:
        if not column.drop:
            columns.extend(column.produced_columns())
    return tuple(columns)


def _provider_client(provider: ProviderConfig, config: DatasetConfig) -> ProviderClient:
    return build_provider_client(provider, seed=config.run.seed, models=config.models)


def _tracker_nodes(generators: Sequence[ColumnGenerator]) -> list[TrackerNode]:
    index_of = {generator.name: i for i, generator in enumerate(generators)}
    return [
        TrackerNode(
            name=generator.name,
            kind=_KIND_OF_STRATEGY[generator.strategy],
            dependencies=tuple(sorted({index_of[dep] for dep in generator.dependencies})),
        )
        for generator in generators
    ]


def _primary_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a failed task group: cancellation first, then the first
    Sluiceway error, then whatever came first (with the group attached as its context)."""
    leaves: list[BaseException] = []

    def collect(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                collect(inner)
        else:
            leaves.append(error)

    collect(group)
    for kind in (KeyboardInterrupt, asyncio.CancelledError, SluicewayError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if leaves else group


class _ProgressTicker:
    """Calls the listener's ``on_progress`` at most every ``interval`` seconds while records are
    still to be done. The final state is ``on_finish``'s alone (the run calls it with its wall
    time): a progress line of a finished run would show the same counts at another rate."""

    def __init__(
        self,
        listener: ProgressListener | None,
        interval: float,
        snapshot: Callable[[], ProgressSnapshot],
    ) -> None:
        self._listener = listener
        self._interval = interval
        self._snapshot = snapshot
        self._last = 0.0

    def tick(self) -> None:
        if self._listener is None:
            return
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            snapshot = self._snapshot()
            if snapshot.records_done < snapshot.records_total:
                self._listener.on_progress(snapshot)

    async def run_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.tick()


def _open_events_file(
    bus: EventBus, path: Path, *, trace_sample_rate: float
) -> JsonlEventSink | None:
    """Attach a JSONL sink writing ``path``; a file that cannot be made is logged, not fatal."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sink = JsonlEventSink(path, trace_sample_rate=trace_sample_rate)
    except OSError as error:
        logger.error(
            "cannot write events to %s (%s); the run goes on without them",
            path,
            type(error).__name__,
        )
        return None
    bus.add_sink(sink)
    return sink


async def _emit_health_periodically(scheduler: AsyncTaskScheduler, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        scheduler.emit_health_snapshot()


def _close_events_file(bus: EventBus, sink: JsonlEventSink) -> None:
    bus.remove_sink(sink)
    try:
        sink.close()
    except Exception as error:
        logger.error("the events file %s is incomplete (%s)", sink.path, type(error).__name__)


def _write_report(run_dir: Path, events_file: Path) -> None:
    """Build ``report.md`` and its plots; a failure is logged and never fails the run."""
    try:
        # Imported here: plotting pulls in matplotlib, which a run without a report never needs.
        from sluiceway.observability.report import build_report

        build_report(run_dir, events_path=events_file)
    except Exception:
        logger.exception(
            "the run report could not be built from %s; rebuild it with `sluiceway report %s`",
            events_file,
            run_dir,
        )


def _already_complete(plan: ResumePlan, output_dir: Path, started: float) -> RunOutcome:
    """The outcome of resuming a run that already finished: what its manifest and capacity plan
    say, with nothing run and nothing written (the events file and the report stay as they
    are). Blocks (reads the capacity plan)."""
    if plan.journal is not None:
        plan.journal.close()
    manifest = plan.manifest
    try:
        text = (output_dir / CAPACITY_PLAN_FILE_NAME).read_text(encoding="utf-8")
        capacity_plan = capacity_plan_from_json(text)
    except (OSError, UnicodeDecodeError, StorageError):
        capacity_plan = CapacityPlan()
    info = RunInfo(
        run_id=manifest.run_id,
        output_path=output_dir,
        config_fingerprint=manifest.config_fingerprint,
        seed=manifest.seed,
        num_records=manifest.num_records,
        rows_written=manifest.rows_written,
        rows_dropped=manifest.rows_dropped,
        dropped_rows=tuple(
            DroppedRow(row_index=row.row_index, column=row.column, reason=row.reason)
            for row in manifest.dropped_rows
        ),
        model_requests=0,
        model_calls_succeeded=0,
        rate_limited=0,
        wall_seconds=time.monotonic() - started,
        columns=manifest.columns,
        row_groups_resumed=len(plan.completed_row_groups),
        already_complete=True,
    )
    return RunOutcome(info=info, rows=None, capacity_plan=capacity_plan)


async def run_dataset(config: DatasetConfig, options: RunOptions) -> RunOutcome:
    """Generate the dataset described by ``config``. Raises on fatal errors; rows that fail
    permanently are dropped and reported in ``RunInfo.dropped_rows`` and the manifest.

    Resuming a run that already completed runs and writes nothing: the outcome describes the
    dataset on disk, with ``RunInfo.already_complete`` set."""
    started = time.monotonic()
    fingerprint = config_fingerprint(config)
    resume: ResumePlan | None = None
    if options.resume and options.output_dir is not None:
        if options.overwrite:
            raise StorageError(
                "resume and overwrite exclude each other: --resume continues the dataset in "
                f"{options.output_dir}, --overwrite deletes it; pass only one of them"
            )
        resume = await asyncio.to_thread(
            plan_resume,
            Path(options.output_dir),
            config=config,
            fingerprint=fingerprint,
            use_journal=options.journal,
        )
        if resume is not None and resume.is_complete:
            return await asyncio.to_thread(
                _already_complete, resume, Path(options.output_dir), started
            )
        if resume is not None:
            config = resumed_config(config, resume)
    run = config.run
    run_id = resume.manifest.run_id if resume is not None else uuid.uuid4().hex[:12]
    graph = ColumnGraph.build(config)
    generators = build_generators(config, graph)
    built = tuple(generators)  # closed when the run ends (the journal wraps some of them)
    resolver = TaskSchedulingResolver()
    scheduling = [resolver.resolve(generator) for generator in generators]
    bus = options.events if options.events is not None else EventBus()

    clients: dict[str, ProviderClient] = dict(options.extra_providers)
    for provider in config.providers:
        if provider.name not in clients:
            clients[provider.name] = _provider_client(provider, config)
    request_resolver = RequestResourceResolver(config.models)
    request_admission = build_request_admission(
        run,
        request_resolver,
        events=bus,
        budgets=budgets_from_config(
            config.providers,
            config.models,
            window_seconds=config.run.request_admission.budget_window_seconds,
        ),
        models=config.models,
    )
    executor = ModelRequestExecutor(
        request_admission,
        retry=RetryPolicy(
            max_attempts=run.retry.max_attempts,
            max_wall_seconds=run.retry.max_wall_seconds,
            backoff_base_seconds=run.retry.backoff_base_seconds,
            backoff_max_seconds=run.retry.backoff_max_seconds,
        ),
        rng=random.Random(run.seed),
        queue_wait_timeout_seconds=run.request_admission.queue_wait_timeout_seconds,
        events=bus,
        stragglers=straggler_settings(run.stragglers),
    )
    facade = ModelFacade(request_resolver, clients, executor, loop=asyncio.get_running_loop())

    columns = output_columns(config)
    sink: RowGroupSink
    memory: MemorySink | None = None
    if options.output_dir is None:
        memory = MemorySink()
        sink = memory
    else:
        sink = await ParquetSink.open(
            options.output_dir,
            overwrite=options.overwrite,
            columns=columns,
            run_id=run_id,
            fingerprint=fingerprint,
            config=config,
            resume=resume,
            journal=options.journal,
        )
        if sink.replay is not None:
            generators = journal_model_generators(generators, scheduling, sink.replay)
    # After the output directory is prepared (--overwrite clears old events files), before the
    # scheduler and task admission are built.
    events_sink = (
        _open_events_file(
            bus, Path(options.events_file), trace_sample_rate=run.events.trace_sample_rate
        )
        if options.events_file is not None
        else None
    )

    handler = EngineRowGroupHandler(generators=generators, models=facade, seed=run.seed, sink=sink)
    if resume is not None:
        handler.written_count = resume.manifest.rows_written
        handler.dropped_count = resume.manifest.rows_dropped
    task_admission = TaskAdmissionController(
        {
            SchedulerResource.SUBMISSION: run.max_in_flight_tasks,
            SchedulerResource.LOCAL: run.max_local_tasks,
        },
        policy=make_policy(
            TaskAdmissionPolicyKind(run.task_admission.policy),
            borrow_ceiling_fraction=run.task_admission.borrow_ceiling_fraction,
        ),
        events=bus,
    )

    def snapshot(elapsed_seconds: float | None = None) -> ProgressSnapshot:
        stats = executor.statistics()
        return ProgressSnapshot(
            records_total=run.num_records,
            records_done=handler.written_count + handler.dropped_count,
            rows_written=handler.written_count,
            rows_dropped=handler.dropped_count,
            row_groups_total=scheduler.row_groups_total,
            row_groups_done=scheduler.statistics().row_groups_checkpointed
            + scheduler.statistics().row_groups_resumed,
            model_requests=stats.attempts,
            elapsed_seconds=(
                time.monotonic() - started if elapsed_seconds is None else elapsed_seconds
            ),
            columns=column_progress(generator_names, handler.rows_done_by_generator),
            models=model_progress(
                request_admission.pressure.snapshot(), request_admission.statistics()
            ),
            adaptive_timeouts=stats.adaptive_timeouts,
            hedges=stats.hedges_started,
        )

    generator_names = tuple(generator.name for generator in generators)
    ticker = _ProgressTicker(options.progress, options.progress_interval_seconds, snapshot)
    scheduler = AsyncTaskScheduler(
        SchedulerSettings(
            num_records=run.num_records,
            buffer_size=run.buffer_size,
            max_concurrent_row_groups=run.max_concurrent_row_groups,
            max_task_attempts=run.retry.max_attempts,
            run_id=run_id,
            completed_row_groups=(
                resume.completed_row_groups if resume is not None else frozenset()
            ),
            max_task_wall_seconds=run.retry.max_wall_seconds,
            horizon_mode=RowGroupHorizonMode(run.row_group_horizon.mode),
            max_rows_in_flight=run.row_group_horizon.max_rows_in_flight
            or 4 * run.max_concurrent_row_groups * run.buffer_size,
            early_shutdown=(
                EarlyShutdownSettings(
                    window=run.early_shutdown.window,
                    min_outcomes=run.early_shutdown.min_outcomes,
                    max_error_rate=run.early_shutdown.max_error_rate,
                )
                if run.early_shutdown.enabled
                else None
            ),
            trace_sample_rate=run.events.trace_sample_rate,
        ),
        tracker=CompletionTracker(_tracker_nodes(generators)),
        scheduling=scheduling,
        admission=task_admission,
        handler=handler,
        on_progress=ticker.tick,
        events=bus,
        request_pressure=request_pressure_advisory(request_admission),
    )
    if options.progress is not None:
        options.progress.on_start(snapshot())
    status = "failed"
    stopped: RunStoppedError | None = None
    if options.cancellation is not None:
        options.cancellation.bind(asyncio.get_running_loop(), scheduler.cancel)
    # A display refresh on a timer: in-flight counts and rates move between checkpoints.
    refresher = (
        asyncio.create_task(ticker.run_periodically()) if options.progress is not None else None
    )
    interval = options.health_snapshot_interval_seconds
    health = (
        asyncio.create_task(_emit_health_periodically(scheduler, interval))
        if interval is not None and interval > 0 and bus.wants(EventKind.SCHEDULER_HEALTH_SNAPSHOT)
        else None
    )
    try:
        try:
            with long_lived_objects_frozen():
                await scheduler.run()
        except BaseExceptionGroup as group:
            raise _primary_error(group) from None
        status = "completed"
    except RunStoppedError as error:
        # An orderly stop: completed row groups are on disk; report what the run produced.
        status = "cancelled" if isinstance(error, RunCancelledError) else "failed"
        stopped = error
    except asyncio.CancelledError:
        status = "cancelled"
        raise
    finally:
        if refresher is not None:
            refresher.cancel()
        if health is not None:
            health.cancel()
        if options.cancellation is not None:
            options.cancellation.unbind()
        request_admission.shutdown()
        for generator in built:
            generator.close()
        for client in clients.values():
            await client.aclose()
        plan = build_capacity_plan(
            config=config,
            scheduler=scheduler,
            task_admission=task_admission,
            request_admission=request_admission,
            resolution=scheduling,
            executor=executor,
        )
        try:
            if isinstance(sink, ParquetSink):
                await sink.finish(status=status, capacity_plan=plan)
        finally:
            ended = time.monotonic()  # the report below is not part of the run's wall time
            if events_sink is not None:
                await asyncio.to_thread(_close_events_file, bus, events_sink)
                if options.report and options.output_dir is not None:
                    await asyncio.to_thread(
                        _write_report, Path(options.output_dir), events_sink.path
                    )
    stats = executor.statistics()
    info = RunInfo(
        run_id=run_id,
        output_path=options.output_dir,
        config_fingerprint=fingerprint,
        seed=run.seed,
        num_records=run.num_records,
        rows_written=handler.written_count,
        rows_dropped=handler.dropped_count,
        dropped_rows=tuple(sink.dropped_rows()),
        model_requests=stats.attempts,
        model_calls_succeeded=stats.successes,
        rate_limited=stats.rate_limited,
        wall_seconds=ended - started,
        columns=columns,
        row_groups_resumed=scheduler.statistics().row_groups_resumed,
        cells_replayed=(
            sink.replay.statistics().replayed
            if isinstance(sink, ParquetSink) and sink.replay is not None
            else 0
        ),
    )
    if options.progress is not None:
        # At the run's wall time, so its rate agrees with the summary's (the report build and
        # the time since are not part of the run).
        options.progress.on_finish(snapshot(info.wall_seconds))
    if stopped is not None:
        stopped.partial = info
        if isinstance(stopped, RunInterruptedError):
            # The output is finalised (status cancelled, resumable): the KeyboardInterrupt or
            # SystemExit a column raised goes on to the caller as it was raised, with the
            # stopped run (and what it kept) as its cause.
            raise stopped.interrupt from stopped
        raise stopped
    return RunOutcome(
        info=info,
        rows=memory.rows(columns) if memory is not None else None,
        capacity_plan=plan,
    )
