"""The Anthropic messages API of the mock server over real sockets, with the Anthropic client:
text, structured answers, thinking, usage, 429 with retry-after, 529, errors and the
``anthropic-ratelimit-*`` headers."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import jsonschema
import pytest

from sluiceway.errors import (
    AuthenticationError,
    BadRequestError,
    ProviderOverloadedError,
    ProviderUnavailableError,
    RateLimitedError,
)
from sluiceway.providers.anthropic import ANTHROPIC_VERSION, AnthropicClient
from sluiceway.providers.base import ChatMessage, GenerationKind, ModelRequest
from sluiceway.providers.behaviour import SimulationSettings
from sluiceway.providers.mock_anthropic import rfc3339_utc
from sluiceway.providers.mock_server import MockProviderServer, MockServerSettings

SECRET = "sk-ant-test-0123456789abcdefSECRET"
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}
HEADERS = {"x-api-key": SECRET, "anthropic-version": ANTHROPIC_VERSION}
MESSAGES = [{"role": "user", "content": "Describe a lighthouse keeper"}]


def _ask(
    kind: GenerationKind = GenerationKind.TEXT, *, parameters: dict[str, Any] | None = None
) -> ModelRequest:
    return ModelRequest(
        model_id="claude-mock",
        kind=kind,
        messages=(
            ChatMessage(role="system", content="You write short character notes."),
            ChatMessage(role="user", content="Describe a lighthouse keeper"),
        ),
        json_schema=SCHEMA if kind is GenerationKind.STRUCTURED else None,
        parameters=parameters or {},
        timeout_seconds=5.0,
    )


async def _serve(**settings: Any) -> MockProviderServer:
    settings.setdefault("api_key", SECRET)
    settings.setdefault("stats_interval_seconds", 0.005)
    server = MockProviderServer(MockServerSettings(**settings))
    await server.start()
    return server


@pytest.fixture
async def server() -> AsyncIterator[MockProviderServer]:
    mock = await _serve(simulation=SimulationSettings(rpm=100, tpm=100_000))
    try:
        yield mock
    finally:
        await mock.aclose()


def _client(server: MockProviderServer, **headers: str) -> AnthropicClient:
    return AnthropicClient("claude", base_url=server.base_url, api_key=SECRET, headers=headers)


async def _post(server: MockProviderServer, body: dict[str, Any], **headers: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{server.base_url}/messages", json=body, headers={**HEADERS, **headers}
        )


async def test_text_and_structured_answers_with_usage_through_the_client(
    server: MockProviderServer,
) -> None:
    client = _client(server)
    try:
        text = await client.send(_ask())
        structured = await client.send(_ask(GenerationKind.STRUCTURED))
        again = await client.send(_ask())
    finally:
        await client.aclose()
    assert text.text and text.reasoning is None
    assert text.usage.prompt_tokens > 0 and text.usage.completion_tokens > 0
    # The same request gets the same answer; the windows it reports have moved on.
    assert replace(again, rate_limit=None) == replace(text, rate_limit=None)
    assert text.rate_limit is not None and again.rate_limit is not None
    assert text.rate_limit.requests is not None and again.rate_limit.requests is not None
    assert again.rate_limit.requests.remaining == text.rate_limit.requests.remaining - 2
    assert structured.text is not None
    jsonschema.validate(json.loads(structured.text), SCHEMA)
    model = server.stats()["models"]["claude-mock"]
    assert (model["requests"], model["successes"]) == (3, 3)


async def test_usage_is_what_the_token_window_is_charged(server: MockProviderServer) -> None:
    first = await _post(server, {"model": "m", "max_tokens": 100, "messages": MESSAGES})
    second = await _post(server, {"model": "m", "max_tokens": 100, "messages": MESSAGES})
    usage = first.json()["usage"]
    spent = usage["input_tokens"] + usage["output_tokens"]
    assert second.headers["anthropic-ratelimit-tokens-remaining"] == str(100_000 - 2 * spent)
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "99"
    assert second.headers["anthropic-ratelimit-requests-remaining"] == "98"


async def test_thinking_blocks_become_the_reasoning(server: MockProviderServer) -> None:
    client = _client(server)
    thinking = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    try:
        response = await client.send(_ask(parameters=thinking))
    finally:
        await client.aclose()
    assert response.reasoning and response.text


async def test_the_answer_has_the_messages_api_shape(server: MockProviderServer) -> None:
    response = await _post(
        server, {"model": "m", "max_tokens": 100, "system": "Be brief.", "messages": MESSAGES}
    )
    body = response.json()
    assert response.status_code == 200
    assert set(body) == {
        "id",
        "type",
        "role",
        "model",
        "content",
        "stop_reason",
        "stop_sequence",
        "usage",
    }
    assert (body["type"], body["role"], body["model"], body["stop_reason"]) == (
        "message",
        "assistant",
        "m",
        "end_turn",
    )
    assert body["id"].startswith("msg_") and body["content"][0]["type"] == "text"


async def test_a_forced_tool_is_answered_with_a_tool_use_block(server: MockProviderServer) -> None:
    tool = {"name": "record_person", "description": "Record", "input_schema": SCHEMA}
    response = await _post(
        server,
        {
            "model": "m",
            "max_tokens": 100,
            "messages": MESSAGES,
            "tools": [tool],
            "tool_choice": {"type": "tool", "name": "record_person"},
        },
    )
    body = response.json()
    assert body["stop_reason"] == "tool_use"
    (block,) = body["content"]
    assert (block["type"], block["name"]) == ("tool_use", "record_person")
    jsonschema.validate(block["input"], SCHEMA)


async def test_an_output_format_schema_is_answered_with_matching_json(
    server: MockProviderServer,
) -> None:
    response = await _post(
        server,
        {
            "model": "m",
            "max_tokens": 100,
            "messages": MESSAGES,
            "output_format": {"type": "json_schema", "schema": SCHEMA},
        },
    )
    jsonschema.validate(json.loads(response.json()["content"][0]["text"]), SCHEMA)


async def test_an_answer_longer_than_max_tokens_is_cut(server: MockProviderServer) -> None:
    body = (await _post(server, {"model": "m", "max_tokens": 4, "messages": MESSAGES})).json()
    assert body["stop_reason"] == "max_tokens"
    assert body["usage"]["output_tokens"] == 4
    assert len(body["content"][0]["text"].split(" ")) == 3


async def _hold(server: MockProviderServer) -> asyncio.StreamWriter:
    """A request that hangs at the server, holding a slot until its connection closes."""
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    body = json.dumps({"model": "claude-mock", "max_tokens": 9, "messages": MESSAGES}).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in HEADERS.items())
    writer.write(
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-mock-fault: hang\r\n"
        + head.encode()
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )
    await writer.drain()
    async with asyncio.timeout(10):
        while server.stats(series=False)["models"].get("claude-mock", {}).get("in_flight") != 1:
            await server.next_sample()
    return writer


async def test_a_429_carries_retry_after_and_a_rate_limit_error_body() -> None:
    server = await _serve(simulation=SimulationSettings(capacity=1, retry_after_seconds=2.0))
    client = _client(server)
    try:
        writer = await _hold(server)
        with pytest.raises(RateLimitedError) as caught:
            await client.send(_ask())
        refused = await _post(
            server, {"model": "claude-mock", "max_tokens": 9, "messages": MESSAGES}
        )
        writer.close()
        await writer.wait_closed()
    finally:
        await client.aclose()
        await server.aclose()
    assert caught.value.retry_after_seconds == 2.0
    assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
    assert refused.json() == {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "Rate limit reached (capacity); retry after 2.000s.",
        },
    }


async def test_a_529_is_overload_and_a_500_a_server_error(server: MockProviderServer) -> None:
    overloaded = _client(server, **{"x-mock-fault": "529"})
    failing = _client(server, **{"x-mock-fault": "500"})
    try:
        with pytest.raises(ProviderOverloadedError, match="HTTP 529"):
            await overloaded.send(_ask())
        with pytest.raises(ProviderUnavailableError, match="HTTP 500"):
            await failing.send(_ask())
    finally:
        await overloaded.aclose()
        await failing.aclose()
    body = (
        await _post(
            server, {"model": "m", "max_tokens": 9, "messages": MESSAGES}, **{"x-mock-fault": "529"}
        )
    ).json()
    assert body["error"]["type"] == "overloaded_error"
    assert server.stats()["faults"] == {"529": 2, "500": 1}


async def test_a_529_rate_injects_overloads() -> None:
    server = await _serve(error_529_rate=1.0)
    client = _client(server)
    try:
        with pytest.raises(ProviderOverloadedError):
            await client.send(_ask())
    finally:
        await client.aclose()
        await server.aclose()


async def test_a_wrong_key_is_an_authentication_error_and_never_shown(
    server: MockProviderServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-ant-wrong-9876543210ZYXWVU"
    client = AnthropicClient("claude", base_url=server.base_url, api_key=wrong)
    try:
        with pytest.raises(AuthenticationError) as caught:
            await client.send(_ask())
    finally:
        await client.aclose()
    shown = str(caught.value) + repr(client) + caplog.text + repr(server.stats())
    assert wrong not in shown and SECRET not in shown
    refused = await _post(
        server, {"model": "m", "max_tokens": 9, "messages": MESSAGES}, **{"x-api-key": wrong}
    )
    assert refused.json()["error"]["type"] == "authentication_error"


async def test_a_request_without_anthropic_version_or_max_tokens_is_invalid(
    server: MockProviderServer,
) -> None:
    async with httpx.AsyncClient() as http:
        unversioned = await http.post(
            f"{server.base_url}/messages",
            json={"model": "m", "max_tokens": 9, "messages": MESSAGES},
            headers={"x-api-key": SECRET},
        )
    no_max = await _post(server, {"model": "m", "messages": MESSAGES})
    bad_role = await _post(
        server, {"model": "m", "max_tokens": 9, "messages": [{"role": "robot", "content": "x"}]}
    )
    for response, words in (
        (unversioned, "anthropic-version"),
        (no_max, "max_tokens"),
        (bad_role, "role"),
    ):
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and words in error["message"]
    assert "claude-mock" not in server.stats()["models"]  # nothing was admitted


async def test_embeddings_are_refused_by_the_client_before_any_request(
    server: MockProviderServer,
) -> None:
    client = _client(server)
    try:
        with pytest.raises(BadRequestError, match="no embeddings endpoint"):
            await client.send(
                ModelRequest(model_id="m", kind=GenerationKind.EMBEDDING, inputs=("a",))
            )
    finally:
        await client.aclose()
    assert server.stats()["http_requests"] == 0


async def test_rate_limit_headers_name_every_window_with_rfc3339_resets(
    server: MockProviderServer,
) -> None:
    before = datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0)
    response = await _post(server, {"model": "m", "max_tokens": 100, "messages": MESSAGES})
    headers = response.headers
    assert headers["anthropic-ratelimit-requests-limit"] == "100"
    for window in ("tokens", "input-tokens", "output-tokens"):
        assert headers[f"anthropic-ratelimit-{window}-limit"] == "100000"
        assert (
            headers[f"anthropic-ratelimit-{window}-remaining"]
            == headers["anthropic-ratelimit-tokens-remaining"]
        )
    for window in ("requests", "tokens", "input-tokens", "output-tokens"):
        reset = datetime.datetime.fromisoformat(headers[f"anthropic-ratelimit-{window}-reset"])
        assert reset.tzinfo is not None
        assert before <= reset <= before + datetime.timedelta(seconds=62)


def test_rfc3339_times_are_utc_and_rounded_up_to_the_second() -> None:
    assert rfc3339_utc(1_700_000_000.0) == "2023-11-14T22:13:20Z"
    assert rfc3339_utc(1_700_000_000.2) == "2023-11-14T22:13:21Z"
