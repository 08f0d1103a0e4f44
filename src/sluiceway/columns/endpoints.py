"""Model aliases resolved to endpoints (provider, endpoint model id) and their effective cap.

Several aliases may name the same endpoint (e.g. different parameters); they share one cap, the
smallest ``max_parallel_requests`` among them, which is the scheduling weight of their tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from sluiceway.config.models import ModelConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelEndpoint:
    """What one alias resolves to; ``effective_cap`` (>= 1) is min-merged over its endpoint."""

    alias: str
    provider: str
    model_id: str
    effective_cap: int


def resolve_model_endpoints(models: Sequence[ModelConfig]) -> Mapping[str, ModelEndpoint]:
    """Alias -> endpoint for every model of the config."""
    caps: dict[tuple[str, str], int] = {}
    for model in models:
        key = (model.provider, model.model)
        caps[key] = min(caps.get(key, model.max_parallel_requests), model.max_parallel_requests)
    return MappingProxyType(
        {
            model.alias: ModelEndpoint(
                alias=model.alias,
                provider=model.provider,
                model_id=model.model,
                effective_cap=caps[(model.provider, model.model)],
            )
            for model in models
        }
    )
