"""Alias canonicalization: provider/model keys, request resources and static aggregate caps."""

from __future__ import annotations

import pytest

from sluiceway.errors import ConfigError, EngineError
from sluiceway.requests import (
    ModelSpec,
    ProviderModelKey,
    RequestDomain,
    RequestResourceKey,
    RequestResourceResolver,
)


def _spec(alias: str, provider: str = "openai", model: str = "gpt", cap: int = 4) -> ModelSpec:
    return ModelSpec(
        alias=alias,
        provider=provider,
        model=model,
        max_parallel_requests=cap,
        timeout_seconds=30,
        parameters={"temperature": 0.2},
    )


def test_aliases_of_one_endpoint_share_a_key_and_the_minimum_cap() -> None:
    resolver = RequestResourceResolver(
        [_spec("fast", cap=8), _spec("careful", cap=3), _spec("other", model="small", cap=5)]
    )
    fast = resolver.resolve("fast")
    careful = resolver.resolve("careful")
    assert fast.key == careful.key == ProviderModelKey(provider="openai", model_id="gpt")
    assert fast.static_cap == careful.static_cap == 3
    assert resolver.static_caps() == {
        ProviderModelKey(provider="openai", model_id="gpt"): 3,
        ProviderModelKey(provider="openai", model_id="small"): 5,
    }
    assert resolver.aliases_of(fast.key) == ("fast", "careful")


def test_same_model_id_at_two_providers_are_different_endpoints() -> None:
    resolver = RequestResourceResolver([_spec("a", provider="p1"), _spec("b", provider="p2")])
    assert resolver.resolve("a").key != resolver.resolve("b").key
    assert len(resolver.static_caps()) == 2


def test_resource_for_returns_one_canonical_key_object_per_endpoint_and_domain() -> None:
    resolver = RequestResourceResolver([_spec("fast"), _spec("careful")])
    chat = resolver.resource_for("fast", RequestDomain.CHAT)
    assert chat == RequestResourceKey(
        provider_model=ProviderModelKey(provider="openai", model_id="gpt"),
        domain=RequestDomain.CHAT,
    )
    assert resolver.resource_for("careful", RequestDomain.CHAT) is chat
    assert resolver.resource_for("fast", RequestDomain.EMBEDDING) != chat
    assert str(chat) == "openai/gpt[chat]"


def test_unknown_alias_is_a_config_error_naming_the_known_aliases() -> None:
    resolver = RequestResourceResolver([_spec("fast"), _spec("careful")])
    with pytest.raises(ConfigError, match=r"unknown model alias 'fsat'.*'careful', 'fast'"):
        resolver.resolve("fsat")
    with pytest.raises(ConfigError, match="unknown model alias 'x'"):
        resolver.resource_for("x", RequestDomain.CHAT)


def test_resolved_values_are_read_only_copies() -> None:
    parameters = {"temperature": 0.2}
    spec = ModelSpec(
        alias="m",
        provider="p",
        model="x",
        max_parallel_requests=1,
        timeout_seconds=5,
        parameters=parameters,
    )
    resolved = RequestResourceResolver([spec]).resolve("m")
    parameters["temperature"] = 1.0
    assert resolved.parameters == {"temperature": 0.2}
    with pytest.raises(TypeError):
        resolved.parameters["temperature"] = 0.9  # type: ignore[index]
    assert resolved.timeout_seconds == 5.0


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([_spec("a"), _spec("a")], "defined twice"),
        ([_spec("a", cap=0)], "max_parallel_requests=0"),
    ],
)
def test_invalid_model_lists_are_refused(specs: list[ModelSpec], message: str) -> None:
    with pytest.raises(EngineError, match=message):
        RequestResourceResolver(specs)
