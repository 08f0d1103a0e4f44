"""Builds the run's capacity plan: configured values with their sources, the final runtime
snapshot and the maxima observed (SPEC §9.2). It reads statistics; it admits nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from sluiceway.config.models import DatasetConfig
from sluiceway.requests.admission import RequestAdmissionController
from sluiceway.requests.keys import ProviderModelKey
from sluiceway.scheduling.admission import TaskAdmissionController
from sluiceway.scheduling.resolver import ResolvedTaskScheduling
from sluiceway.scheduling.scheduler import AsyncTaskScheduler
from sluiceway.storage.capacity_plan import CapacityPlan, CapacitySource, CapacityValue


def _sourced(model: BaseModel, field: str) -> CapacityValue:
    source = (
        CapacitySource.RUN_CONFIG if field in model.model_fields_set else CapacitySource.DEFAULT
    )
    return CapacityValue(value=getattr(model, field), source=source)


def _key(key: ProviderModelKey) -> str:
    return f"{key.provider}/{key.model_id}"


def build_capacity_plan(
    *,
    config: DatasetConfig,
    scheduler: AsyncTaskScheduler,
    task_admission: TaskAdmissionController,
    request_admission: RequestAdmissionController,
    resolution: Sequence[ResolvedTaskScheduling],
) -> CapacityPlan:
    run = config.run
    configured: dict[str, CapacityValue] = {
        f"run.{name}": _sourced(run, name)
        for name in (
            "num_records",
            "buffer_size",
            "max_concurrent_row_groups",
            "max_in_flight_tasks",
            "max_local_tasks",
        )
    }
    configured["run.retry.max_attempts"] = _sourced(run.retry, "max_attempts")
    for model in config.models:
        value = _sourced(model, "max_parallel_requests")
        configured[f"models.{model.alias}.max_parallel_requests"] = CapacityValue(
            value=value.value,
            source=(
                CapacitySource.MODEL_METADATA
                if value.source is CapacitySource.RUN_CONFIG
                else CapacitySource.DEFAULT
            ),
        )
    for resolved in resolution:
        configured[f"task_groups.{resolved.group.key}.weight"] = CapacityValue(
            value=resolved.group.weight, source=CapacitySource.ENGINE_INTERNAL_CONFIG
        )

    task_view = task_admission.view()
    request_stats = request_admission.statistics()
    stats = scheduler.statistics()
    runtime: dict[str, Any] = {
        "task_admission": {
            "limits": dict(task_view.limits),
            "leased": dict(task_view.leased),
            "active_leases": task_view.active_leases,
            "acquired_total": task_view.acquired_total,
            "released_total": task_view.released_total,
            "release_diagnostics": task_view.diagnostics_total,
            "policy": task_view.policy.value,
            "debt_by_group": dict(task_view.debt_by_group),
            "denials_by_reason": {
                reason.value: count for reason, count in task_view.denials_by_reason.items()
            },
        },
        "request_admission": {
            "live_leases": request_stats.live_leases,
            "in_flight": request_stats.in_flight,
            "waiters": request_stats.waiters,
            "granted_total": request_stats.granted_total,
            "released_total": request_stats.released_total,
            "release_diagnostics": request_stats.release_diagnostics,
            "by_provider_model": {
                _key(key): {
                    "static_cap": pm.static_cap,
                    "in_flight": pm.in_flight,
                    "waiters": pm.waiters,
                    "granted_total": pm.granted_total,
                    "outcomes": {
                        domain.value: {
                            outcome.value: count for outcome, count in dstats.outcomes.items()
                        }
                        for domain, dstats in pm.domains.items()
                    },
                }
                for key, pm in request_stats.provider_models.items()
            },
        },
        "scheduler": {
            "row_groups_admitted": stats.row_groups_admitted,
            "row_groups_checkpointed": stats.row_groups_checkpointed,
            "tasks_dispatched": stats.tasks_dispatched,
            "tasks_retried": stats.tasks_retried,
            "tasks_dropped": stats.tasks_dropped,
            "tasks_cancelled": stats.tasks_cancelled,
            "row_groups_salvaged": stats.row_groups_salvaged,
            "blocked_dispatches": stats.blocked_dispatches,
            "stop_reason": stats.stop_reason.value if stats.stop_reason else None,
            "row_group_admission": {
                reason.value: count for reason, count in stats.row_group_admission.items()
            },
            "queued_tasks": len(scheduler.queue),
        },
    }
    observed: dict[str, Any] = {
        "row_groups_in_flight": stats.max_row_groups_in_flight,
        "rows_in_flight": stats.max_rows_in_flight,
        "queued_tasks": stats.max_queued_tasks,
        "queued_tasks_by_group": dict(sorted(stats.max_queued_by_group.items())),
        "task_leases_by_resource": dict(task_view.max_leased),
        "requests_in_flight_by_provider_model": {
            _key(key): pm.max_in_flight for key, pm in request_stats.provider_models.items()
        },
        "request_waiters_by_provider_model": {
            _key(key): pm.max_waiters for key, pm in request_stats.provider_models.items()
        },
    }
    return CapacityPlan(configured=configured, runtime_snapshot=runtime, observed_maxima=observed)
