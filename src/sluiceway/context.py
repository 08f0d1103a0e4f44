"""Correlation context shared by task scheduling and request admission.

The scheduler sets :data:`current_task` around each task it runs (child tasks inherit it); the
request layer reads it when a model call is made. This primitive value is the only thing the two
layers share at run time besides read-only pressure snapshots.

``TaskCorrelation.traced`` says whether the task attempt's full timeline is recorded (the run's
trace sampling, ``run.events.trace_sample_rate``): event emission sites on both sides read it
before they build a per-task-attempt event. Work outside any task (no correlation) is traced.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from sluiceway.values import fast_init


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCorrelation:
    """Who is running: enough to attribute a model call to a task and to a fairness group.

    ``traced`` is False for a task attempt outside the run's trace sample: its per-attempt
    detail events (dependency ready ... task lease released, and the request attempt events
    it causes) are not built; aggregate events are, whatever this flag says."""

    run_id: str
    task_id: str
    column: str
    row_group: int
    row_index: int | None
    task_kind: str
    group_key: str
    group_weight: int
    execution_id: int
    traced: bool = True


current_task: ContextVar[TaskCorrelation | None] = ContextVar(
    "sluiceway_current_task", default=None
)
