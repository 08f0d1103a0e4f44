"""Request admission built from a config: the per-model latency-gradient switch; the
executor's straggler settings from ``run.stragglers``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sluiceway.config.loading import parse_config
from sluiceway.config.models import StragglersConfig
from sluiceway.requests.admission import RequestAdmissionItem
from sluiceway.requests.keys import RequestDomain, RequestResourceResolver
from sluiceway.requests.latency import StragglerSettings
from sluiceway.requests.setup import build_request_admission, straggler_settings


def _limits(run_gradient: bool, model_gradient: dict[str, bool | None]) -> dict[str, int]:
    models = []
    for alias, gradient in model_gradient.items():
        model = {"alias": alias, "provider": "sim", "model": f"id-{alias}"}
        model["max_parallel_requests"] = 16
        if gradient is not None:
            model["latency_gradient"] = gradient
        models.append(model)
    config = parse_config(
        {
            "providers": [{"name": "sim", "type": "simulated"}],
            "models": models,
            "columns": [
                {
                    "name": f"c_{alias}",
                    "type": "llm_text",
                    "model": alias,
                    "prompt": "Say something.",
                }
                for alias in model_gradient
            ],
            "run": {"num_records": 1, "request_admission": {"latency_gradient": run_gradient}},
        }
    )
    resolver = RequestResourceResolver(config.models)
    controller = build_request_admission(config.run, resolver, models=config.models)
    limits = {}
    for alias in model_gradient:
        resource = resolver.resource_for(alias, RequestDomain.CHAT)
        controller.try_acquire(RequestAdmissionItem(resource=resource))
        domain = controller.pressure.snapshot().domain(resource)
        assert domain is not None
        limits[alias] = domain.limit
    return limits


def test_a_model_turns_the_gradient_on_for_its_endpoint_only() -> None:
    # Slow start begins at half the cap (16 of 32); the gradient limit at a quarter of that.
    assert _limits(False, {"vllm": True, "hosted": None}) == {"vllm": 2, "hosted": 8}


def test_a_model_turns_the_gradient_off_while_the_run_has_it_on() -> None:
    assert _limits(True, {"vllm": None, "hosted": False}) == {"vllm": 2, "hosted": 8}


def test_the_straggler_defaults_turn_adaptive_timeouts_on_and_hedging_off() -> None:
    settings = straggler_settings(StragglersConfig())
    assert settings == StragglerSettings()
    assert settings.adaptive_timeout and not settings.hedging
    assert (settings.timeout_quantile, settings.timeout_factor) == (0.99, 3.0)
    assert (settings.min_timeout_seconds, settings.min_samples) == (1.0, 20)
    assert settings.hedge_budget_ratio == 0.02


def test_run_stragglers_reach_the_executor_settings() -> None:
    config = StragglersConfig(
        adaptive_timeout=False,
        timeout_quantile=0.9,
        timeout_factor=4.0,
        min_timeout_seconds=0.5,
        min_samples=8,
        hedging=True,
        hedge_quantile=0.8,
        hedge_factor=1.5,
        hedge_budget_ratio=0.1,
    )
    settings = straggler_settings(config)
    for name in StragglersConfig.model_fields:
        assert getattr(settings, name) == getattr(config, name), name


@pytest.mark.parametrize(
    "bad",
    [
        {"timeout_quantile": 1.0},
        {"timeout_factor": 0.5},
        {"min_timeout_seconds": 0.0},
        {"min_samples": 0},
        {"min_samples": 257},
        {"hedge_budget_ratio": 0.0},
    ],
)
def test_bad_straggler_settings_are_config_errors(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError, match=next(iter(bad))):
        StragglersConfig(**bad)  # type: ignore[arg-type]
