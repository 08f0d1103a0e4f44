"""Task identity and the values that travel through the ready queue (SPEC §4).

A task is one run of one generator over one row (``cell``) or one row group (``batch`` and
``from_scratch``). Its id is stable across runs: ``column/row_group/row_index`` (``*`` for groups).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class TaskKind(enum.Enum):
    CELL = "cell"
    BATCH = "batch"
    FROM_SCRATCH = "from_scratch"


class SchedulerResource:
    """Names of the scheduler resources a task lease can hold."""

    SUBMISSION = "submission"
    LOCAL = "local"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskGroupSpec:
    """Fairness group of a task: tasks of one group share ``weight`` in the ready queue."""

    key: str
    weight: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerResourceRequest:
    """Scheduler resources one task of a group holds while it runs."""

    amounts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Task:
    """One unit of work. ``generator`` is the index of the generator in topological order."""

    task_id: str
    generator: int
    column: str
    row_group: int
    row_index: int | None  # index within the row group; None for group-level tasks
    kind: TaskKind


def make_task(
    generator: int, column: str, row_group: int, row_index: int | None, kind: TaskKind
) -> Task:
    suffix = "*" if row_index is None else str(row_index)
    return Task(f"{column}/{row_group}/{suffix}", generator, column, row_group, row_index, kind)


@dataclass(frozen=True, slots=True)
class SchedulableTask:
    """A ready task with the scheduling facts the queue and task admission need."""

    task: Task
    group: TaskGroupSpec
    request: SchedulerResourceRequest
    attempt: int = 1

    @property
    def task_id(self) -> str:
        return self.task.task_id
