"""Row-group admission: how many row groups may be in flight (SPEC §5.6).

Fixed mode admits row groups in order while fewer than ``max_concurrent_row_groups`` are in
flight; a slot frees at checkpoint. The adaptive horizon also admits the next row group when
scheduler capacity is idle while rows wait elsewhere (nothing queued is admissible, yet the
resources the next group's root tasks need are free), bounded by a row budget
(``max_rows_in_flight``, the memory bound) and never below the fixed minimum. Every decision
is counted by its ``RowGroupAdmissionReason``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class RowGroupHorizonMode(enum.Enum):
    FIXED = "fixed"
    ADAPTIVE = "adaptive"


class RowGroupAdmissionReason(enum.Enum):
    ADMITTED_WITHIN_MINIMUM = "row_group_admission_within_minimum"
    ADMITTED_IDLE_CAPACITY = "row_group_admission_idle_capacity"
    DEFERRED_ROW_BUDGET = "row_group_admission_row_budget"
    DEFERRED_NO_IDLE_CAPACITY = "row_group_admission_no_idle_capacity"
    DEFERRED_STOPPING = "row_group_admission_stopping"


@dataclass(frozen=True, slots=True, kw_only=True)
class RowGroupHorizon:
    """Fixed minimum of row groups in flight and, in adaptive mode, the row budget above it."""

    mode: RowGroupHorizonMode = RowGroupHorizonMode.FIXED
    max_concurrent_row_groups: int = 4
    max_rows_in_flight: int | None = None


def decide_row_group_admission(
    horizon: RowGroupHorizon,
    *,
    in_flight_row_groups: int,
    rows_in_flight: int,
    next_size: int,
    capacity_idle: bool,
    stopping: bool,
) -> RowGroupAdmissionReason:
    """Whether the next row group (of ``next_size`` rows) may be admitted now, and why."""
    if stopping:
        return RowGroupAdmissionReason.DEFERRED_STOPPING
    if in_flight_row_groups < horizon.max_concurrent_row_groups:
        return RowGroupAdmissionReason.ADMITTED_WITHIN_MINIMUM
    if horizon.mode is RowGroupHorizonMode.FIXED or not capacity_idle:
        return RowGroupAdmissionReason.DEFERRED_NO_IDLE_CAPACITY
    budget = horizon.max_rows_in_flight
    if budget is not None and rows_in_flight + next_size > budget:
        return RowGroupAdmissionReason.DEFERRED_ROW_BUDGET
    return RowGroupAdmissionReason.ADMITTED_IDLE_CAPACITY


def is_admitted(reason: RowGroupAdmissionReason) -> bool:
    return reason in (
        RowGroupAdmissionReason.ADMITTED_WITHIN_MINIMUM,
        RowGroupAdmissionReason.ADMITTED_IDLE_CAPACITY,
    )
