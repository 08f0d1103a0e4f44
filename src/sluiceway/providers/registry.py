"""Provider clients built from the config: simulated, OpenAI-compatible and Anthropic.

API keys are read from the environment variable the config names (``api_key_env``), at client
construction, and live only in the client's request headers; a missing variable is a config
error naming the provider and the variable, never the value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from sluiceway.config.models import ModelConfig, ProviderConfig
from sluiceway.errors import ConfigError, ConfigIssue
from sluiceway.providers.anthropic import AnthropicClient
from sluiceway.providers.base import ProviderClient
from sluiceway.providers.behaviour import SimulationSettings
from sluiceway.providers.openai import OpenAICompatibleClient
from sluiceway.providers.simulated import SimulatedProvider


def simulation_settings(provider: ProviderConfig) -> SimulationSettings:
    sim = provider.simulation
    return SimulationSettings(
        latency_seconds=sim.latency_seconds,
        latency_tail_seconds=sim.latency_tail_seconds,
        capacity=sim.capacity,
        rpm=sim.rpm,
        tpm=sim.tpm,
        retry_after_seconds=sim.retry_after_seconds,
        failure_rate=sim.failure_rate,
        invalid_json_rate=sim.invalid_json_rate,
        embedding_dimensions=sim.embedding_dimensions,
        queueing=sim.queueing,
        window_seconds=sim.window_seconds,
    )


def build_provider_client(
    provider: ProviderConfig,
    *,
    seed: int,
    models: Sequence[ModelConfig] = (),
    environ: Mapping[str, str] | None = None,
) -> ProviderClient:
    """The client of one configured provider. Raises :class:`ConfigError` for a missing key."""
    if provider.type == "simulated":
        log = provider.simulation.request_log
        return SimulatedProvider(
            provider.name,
            simulation_settings(provider),
            seed=seed,
            request_log=None if log is None else Path(log),
        )
    env = os.environ if environ is None else environ
    api_key: str | None = None
    if provider.api_key_env is not None:
        api_key = env.get(provider.api_key_env)
        if not api_key:
            raise ConfigError(
                [
                    ConfigIssue(
                        path=f"providers ({provider.name}).api_key_env",
                        message=(
                            f"environment variable {provider.api_key_env} is not set or empty"
                        ),
                        hint=f"export {provider.api_key_env}=... before running",
                    )
                ]
            )
    mine = [model for model in models if model.provider == provider.name]
    connections = max(1, sum(model.max_parallel_requests for model in mine)) if mine else 64
    timeout = max((model.timeout_seconds for model in mine), default=60.0)
    if provider.type == "anthropic":
        return AnthropicClient(
            provider.name,
            base_url=provider.base_url,
            api_key=api_key,
            headers=provider.headers,
            max_connections=connections,
            default_timeout_seconds=timeout,
        )
    return OpenAICompatibleClient(
        provider.name,
        base_url=provider.base_url,
        api_key=api_key,
        headers=provider.headers,
        max_connections=connections,
        default_timeout_seconds=timeout,
    )
