"""Task identity and the values that travel through the ready queue (SPEC §4).

A task is one run of one generator over one row (``cell``) or one row group (``batch`` and
``from_scratch``). Its id is stable across runs: ``column/row_group/row_index`` (``*`` for groups).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from sluiceway.errors import EngineError


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
    """Scheduler resources one task of a group holds while it runs: amounts >= 0 (``EngineError``
    otherwise). ``amounts`` is read-only (a ``MappingProxyType`` in practice): ``pairs`` is taken
    from it once, at construction."""

    amounts: Mapping[str, int]
    # ``amounts.items()`` in its order, as a tuple: task admission walks it on every dispatch.
    pairs: tuple[tuple[str, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pairs = tuple(self.amounts.items())
        for resource, amount in pairs:
            if amount < 0:
                raise EngineError(
                    f"a task asks for {amount} of scheduler resource {resource!r}; an amount "
                    "is >= 0 (0: the task does not use it)"
                )
        object.__setattr__(self, "pairs", pairs)


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
    """A ready task with the scheduling facts the queue and task admission need. ``traced``:
    this attempt is in the run's trace sample (``observability.sampling``), so its per-attempt
    detail events are emitted."""

    task: Task
    group: TaskGroupSpec
    request: SchedulerResourceRequest
    attempt: int = 1
    traced: bool = True

    @property
    def task_id(self) -> str:
        return self.task.task_id
