"""Request resource keys and the one place model aliases are canonicalized (SPEC §6.1).

A model alias resolves to a :class:`ProviderModelKey` (provider + model id); aliases are
diagnostics only. The static aggregate cap of a provider/model is the minimum
``max_parallel_requests`` over every alias that points at it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from sluiceway.errors import ConfigError, ConfigIssue, EngineError


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderModelKey:
    """One model endpoint after alias resolution: the unit a static aggregate cap applies to."""

    provider: str
    model_id: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.model_id}"


class RequestDomain(enum.Enum):
    """What kind of call a request is; an adaptive limit is kept per domain."""

    CHAT = "chat"
    EMBEDDING = "embedding"
    IMAGE = "image"
    HEALTHCHECK = "healthcheck"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestResourceKey:
    """A provider/model and a domain: what one request is admitted against."""

    provider_model: ProviderModelKey
    domain: RequestDomain

    def __str__(self) -> str:
        return f"{self.provider_model}[{self.domain.value}]"


class ModelSpecLike(Protocol):
    """What the resolver reads from a model definition (a :class:`ModelSpec` or a config model)."""

    @property
    def alias(self) -> str: ...

    @property
    def provider(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def max_parallel_requests(self) -> int: ...

    @property
    def timeout_seconds(self) -> float: ...

    @property
    def parameters(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """A model alias as plain values; the engine builds these from the config."""

    alias: str
    provider: str
    model: str
    max_parallel_requests: int
    timeout_seconds: float
    parameters: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedModel:
    """An alias resolved to its endpoint. ``static_cap`` is the provider/model's aggregate cap."""

    alias: str
    provider: str
    model_id: str
    key: ProviderModelKey
    static_cap: int
    timeout_seconds: float
    parameters: Mapping[str, Any]


class RequestResourceResolver:
    """Maps model aliases to canonical keys, request resources and static caps.

    Built once per run from every model alias; lookups are plain dict reads and return the same
    key objects every time. ``resolve`` raises :class:`ConfigError` for an unknown alias.
    """

    def __init__(self, models: Iterable[ModelSpecLike]) -> None:
        specs = list(models)
        by_alias: dict[str, ModelSpecLike] = {}
        keys: dict[tuple[str, str], ProviderModelKey] = {}
        caps: dict[ProviderModelKey, int] = {}
        aliases_by_key: dict[ProviderModelKey, list[str]] = {}
        for spec in specs:
            if spec.alias in by_alias:
                raise EngineError(
                    f"model alias {spec.alias!r} is defined twice; the config must give every "
                    "model a unique alias"
                )
            if spec.max_parallel_requests < 1:
                raise EngineError(
                    f"model alias {spec.alias!r} has max_parallel_requests="
                    f"{spec.max_parallel_requests}; it must be >= 1"
                )
            if spec.timeout_seconds <= 0:
                raise EngineError(
                    f"model alias {spec.alias!r} has timeout_seconds={spec.timeout_seconds}; "
                    "it must be > 0"
                )
            by_alias[spec.alias] = spec
            key = keys.setdefault(
                (spec.provider, spec.model),
                ProviderModelKey(provider=spec.provider, model_id=spec.model),
            )
            caps[key] = min(caps.get(key, spec.max_parallel_requests), spec.max_parallel_requests)
            aliases_by_key.setdefault(key, []).append(spec.alias)

        self._resolved: dict[str, ResolvedModel] = {}
        self._resources: dict[tuple[str, RequestDomain], RequestResourceKey] = {}
        for alias, spec in by_alias.items():
            key = keys[(spec.provider, spec.model)]
            self._resolved[alias] = ResolvedModel(
                alias=alias,
                provider=spec.provider,
                model_id=spec.model,
                key=key,
                static_cap=caps[key],
                timeout_seconds=float(spec.timeout_seconds),
                parameters=MappingProxyType(dict(spec.parameters)),
            )
        domain_keys = {
            (key, domain): RequestResourceKey(provider_model=key, domain=domain)
            for key in caps
            for domain in RequestDomain
        }
        for alias, resolved in self._resolved.items():
            for domain in RequestDomain:
                self._resources[(alias, domain)] = domain_keys[(resolved.key, domain)]
        self._caps: Mapping[ProviderModelKey, int] = MappingProxyType(caps)
        self._aliases: Mapping[ProviderModelKey, tuple[str, ...]] = MappingProxyType(
            {key: tuple(names) for key, names in aliases_by_key.items()}
        )

    def resolve(self, alias: str) -> ResolvedModel:
        resolved = self._resolved.get(alias)
        if resolved is None:
            raise self._unknown(alias)
        return resolved

    def resource_for(self, alias: str, domain: RequestDomain) -> RequestResourceKey:
        resource = self._resources.get((alias, domain))
        if resource is None:
            raise self._unknown(alias)
        return resource

    def static_caps(self) -> Mapping[ProviderModelKey, int]:
        """Aggregate cap per provider/model: min ``max_parallel_requests`` over its aliases."""
        return self._caps

    def aliases_of(self, key: ProviderModelKey) -> tuple[str, ...]:
        """The aliases that point at ``key``, in config order (for diagnostics)."""
        return self._aliases.get(key, ())

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(self._resolved)

    def _unknown(self, alias: str) -> ConfigError:
        known = ", ".join(repr(name) for name in sorted(self._resolved)) or "none"
        return ConfigError(
            [
                ConfigIssue(
                    path="models",
                    message=f"unknown model alias {alias!r}; known aliases: {known}",
                    hint="add a model with this alias under `models` or use one of the known ones",
                )
            ]
        )
