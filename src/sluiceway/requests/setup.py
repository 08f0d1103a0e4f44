"""Request admission built from the run config: static or adaptive limits, breaker, timeout."""

from __future__ import annotations

from sluiceway.config.models import RunConfig
from sluiceway.observability import EventBus
from sluiceway.requests.admission import RequestAdmissionController, RequestAdmissionSettings
from sluiceway.requests.keys import RequestResourceResolver
from sluiceway.requests.limits import AdaptiveLimitSettings, adaptive_limits, static_limits


def build_request_admission(
    run: RunConfig, resolver: RequestResourceResolver, *, events: EventBus | None = None
) -> RequestAdmissionController:
    """The controller of one run, with every provider/model the resolver knows; its request
    admission events go to ``events`` (default: a bus with no sinks)."""
    tuning = run.request_admission
    limits = static_limits
    if tuning.adaptive:
        limits = adaptive_limits(
            AdaptiveLimitSettings(
                initial_limit=tuning.initial_limit,
                decrease_factor=tuning.decrease_factor,
                successes_until_increase=tuning.successes_until_increase,
                ceiling_hold_seconds=tuning.ceiling_hold_seconds,
                startup_ramp_seconds=tuning.startup_ramp_seconds,
                default_cooldown_seconds=tuning.default_cooldown_seconds,
                max_cooldown_seconds=tuning.max_cooldown_seconds,
                latency_gradient=tuning.latency_gradient,
            )
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
    )
