"""Which API key a configured provider sends: its ``api_key_env``, else the type's default
variable (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``), else none for a loopback server and a config
error naming the variable for any other endpoint. Requests go over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from sluiceway.config.models import ProviderConfig
from sluiceway.errors import ConfigError
from sluiceway.providers.base import ChatMessage, GenerationKind, ModelRequest, ProviderClient
from sluiceway.providers.behaviour import SimulationSettings
from sluiceway.providers.mock_server import MockProviderServer, MockServerSettings
from sluiceway.providers.registry import build_provider_client, is_loopback_url

SECRET = "sk-test-registry-0123456789SECRET"
CHAT = ModelRequest(
    model_id="m",
    kind=GenerationKind.TEXT,
    messages=(ChatMessage(role="user", content="Name a river"),),
    timeout_seconds=5.0,
)


@pytest.fixture
async def keyed_server() -> AsyncIterator[MockProviderServer]:
    """An OpenAI-compatible server that answers 401 unless ``Authorization: Bearer SECRET``."""
    mock = MockProviderServer(MockServerSettings(simulation=SimulationSettings(), api_key=SECRET))
    await mock.start()
    try:
        yield mock
    finally:
        await mock.aclose()


def _client(environ: Mapping[str, str], **fields: Any) -> ProviderClient:
    return build_provider_client(ProviderConfig.model_validate(fields), seed=0, environ=environ)


async def _answer(client: ProviderClient) -> str | None:
    try:
        return (await client.send(CHAT)).text
    finally:
        await client.aclose()


async def test_openai_sends_openai_api_key_when_api_key_env_is_not_given(
    keyed_server: MockProviderServer,
) -> None:
    client = _client(
        {"OPENAI_API_KEY": SECRET}, name="p", type="openai", base_url=keyed_server.base_url
    )
    assert await _answer(client)
    assert keyed_server.stats()["models"]["m"]["successes"] == 1


async def test_api_key_env_still_overrides_the_default(keyed_server: MockProviderServer) -> None:
    client = _client(
        {"OPENAI_API_KEY": "sk-not-this-one", "TEAM_KEY": SECRET},
        name="p",
        type="openai",
        base_url=keyed_server.base_url,
        api_key_env="TEAM_KEY",
    )
    assert await _answer(client)


async def test_a_loopback_server_needs_no_key_when_the_default_variable_is_unset() -> None:
    server = MockProviderServer(MockServerSettings())
    await server.start()
    try:
        client = _client({}, name="p", type="openai", base_url=server.base_url)
        assert await _answer(client)
    finally:
        await server.aclose()


@pytest.mark.parametrize(
    ("provider_type", "variable", "base_url"),
    [
        ("openai", "OPENAI_API_KEY", None),
        ("openai", "OPENAI_API_KEY", "https://llm.example.com/v1"),
        ("anthropic", "ANTHROPIC_API_KEY", None),
    ],
)
def test_an_unset_default_variable_for_a_remote_endpoint_is_a_config_error_naming_it(
    provider_type: str, variable: str, base_url: str | None
) -> None:
    with pytest.raises(ConfigError) as info:
        _client({"UNRELATED": "x"}, name="remote", type=provider_type, base_url=base_url)
    (issue,) = info.value.issues
    assert issue.path == "providers (remote)"
    assert variable in issue.message
    assert issue.hint is not None
    assert f"export {variable}=" in issue.hint
    assert "api_key_env" in issue.hint


def test_an_unset_named_variable_is_an_error_even_for_a_loopback_server() -> None:
    with pytest.raises(ConfigError) as info:
        _client(
            {"OPENAI_API_KEY": SECRET},
            name="p",
            type="openai",
            base_url="http://127.0.0.1:9/v1",
            api_key_env="TEAM_KEY",
        )
    (issue,) = info.value.issues
    assert issue.path == "providers (p).api_key_env"
    assert issue.message == "environment variable TEAM_KEY is not set or empty"


async def test_anthropic_sends_anthropic_api_key_when_api_key_env_is_not_given() -> None:
    seen_headers: list[dict[str, str]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in head[1:] if line)
        }
        seen_headers.append(headers)
        await reader.readexactly(int(headers["content-length"]))
        body = json.dumps(
            {
                "content": [{"type": "text", "text": "Danube"}],
                "usage": {"input_tokens": 3, "output_tokens": 1},
            }
        ).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = _client(
            {"ANTHROPIC_API_KEY": SECRET, "OPENAI_API_KEY": "sk-not-this-one"},
            name="claude",
            type="anthropic",
            base_url=f"http://127.0.0.1:{port}/v1",
        )
        assert await _answer(client) == "Danube"
    finally:
        server.close()
        await server.wait_closed()
    assert [headers.get("x-api-key") for headers in seen_headers] == [SECRET]


def test_simulated_providers_read_no_variable() -> None:
    assert ProviderConfig(name="sim", type="simulated").api_key_variable() is None
    _client({}, name="sim", type="simulated")


@pytest.mark.parametrize(
    ("base_url", "loopback"),
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://localhost:11434/v1", True),
        ("http://[::1]:8000", True),
        ("https://api.openai.com/v1", False),
        ("http://10.1.2.3:8000/v1", False),
        ("http://gpu-box:8000/v1", False),
        (None, False),
    ],
)
def test_loopback_urls(base_url: str | None, loopback: bool) -> None:
    assert is_loopback_url(base_url) is loopback
