"""Correlation context shared by task scheduling and request admission.

The scheduler sets :data:`current_task` around each task it runs (child tasks inherit it); the
request layer reads it when a model call is made. This primitive value is the only thing the two
layers share at run time besides read-only pressure snapshots.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from sluiceway.values import fast_init


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCorrelation:
    """Who is running: enough to attribute a model call to a task and to a fairness group."""

    run_id: str
    task_id: str
    column: str
    row_group: int
    row_index: int | None
    task_kind: str
    group_key: str
    group_weight: int
    execution_id: int


current_task: ContextVar[TaskCorrelation | None] = ContextVar(
    "sluiceway_current_task", default=None
)
