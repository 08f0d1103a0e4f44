"""Request admission built from a config: the per-model latency-gradient switch."""

from __future__ import annotations

from sluiceway.config.loading import parse_config
from sluiceway.requests.admission import RequestAdmissionItem
from sluiceway.requests.keys import RequestDomain, RequestResourceResolver
from sluiceway.requests.setup import build_request_admission


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
