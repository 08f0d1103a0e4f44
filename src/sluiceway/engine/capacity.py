"""Builds the run's capacity plan: configured values with their sources, the final runtime
snapshot and the maxima observed (SPEC §9.2). It reads statistics; it admits nothing.

Also the request-pressure advisory the scheduler reads for ``request_pressure_advisory_skipped``:
a read-only look at request admission, never a change to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from sluiceway.config.models import DatasetConfig
from sluiceway.requests.admission import RequestAdmissionController
from sluiceway.requests.executor import ModelRequestExecutor
from sluiceway.requests.keys import ProviderModelKey, RequestDomain, RequestResourceKey
from sluiceway.scheduling.admission import TaskAdmissionController
from sluiceway.scheduling.metadata import SchedulingKind
from sluiceway.scheduling.resolver import ResolvedTaskScheduling
from sluiceway.scheduling.scheduler import AsyncTaskScheduler
from sluiceway.storage.capacity_plan import AsyncCapacityPlan, CapacitySource, CapacityValue

RequestPressureAdvisory = Callable[[ResolvedTaskScheduling], tuple[str, str] | None]


def request_pressure_advisory(
    request_admission: RequestAdmissionController,
) -> RequestPressureAdvisory:
    """``advisory(resolved)``: the ``(provider, model)`` of a model task whose request resource
    would not grant a lease now (no capacity, cooldown, queued waiters, open breaker or
    shutdown), else None. Local and custom-model tasks get None (their calls are not known in
    advance). Costs a dict lookup and ``has_capacity``; never blocks or changes state."""
    resources: dict[tuple[str, ...], RequestResourceKey] = {}

    def advisory(resolved: ResolvedTaskScheduling) -> tuple[str, str] | None:
        metadata = resolved.metadata
        if metadata.kind is not SchedulingKind.MODEL:
            return None
        resource = resources.get(metadata.identity)
        if resource is None:
            _, provider, model_id, generation_kind = metadata.identity
            domain = (
                RequestDomain.EMBEDDING if generation_kind == "embedding" else RequestDomain.CHAT
            )
            resource = resources[metadata.identity] = RequestResourceKey(
                provider_model=ProviderModelKey(provider=provider, model_id=model_id),
                domain=domain,
            )
        if request_admission.has_capacity(resource):
            return None
        return resource.provider_model.provider, resource.provider_model.model_id

    return advisory


def _sourced(model: BaseModel, field: str, *, set_source: CapacitySource) -> CapacityValue:
    """The value of ``field``: ``set_source`` when the config sets it, else the default."""
    source = set_source if field in model.model_fields_set else CapacitySource.DEFAULT
    return CapacityValue(value=getattr(model, field), source=source)


def _key(key: ProviderModelKey) -> str:
    return f"{key.provider}/{key.model_id}"


def _resource_key(resource: RequestResourceKey) -> str:
    return f"{_key(resource.provider_model)}[{resource.domain.value}]"


def _configured(
    config: DatasetConfig,
    request_admission: RequestAdmissionController,
    resolution: Sequence[ResolvedTaskScheduling],
) -> dict[str, CapacityValue]:
    run = config.run
    run_config = CapacitySource.RUN_CONFIG
    configured: dict[str, CapacityValue] = {
        f"run.{name}": _sourced(run, name, set_source=run_config)
        for name in (
            "num_records",
            "buffer_size",
            "max_concurrent_row_groups",
            "max_in_flight_tasks",
            "max_local_tasks",
            "circuit_breaker_seconds",
        )
    }
    for name in ("max_attempts", "max_wall_seconds", "backoff_base_seconds", "backoff_max_seconds"):
        configured[f"run.retry.{name}"] = _sourced(run.retry, name, set_source=run_config)
    for name in ("policy", "borrow_ceiling_fraction"):
        configured[f"run.task_admission.{name}"] = _sourced(
            run.task_admission, name, set_source=run_config
        )
    horizon = run.row_group_horizon
    configured["run.row_group_horizon.mode"] = _sourced(horizon, "mode", set_source=run_config)
    if horizon.max_rows_in_flight is not None:
        configured["run.row_group_horizon.max_rows_in_flight"] = CapacityValue(
            value=horizon.max_rows_in_flight, source=run_config
        )
    else:
        configured["run.row_group_horizon.max_rows_in_flight"] = CapacityValue(
            value=4 * run.max_concurrent_row_groups * run.buffer_size,
            source=CapacitySource.ENGINE_INTERNAL_CONFIG,
            fallback_from=run_config,
            missing_reason="not set: 4 x max_concurrent_row_groups x buffer_size",
        )
    tuning = run.request_admission
    for name in (
        "adaptive",
        "decrease_factor",
        "slow_start",
        "slow_start_seconds",
        "hold_round_trips",
        "max_hold_seconds",
        "startup_ramp_seconds",
        "default_cooldown_seconds",
        "max_cooldown_seconds",
        "latency_gradient",
        "queue_wait_timeout_seconds",
        "budget_window_seconds",
    ):
        configured[f"run.request_admission.{name}"] = _sourced(tuning, name, set_source=run_config)
    for name in (
        "adaptive_timeout",
        "timeout_quantile",
        "timeout_factor",
        "min_timeout_seconds",
        "min_samples",
        "hedging",
        "hedge_quantile",
        "hedge_factor",
        "hedge_budget_ratio",
    ):
        configured[f"run.stragglers.{name}"] = _sourced(run.stragglers, name, set_source=run_config)
    caps = {
        _key(key): pm.static_cap
        for key, pm in request_admission.statistics().provider_models.items()
    }
    for model in config.models:
        prefix = f"models.{model.alias}"
        # A model entry of the config is the model's metadata: its declared concurrency.
        configured[f"{prefix}.max_parallel_requests"] = _sourced(
            model, "max_parallel_requests", set_source=CapacitySource.MODEL_METADATA
        )
        for name in ("rpm", "tpm"):
            if getattr(model, name) is not None:
                configured[f"{prefix}.{name}"] = CapacityValue(
                    value=getattr(model, name), source=CapacitySource.MODEL_METADATA
                )
        cap = caps.get(f"{model.provider}/{model.model}")
        if tuning.initial_limit is not None:
            initial = CapacityValue(value=tuning.initial_limit, source=run_config)
        elif tuning.adaptive and tuning.slow_start and tuning.startup_ramp_seconds <= 0:
            initial = CapacityValue(
                value=None if cap is None else -(-cap // 2),
                source=CapacitySource.ENGINE_INTERNAL_CONFIG,
                fallback_from=run_config,
                missing_reason=(
                    "run.request_admission.initial_limit not set: half the static cap, slow "
                    "start grows it by one per success until the first refusal"
                ),
            )
        else:
            initial = CapacityValue(
                value=cap,
                source=CapacitySource.ENGINE_INTERNAL_CONFIG,
                fallback_from=run_config,
                missing_reason="run.request_admission.initial_limit not set: the static cap",
            )
        configured[f"{prefix}.initial_limit"] = initial
    for key, cap in sorted(caps.items()):
        configured[f"request_admission.{key}.static_cap"] = CapacityValue(
            value=cap, source=CapacitySource.ENGINE_INTERNAL_CONFIG
        )
    for provider in config.providers:
        if provider.type == "simulated":
            continue
        mine = [model for model in config.models if model.provider == provider.name]
        connections = max(1, sum(model.max_parallel_requests for model in mine)) if mine else 64
        # The HTTP client's connection pool (providers/registry.py sizes it this way).
        configured[f"providers.{provider.name}.max_connections"] = CapacityValue(
            value=connections, source=CapacitySource.ADAPTER_CONFIG
        )
    for resolved in resolution:
        configured[f"task_groups.{resolved.group.key}.weight"] = CapacityValue(
            value=resolved.group.weight, source=CapacitySource.ENGINE_INTERNAL_CONFIG
        )
    return configured


def build_capacity_plan(
    *,
    config: DatasetConfig,
    scheduler: AsyncTaskScheduler,
    task_admission: TaskAdmissionController,
    request_admission: RequestAdmissionController,
    resolution: Sequence[ResolvedTaskScheduling],
    executor: ModelRequestExecutor | None = None,
) -> AsyncCapacityPlan:
    """The plan of a finished (or stopped) run; call it after the run, from the loop thread.
    With ``executor``, the runtime snapshot adds its counters and its adaptive timeouts."""
    task_view = task_admission.view()
    request_stats = request_admission.statistics()
    pressure = request_admission.pressure.snapshot()
    stats = scheduler.statistics()
    domains = [
        domain for pm in request_stats.provider_models.values() for domain in pm.domains.values()
    ]
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
                    "breaker": pm.breaker.value,
                    "breaker_openings": pm.breaker_openings,
                    "max_waiters": pm.max_waiters,
                    "budget_denials": pm.budget_denials,
                    "budgets": [
                        {
                            "kind": budget.kind.value,
                            "limit": budget.limit,
                            "used": budget.used,
                            "charged_total": budget.charged_total,
                            "settled_total": budget.settled_total,
                        }
                        for budget in pm.budgets
                    ],
                    "outcomes": {
                        domain.value: {
                            outcome.value: count for outcome, count in dstats.outcomes.items()
                        }
                        for domain, dstats in pm.domains.items()
                    },
                }
                for key, pm in request_stats.provider_models.items()
            },
            "by_resource": {
                _resource_key(domain.resource): {
                    "limit": domain.limit,
                    "in_flight": domain.in_flight,
                    "waiters": domain.waiters,
                    "limit_decreases": domain.limit_decreases,
                    "limit_increases": domain.limit_increases,
                    "cooldowns": domain.cooldowns,
                    "cooldown_remaining_seconds": (
                        found.cooldown_remaining_seconds
                        if (found := pressure.domain(domain.resource)) is not None
                        else 0.0
                    ),
                    "rate_limit_ceiling": found.rate_limit_ceiling if found is not None else None,
                }
                for domain in domains
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
    if executor is not None:
        runtime["model_request_executor"] = _executor_runtime(executor)
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
        "requests_in_flight_by_resource": {
            _resource_key(domain.resource): domain.max_in_flight for domain in domains
        },
        "request_waiters_by_resource": {
            _resource_key(domain.resource): domain.max_waiters for domain in domains
        },
        # The limit in force at the end and the lowest it went during the run.
        "current_limit_by_resource": {
            _resource_key(domain.resource): domain.limit for domain in domains
        },
        "min_limit_by_resource": {
            _resource_key(domain.resource): domain.min_limit for domain in domains
        },
    }
    configured = _configured(config, request_admission, resolution)
    return AsyncCapacityPlan(
        configured=configured, runtime_snapshot=runtime, observed_maxima=observed
    )


def _executor_runtime(executor: ModelRequestExecutor) -> dict[str, Any]:
    """The executor's counters, and per provider/model, domain and column the adaptive
    timeout and hedge delay in force at the end (None before enough successes)."""
    stats = executor.statistics()
    latency = executor.latency
    windows = (
        []
        if latency is None
        else sorted(
            latency.statistics().items(), key=lambda item: (str(item[0][0]), item[0][1] or "")
        )
    )
    return {
        "calls": stats.calls,
        "attempts": stats.attempts,
        "successes": stats.successes,
        "retries": stats.retries,
        "adaptive_timeouts": stats.adaptive_timeouts,
        "hedges": {
            "started": stats.hedges_started,
            "won": stats.hedges_won,
            "lost": stats.hedges_lost,
            "failed": stats.hedges_failed,
            "skipped": stats.hedges_skipped,
        },
        "latency_windows": [
            {
                "resource": _resource_key(resource),
                "column": column,
                "samples": window.samples,
                "timeout_quantile_seconds": window.timeout_quantile_seconds,
                "timeout_seconds": window.timeout_seconds,
                "hedge_after_seconds": window.hedge_after_seconds,
                "expiries": window.expiries,
            }
            for (resource, column), window in windows
        ],
    }
