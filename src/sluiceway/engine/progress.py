"""Progress reporting interface between a running engine and whoever displays it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from sluiceway.requests.admission import RequestAdmissionStatistics, RequestPressureSnapshot
from sluiceway.requests.outcomes import RequestReleaseOutcome


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnProgress:
    """Rows one column generator has finished in this run (resumed rows not included)."""

    name: str
    rows_done: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelProgress:
    """Request admission of one provider/model: in flight against its current limit and cap."""

    label: str  # "alias (provider/model)"
    in_flight: int
    limit: int
    cap: int
    waiters: int
    requests: int
    rate_limited: int
    cooldown_seconds: float
    breaker: str
    limit_phase: str | None = None  # startup, recovery, hold or probe (an adaptive limit's)
    paced_seconds: float = 0.0  # a window the provider reports holds requests this long


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressSnapshot:
    """Counts at one moment of a run; cheap to build, built only when a listener asks."""

    records_total: int
    records_done: int  # written or dropped
    rows_written: int
    rows_dropped: int
    row_groups_total: int
    row_groups_done: int
    model_requests: int
    elapsed_seconds: float
    columns: tuple[ColumnProgress, ...] = ()
    models: tuple[ModelProgress, ...] = ()
    adaptive_timeouts: int = 0  # attempts abandoned at their adaptive deadline (stragglers)
    hedges: int = 0  # hedged attempts started


def column_progress(names: tuple[str, ...], done: Mapping[str, int]) -> tuple[ColumnProgress, ...]:
    return tuple(ColumnProgress(name=name, rows_done=done.get(name, 0)) for name in names)


def model_progress(
    pressure: RequestPressureSnapshot, statistics: RequestAdmissionStatistics
) -> tuple[ModelProgress, ...]:
    """One line per provider/model; the limit shown is the largest current domain limit."""
    models = []
    for key, pool in pressure.provider_models.items():
        domains = pool.domains.values()
        limit = min(pool.static_cap, max((d.limit for d in domains), default=pool.static_cap))
        stats = statistics.provider_models.get(key)
        rate_limited = 0
        if stats is not None:
            rate_limited = sum(
                d.outcomes.get(RequestReleaseOutcome.RATE_LIMITED, 0)
                for d in stats.domains.values()
            )
        name = f"{key.provider}/{key.model_id}"
        models.append(
            ModelProgress(
                label=f"{', '.join(pool.aliases)} ({name})" if pool.aliases else name,
                in_flight=pool.in_flight,
                limit=limit,
                cap=pool.static_cap,
                waiters=pool.waiters,
                requests=stats.granted_total if stats is not None else 0,
                rate_limited=rate_limited,
                cooldown_seconds=max((d.cooldown_remaining_seconds for d in domains), default=0.0),
                breaker=pool.breaker.value,
                limit_phase=next(
                    (d.phase.value for d in domains if d.phase is not None and d.limit == limit),
                    None,
                ),
                paced_seconds=pool.paced_in_seconds,
            )
        )
    return tuple(models)


class ProgressListener(Protocol):
    def on_start(self, snapshot: ProgressSnapshot) -> None: ...

    def on_progress(self, snapshot: ProgressSnapshot) -> None: ...

    def on_finish(self, snapshot: ProgressSnapshot) -> None: ...
