"""The composition root: one function turns a ``DatasetConfig`` into a finished run.

It builds the column graph and generators, resolves scheduling, creates providers, request
admission, the executor and the model facade, and runs the ``AsyncTaskScheduler`` with a sink that
writes Parquet (or keeps rows in memory for a preview). Nothing here makes scheduling decisions.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sluiceway.columns.base import ColumnGenerator, GenerationStrategy
from sluiceway.columns.factory import build_generators
from sluiceway.config.fingerprint import config_fingerprint
from sluiceway.config.graph import ColumnGraph
from sluiceway.config.models import DatasetConfig, ProviderConfig
from sluiceway.engine.capacity import build_capacity_plan
from sluiceway.engine.progress import ProgressListener, ProgressSnapshot
from sluiceway.engine.row_groups import DroppedRow, EngineRowGroupHandler, RowGroupSink
from sluiceway.engine.sinks import MemorySink, ParquetSink
from sluiceway.errors import ConfigError, ConfigIssue, SluicewayError
from sluiceway.providers.base import ProviderClient
from sluiceway.providers.behaviour import SimulationSettings
from sluiceway.providers.simulated import SimulatedProvider
from sluiceway.requests.admission import RequestAdmissionController
from sluiceway.requests.executor import ModelRequestExecutor
from sluiceway.requests.facade import ModelFacade
from sluiceway.requests.keys import RequestResourceResolver
from sluiceway.requests.retry import RetryPolicy
from sluiceway.scheduling.admission import TaskAdmissionController
from sluiceway.scheduling.resolver import TaskSchedulingResolver
from sluiceway.scheduling.scheduler import AsyncTaskScheduler, SchedulerSettings
from sluiceway.scheduling.tasks import SchedulerResource, TaskKind
from sluiceway.scheduling.tracker import CompletionTracker, TrackerNode
from sluiceway.storage.capacity_plan import CapacityPlan

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


@dataclass(slots=True, kw_only=True)
class RunOptions:
    """How to run: where to write (``None`` = keep rows in memory), and who watches."""

    output_dir: Path | None
    overwrite: bool = False
    progress: ProgressListener | None = None
    progress_interval_seconds: float = 0.5
    extra_providers: Mapping[str, ProviderClient] = field(default_factory=dict)


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


def _provider_client(provider: ProviderConfig, seed: int) -> ProviderClient:
    if provider.type == "simulated":
        sim = provider.simulation
        settings = SimulationSettings(
            latency_seconds=sim.latency_seconds,
            latency_tail_seconds=sim.latency_tail_seconds,
            capacity=sim.capacity,
            rpm=sim.rpm,
            retry_after_seconds=sim.retry_after_seconds,
            failure_rate=sim.failure_rate,
            embedding_dimensions=sim.embedding_dimensions,
        )
        return SimulatedProvider(provider.name, settings, seed=seed)
    raise ConfigError(
        [
            ConfigIssue(
                path=f"providers ({provider.name}).type",
                message=f"provider type {provider.type!r} has no client in this version",
                hint="use type: simulated, or register a client through the Python API",
            )
        ]
    )


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
    """Calls the listener at most every ``interval`` seconds, and always at the end."""

    def __init__(self, listener: ProgressListener | None, interval: float, snapshot: Any) -> None:
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
            self._listener.on_progress(self._snapshot())


async def run_dataset(config: DatasetConfig, options: RunOptions) -> RunOutcome:
    """Generate the dataset described by ``config``. Raises on fatal errors; rows that fail
    permanently are dropped and reported in ``RunInfo.dropped_rows`` and the manifest."""
    started = time.monotonic()
    run = config.run
    run_id = uuid.uuid4().hex[:12]
    fingerprint = config_fingerprint(config)
    graph = ColumnGraph.build(config)
    generators = build_generators(config, graph)
    resolver = TaskSchedulingResolver()
    scheduling = [resolver.resolve(generator) for generator in generators]

    clients: dict[str, ProviderClient] = dict(options.extra_providers)
    for provider in config.providers:
        if provider.name not in clients:
            clients[provider.name] = _provider_client(provider, run.seed)
    request_resolver = RequestResourceResolver(config.models)
    request_admission = RequestAdmissionController(request_resolver.static_caps())
    executor = ModelRequestExecutor(
        request_admission,
        retry=RetryPolicy(
            max_attempts=run.retry.max_attempts,
            max_wall_seconds=run.retry.max_wall_seconds,
            backoff_base_seconds=run.retry.backoff_base_seconds,
            backoff_max_seconds=run.retry.backoff_max_seconds,
        ),
        rng=random.Random(run.seed),
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
        )
    handler = EngineRowGroupHandler(generators=generators, models=facade, seed=run.seed, sink=sink)
    task_admission = TaskAdmissionController(
        {
            SchedulerResource.SUBMISSION: run.max_in_flight_tasks,
            SchedulerResource.LOCAL: run.max_local_tasks,
        }
    )

    def snapshot() -> ProgressSnapshot:
        stats = executor.statistics()
        return ProgressSnapshot(
            records_total=run.num_records,
            records_done=handler.written_count + handler.dropped_count,
            rows_written=handler.written_count,
            rows_dropped=handler.dropped_count,
            row_groups_total=scheduler.row_groups_total,
            row_groups_done=scheduler.statistics.row_groups_checkpointed,
            model_requests=stats.attempts,
            elapsed_seconds=time.monotonic() - started,
        )

    ticker = _ProgressTicker(options.progress, options.progress_interval_seconds, snapshot)
    scheduler = AsyncTaskScheduler(
        SchedulerSettings(
            num_records=run.num_records,
            buffer_size=run.buffer_size,
            max_concurrent_row_groups=run.max_concurrent_row_groups,
            max_task_attempts=run.retry.max_attempts,
            run_id=run_id,
        ),
        tracker=CompletionTracker(_tracker_nodes(generators)),
        scheduling=scheduling,
        admission=task_admission,
        handler=handler,
        on_progress=ticker.tick,
    )
    if options.progress is not None:
        options.progress.on_start(snapshot())
    status = "failed"
    try:
        try:
            await scheduler.run()
        except BaseExceptionGroup as group:
            raise _primary_error(group) from None
        status = "completed"
    except asyncio.CancelledError:
        status = "cancelled"
        raise
    finally:
        request_admission.shutdown()
        for client in clients.values():
            await client.aclose()
        plan = build_capacity_plan(
            config=config,
            scheduler=scheduler,
            task_admission=task_admission,
            request_admission=request_admission,
            resolution=scheduling,
        )
        if isinstance(sink, ParquetSink):
            await sink.finish(status=status, capacity_plan=plan)
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
        wall_seconds=time.monotonic() - started,
        columns=columns,
    )
    if options.progress is not None:
        options.progress.on_finish(snapshot())
    return RunOutcome(
        info=info,
        rows=memory.rows(columns) if memory is not None else None,
        capacity_plan=plan,
    )
