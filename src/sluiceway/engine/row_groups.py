"""Row-group buffers and task execution against them: the engine side of the scheduler hooks.

A row group's rows live in plain dicts from admission until its checkpoint, then are handed to a
sink and forgotten. Generator failures are classified here (``classify_task_error``): non-retryable
errors drop rows (with the reason recorded), retryable ones ask the scheduler for another attempt,
a ``RunStoppedError`` (an open circuit) asks it to stop the run in order, and anything else is a
bug or a fatal error and propagates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sluiceway.columns.base import ColumnGenerator, GenerationContext, ModelCalls
from sluiceway.errors import NonRetryableGenerationError, RunStoppedError, SluicewayError
from sluiceway.scheduling.failures import TaskErrorClass, classify_task_error
from sluiceway.scheduling.scheduler import (
    SUCCEEDED,
    RowGroupHandler,
    TaskOutcome,
    TaskOutcomeKind,
)
from sluiceway.scheduling.tasks import SchedulableTask, TaskKind


@dataclass(frozen=True, slots=True, kw_only=True)
class DroppedRow:
    row_index: int  # global record index
    column: str
    reason: str


class RowGroupSink(Protocol):
    """Receives each completed row group (rows are live rows only, in record order)."""

    async def write_row_group(
        self,
        row_group: int,
        rows: Sequence[dict[str, Any]],
        row_indices: Sequence[int],
        dropped: Sequence[DroppedRow],
        *,
        partial: bool = False,
    ) -> None:
        """``partial``: the run stopped before the group was complete (salvaged rows)."""
        ...

    def dropped_rows(self) -> list[DroppedRow]: ...


class _Buffer:
    __slots__ = ("dropped", "first_record", "rows", "salvaged")

    def __init__(self, first_record: int, size: int) -> None:
        self.first_record = first_record
        self.rows: list[dict[str, Any]] = [{} for _ in range(size)]
        self.dropped: list[DroppedRow] = []
        self.salvaged = False


class EngineRowGroupHandler(RowGroupHandler):
    """Runs generator tasks on row-group buffers and hands finished groups to a sink."""

    def __init__(
        self,
        *,
        generators: Sequence[ColumnGenerator],
        models: ModelCalls,
        seed: int,
        sink: RowGroupSink,
    ) -> None:
        self._generators = generators
        self._models = models
        self._seed = seed
        self._sink = sink
        self._buffers: dict[int, _Buffer] = {}
        self.written_count = 0
        self.dropped_count = 0
        # Rows each generator has finished, resumed work excluded: per-column progress.
        self.rows_done_by_generator: dict[str, int] = {}

    def admit(self, row_group: int, first_record: int, size: int) -> None:
        self._buffers[row_group] = _Buffer(first_record, size)

    async def run_task(self, task: SchedulableTask) -> TaskOutcome:
        spec = task.task
        generator = self._generators[spec.generator]
        buffer = self._buffers[spec.row_group]
        try:
            if spec.kind is TaskKind.CELL:
                assert spec.row_index is not None
                row = buffer.rows[spec.row_index]
                if row is _DEAD:
                    # Dropped after this task was admitted: nothing to compute, nothing to keep.
                    return SUCCEEDED
                ctx = GenerationContext(
                    seed=self._seed,
                    column=generator.name,
                    row_group=spec.row_group,
                    row_indices=(buffer.first_record + spec.row_index,),
                    models=self._models,
                )
                row.update(await generator.generate_cell(row, ctx))
                done = 1
            else:
                done = await self._run_group_task(generator, spec.row_group, buffer, spec.kind)
            counts = self.rows_done_by_generator
            counts[generator.name] = counts.get(generator.name, 0) + done
            return SUCCEEDED
        except SluicewayError as error:
            error_class = classify_task_error(error)
            error_type = type(error).__name__
            if error_class is TaskErrorClass.NON_RETRYABLE:
                return TaskOutcome(
                    kind=TaskOutcomeKind.DROPPED, reason=_reason(error), error_type=error_type
                )
            if error_class is TaskErrorClass.RETRYABLE:
                return TaskOutcome(
                    kind=TaskOutcomeKind.RETRY, reason=_reason(error), error_type=error_type
                )
            if isinstance(error, RunStoppedError):
                return TaskOutcome(
                    kind=TaskOutcomeKind.STOP,
                    reason=_reason(error),
                    error=error,
                    error_type=error_type,
                )
            raise

    async def _run_group_task(
        self, generator: ColumnGenerator, row_group: int, buffer: _Buffer, kind: TaskKind
    ) -> int:
        """Run a batch or from-scratch task over the live rows; returns how many it filled."""
        live = [i for i, row in enumerate(buffer.rows) if row is not _DEAD]
        if not live:
            return 0
        ctx = GenerationContext(
            seed=self._seed,
            column=generator.name,
            row_group=row_group,
            row_indices=[buffer.first_record + i for i in live],
            models=self._models,
        )
        rows = [buffer.rows[i] for i in live]
        if kind is TaskKind.FROM_SCRATCH:
            results: Sequence[Mapping[str, Any]] = await generator.generate_from_scratch(ctx)
        else:
            results = await generator.generate_batch(rows, ctx)
        if len(results) != len(rows):
            raise NonRetryableGenerationError(
                f"column {generator.name!r} returned {len(results)} rows for a batch of "
                f"{len(rows)}; return exactly one result per input row"
            )
        for row, values in zip(rows, results, strict=True):
            row.update(values)
        return len(rows)

    def rows_dropped(self, row_group: int, rows: Sequence[int], column: str, reason: str) -> None:
        buffer = self._buffers[row_group]
        for row in rows:
            buffer.rows[row] = _DEAD
            buffer.dropped.append(
                DroppedRow(row_index=buffer.first_record + row, column=column, reason=reason)
            )
        self.dropped_count += len(rows)

    async def checkpoint(self, row_group: int, live_rows: Sequence[int]) -> None:
        buffer = self._buffers.pop(row_group)
        rows = [buffer.rows[i] for i in live_rows]
        indices = [buffer.first_record + i for i in live_rows]
        if buffer.salvaged:
            await self._sink.write_row_group(row_group, rows, indices, buffer.dropped, partial=True)
        else:
            await self._sink.write_row_group(row_group, rows, indices, buffer.dropped)
        self.written_count += len(rows)

    def row_group_salvaged(self, row_group: int) -> None:
        self._buffers[row_group].salvaged = True


_DEAD: dict[str, Any] = {}  # placeholder for a dropped row; never written to


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
