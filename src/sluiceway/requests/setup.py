"""Request admission built from the run config: static or adaptive limits, breaker, timeout and
the rpm / tpm budgets of the models; and the executor's straggler settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sluiceway.config.models import ModelConfig, ProviderConfig, RunConfig, StragglersConfig
from sluiceway.observability import EventBus
from sluiceway.requests.admission import RequestAdmissionController, RequestAdmissionSettings
from sluiceway.requests.budgets import BUDGET_WINDOW_SECONDS, BudgetLimits, RequestBudgets
from sluiceway.requests.keys import ProviderModelKey, RequestResourceResolver
from sluiceway.requests.latency import StragglerSettings
from sluiceway.requests.limits import AdaptiveLimitSettings, adaptive_limits, static_limits


def _smallest(values: Sequence[int | None]) -> int | None:
    given = [value for value in values if value is not None]
    return min(given) if given else None


def budgets_from_config(
    providers: Sequence[ProviderConfig],
    models: Sequence[ModelConfig],
    *,
    window_seconds: float = BUDGET_WINDOW_SECONDS,
) -> RequestBudgets | None:
    """The budgets the config asks for, or ``None`` when no model sets ``rpm`` or ``tpm``.

    Without a ``budget_key``, a model's ``rpm`` / ``tpm`` bound that provider/model alone (the
    smallest value over its aliases, like the static cap). Every model of the providers that
    share a ``budget_key`` is charged to one account budget whose ``rpm`` / ``tpm`` are the
    smallest values given on any of those models.
    """
    key_of_provider = {provider.name: provider.budget_key for provider in providers}
    by_model: dict[ProviderModelKey, list[ModelConfig]] = {}
    by_account: dict[str, list[ModelConfig]] = {}
    account_of: dict[ProviderModelKey, str] = {}
    for model in models:
        key = ProviderModelKey(provider=model.provider, model_id=model.model)
        account = key_of_provider.get(model.provider)
        if account is None:
            by_model.setdefault(key, []).append(model)
        else:
            by_account.setdefault(account, []).append(model)
            account_of[key] = account

    def limits(members: list[ModelConfig]) -> BudgetLimits:
        return BudgetLimits(
            rpm=_smallest([m.rpm for m in members]), tpm=_smallest([m.tpm for m in members])
        )

    model_limits = {key: limits(members) for key, members in by_model.items()}
    account_limits = {name: limits(members) for name, members in by_account.items()}
    budgets = RequestBudgets(
        models={key: value for key, value in model_limits.items() if not value.is_empty},
        accounts={name: value for name, value in account_limits.items() if not value.is_empty},
        account_of={
            key: name for key, name in account_of.items() if not account_limits[name].is_empty
        },
        window_seconds=window_seconds,
    )
    return None if budgets.is_empty else budgets


def build_request_admission(
    run: RunConfig,
    resolver: RequestResourceResolver,
    *,
    events: EventBus | None = None,
    budgets: RequestBudgets | None = None,
    models: Sequence[ModelConfig] = (),
) -> RequestAdmissionController:
    """The controller of one run, with every provider/model the resolver knows; its request
    admission events go to ``events`` (default: a bus with no sinks); ``budgets`` (see
    :func:`budgets_from_config`) adds rpm / tpm budgets. A model of ``models`` that sets
    ``latency_gradient`` overrides the run's setting for its provider/model (on if any of its
    aliases turns it on)."""
    tuning = run.request_admission
    limits = static_limits
    if tuning.adaptive:
        settings = AdaptiveLimitSettings(
            initial_limit=tuning.initial_limit,
            decrease_factor=tuning.decrease_factor,
            slow_start=tuning.slow_start,
            slow_start_seconds=tuning.slow_start_seconds,
            hold_round_trips=tuning.hold_round_trips,
            max_hold_seconds=tuning.max_hold_seconds,
            startup_ramp_seconds=tuning.startup_ramp_seconds,
            default_cooldown_seconds=tuning.default_cooldown_seconds,
            max_cooldown_seconds=tuning.max_cooldown_seconds,
            latency_gradient=tuning.latency_gradient,
        )
        gradient: dict[ProviderModelKey, bool] = {}
        for model in models:
            if model.latency_gradient is not None:
                key = ProviderModelKey(provider=model.provider, model_id=model.model)
                gradient[key] = gradient.get(key, False) or model.latency_gradient
        limits = adaptive_limits(
            settings,
            per_model={
                key: replace(settings, latency_gradient=on)
                for key, on in gradient.items()
                if on != settings.latency_gradient
            },
        )
    caps = resolver.static_caps()
    return RequestAdmissionController(
        caps,
        limits=limits,
        # An open breaker fails the waiters of its provider/model at once; the executor turns that
        # into ProviderCircuitOpenError, which stops the run naming the provider and model.
        settings=RequestAdmissionSettings(breaker_open_after_seconds=run.circuit_breaker_seconds),
        aliases={key: resolver.aliases_of(key) for key in caps},
        events=events,
        budgets=budgets,
    )


def straggler_settings(config: StragglersConfig) -> StragglerSettings:
    """The executor's adaptive timeouts and hedging as ``run.stragglers`` asks."""
    return StragglerSettings(
        adaptive_timeout=config.adaptive_timeout,
        timeout_quantile=config.timeout_quantile,
        timeout_factor=config.timeout_factor,
        min_timeout_seconds=config.min_timeout_seconds,
        min_samples=config.min_samples,
        hedging=config.hedging,
        hedge_quantile=config.hedge_quantile,
        hedge_factor=config.hedge_factor,
        hedge_budget_ratio=config.hedge_budget_ratio,
    )
