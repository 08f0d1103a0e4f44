"""Provider clients built from the config: simulated, OpenAI-compatible and Anthropic.

API keys are read at client construction from the environment variable the config names
(``api_key_env``), else from the type's default (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``), and
live only in the client's request headers. A named variable that is unset is a config error; an
unset default variable is one too, except for a server on a loopback address (``localhost``,
``127.0.0.1``, ``::1``), which is called without a key. Errors name the provider and the
variable, never the value.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

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
    api_key = _api_key(provider, os.environ if environ is None else environ)
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


def _api_key(provider: ProviderConfig, env: Mapping[str, str]) -> str | None:
    """The key an HTTP provider sends, or None for a loopback server without one."""
    variable = provider.api_key_variable()
    api_key = env.get(variable) if variable is not None else None
    if api_key:
        return api_key
    if provider.api_key_env is not None:
        raise ConfigError(
            [
                ConfigIssue(
                    path=f"providers ({provider.name}).api_key_env",
                    message=f"environment variable {provider.api_key_env} is not set or empty",
                    hint=f"export {provider.api_key_env}=... before running",
                )
            ]
        )
    if variable is None or is_loopback_url(provider.base_url):
        return None
    raise ConfigError(
        [
            ConfigIssue(
                path=f"providers ({provider.name})",
                message=f"no API key: the provider sets no api_key_env and {variable}, the "
                f"default for type {provider.type!r}, is not set or empty",
                hint=f"export {variable}=... before running, or set `api_key_env` to the "
                "variable that holds this endpoint's key",
            )
        ]
    )


def is_loopback_url(base_url: str | None) -> bool:
    """True when ``base_url`` names this machine (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if base_url is None:
        return False
    try:
        host = httpx.URL(base_url).host
    except httpx.InvalidURL:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
