"""HTTP clients against the loopback mock server over real sockets (port 0, started per test)."""

from __future__ import annotations

import email.utils
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from sluiceway.errors import (
    AuthenticationError,
    ContextLengthError,
    ProviderOverloadedError,
    ProviderRedirectError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    QuotaExceededError,
    RateLimitedError,
)
from sluiceway.providers.anthropic import AnthropicClient
from sluiceway.providers.base import ChatMessage, GenerationKind, ModelRequest
from sluiceway.providers.behaviour import SimulationSettings
from sluiceway.providers.http_errors import error_for_response, parse_retry_after
from sluiceway.providers.http_transport import Http11Transport
from sluiceway.providers.mock_server import MockProviderServer, MockServerSettings
from sluiceway.providers.openai import OpenAICompatibleClient
from sluiceway.rate_limits import RateLimitHeaders, RateLimitWindow

SECRET = "sk-test-0123456789abcdefSECRET"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def _chat(kind: GenerationKind = GenerationKind.TEXT, timeout: float = 5.0) -> ModelRequest:
    return ModelRequest(
        model_id="m",
        kind=kind,
        messages=(ChatMessage(role="user", content="Describe a lighthouse keeper"),),
        json_schema=SCHEMA if kind is GenerationKind.STRUCTURED else None,
        timeout_seconds=timeout,
    )


@pytest.fixture
async def server() -> AsyncIterator[MockProviderServer]:
    mock = MockProviderServer(
        MockServerSettings(simulation=SimulationSettings(capacity=1), api_key=SECRET)
    )
    await mock.start()
    try:
        yield mock
    finally:
        await mock.aclose()


def _client(
    server: MockProviderServer, fault: str | None = None, **headers: str
) -> OpenAICompatibleClient:
    extra = dict(headers)
    if fault is not None:
        extra["x-mock-fault"] = fault
    return OpenAICompatibleClient("mock", base_url=server.base_url, api_key=SECRET, headers=extra)


async def test_chat_structured_and_embeddings_round_trip(server: MockProviderServer) -> None:
    client = _client(server)
    try:
        text = await client.send(_chat())
        assert text.text and text.usage.completion_tokens > 0 and text.reasoning
        structured = await client.send(_chat(GenerationKind.STRUCTURED))
        assert structured.text is not None and '"n"' in structured.text
        embedded = await client.send(
            ModelRequest(model_id="m", kind=GenerationKind.EMBEDDING, inputs=("a", "b"))
        )
        assert len(embedded.embeddings) == 2
    finally:
        await client.aclose()
    assert server.stats()["models"]["m"]["successes"] == 3


@pytest.mark.parametrize("form", ["seconds", "http-date", "ms"])
async def test_429_carries_retry_after_in_each_form(server: MockProviderServer, form: str) -> None:
    client = _client(server, fault="429", **{"x-mock-retry-after-format": form})
    try:
        with pytest.raises(RateLimitedError) as caught:
            await client.send(_chat())
    finally:
        await client.aclose()
    assert caught.value.retry_after_seconds is not None
    assert 0.0 < caught.value.retry_after_seconds <= 2.5


async def test_tpm_beyond_the_window_is_a_429_with_token_headers() -> None:
    mock = MockProviderServer(MockServerSettings(simulation=SimulationSettings(tpm=1)))
    await mock.start()
    seen: list[httpx.Response] = []

    class Recording(Http11Transport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            seen.append(response)
            return response

    client = OpenAICompatibleClient("mock", base_url=mock.base_url, transport=Recording(1))
    try:
        assert (await client.send(_chat())).text  # an empty window takes one large request
        with pytest.raises(RateLimitedError) as caught:
            await client.send(_chat())
    finally:
        await client.aclose()
        await mock.aclose()
    assert caught.value.retry_after_seconds is not None
    assert 55.0 <= caught.value.retry_after_seconds <= 60.0
    assert seen[-1].headers["x-ratelimit-limit-tokens"] == "1"
    assert seen[-1].headers["x-ratelimit-remaining-tokens"] == "0"


async def test_capacity_is_per_model(server: MockProviderServer) -> None:
    hold = _client(server, fault="hang")
    client = _client(server)
    try:
        with pytest.raises(ProviderTimeoutError):
            await hold.send(_chat(timeout=0.2))  # the hung request frees its slot on disconnect
        other = ModelRequest(model_id="other", kind=GenerationKind.TEXT, messages=_chat().messages)
        assert (await client.send(other)).text
    finally:
        await hold.aclose()
        await client.aclose()


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("500", ProviderUnavailableError),
        ("503", ProviderOverloadedError),
        ("reset", ProviderUnavailableError),
        ("malformed", ProviderUnavailableError),
    ],
)
async def test_faults_map_to_typed_errors(
    server: MockProviderServer, fault: str, error: type[Exception]
) -> None:
    client = _client(server, fault=fault)
    try:
        with pytest.raises(error):
            await client.send(_chat())
    finally:
        await client.aclose()


async def test_a_hang_is_a_provider_timeout(server: MockProviderServer) -> None:
    client = _client(server, fault="hang")
    try:
        with pytest.raises(ProviderTimeoutError, match=r"timeout_seconds=0\.1"):
            await client.send(_chat(timeout=0.1))
    finally:
        await client.aclose()


async def test_a_wrong_key_is_an_authentication_error_and_the_key_is_never_shown(
    server: MockProviderServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-key-9876543210ZYXWVU"
    client = OpenAICompatibleClient("mock", base_url=server.base_url, api_key=wrong)
    try:
        with pytest.raises(AuthenticationError) as caught:
            await client.send(_chat())
    finally:
        await client.aclose()
    shown = str(caught.value) + repr(client) + caplog.text + repr(server.stats())
    assert wrong not in shown and SECRET not in shown


def test_retry_after_forms_parse() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert parse_retry_after({"retry-after": "3"}, now_epoch_seconds=now) == 3.0
    assert parse_retry_after({"retry-after": date}, now_epoch_seconds=now) == pytest.approx(7.0)
    assert parse_retry_after({"retry-after-ms": "250"}, now_epoch_seconds=now) == 0.25
    assert parse_retry_after({"retry-after": "soon"}, now_epoch_seconds=now) is None


@pytest.mark.parametrize("zone", ["", " -0000", " GMT", " +0000"])
def test_a_retry_after_date_without_a_zone_is_read_as_utc(zone: str) -> None:
    now = 1_700_000_000.0
    # "Tue, 14 Nov 2023 22:13:27" is now + 7 s in UTC.
    date = email.utils.formatdate(now + 7, usegmt=True).removesuffix(" GMT") + zone
    assert parse_retry_after({"retry-after": date}, now_epoch_seconds=now) == pytest.approx(7.0)


@pytest.mark.parametrize("status", [300, 301, 302, 303, 307, 308])
def test_a_redirect_is_not_retried_and_names_its_target(status: int) -> None:
    error = error_for_response(
        provider="p",
        model_id="m",
        status=status,
        headers={"location": "https://api.example.com/v1/chat/completions"},
        body=b"<html>moved</html>",
        now_epoch_seconds=0,
    )
    assert isinstance(error, ProviderRedirectError) and not error.retryable
    assert f"HTTP {status} is a redirect to 'https://api.example.com/v1/chat/completions'" in str(
        error
    )
    assert "base_url is probably wrong" in str(error)
    bare = error_for_response(
        provider="p", model_id="m", status=status, headers={}, body=b"", now_epoch_seconds=0
    )
    assert "no Location header" in str(bare) and not bare.retryable


def test_error_bodies_separate_quota_context_length_and_overload() -> None:
    def error(status: int, body: bytes) -> Exception:
        return error_for_response(
            provider="p", model_id="m", status=status, headers={}, body=body, now_epoch_seconds=0
        )

    quota = b'{"error": {"type": "insufficient_quota", "code": "insufficient_quota"}}'
    assert isinstance(error(429, quota), QuotaExceededError)
    context = b'{"error": {"code": "context_length_exceeded", "message": "too long"}}'
    assert isinstance(error(400, context), ContextLengthError)
    overloaded = b'{"type": "error", "error": {"type": "overloaded_error"}}'
    assert isinstance(error(529, overloaded), ProviderOverloadedError)
    echoed = error_for_response(
        provider="p",
        model_id="m",
        status=401,
        headers={},
        body=b'{"error": {"message": "bad key ' + SECRET.encode() + b'"}}',
        now_epoch_seconds=0,
        secret=SECRET,
    )
    assert SECRET not in str(echoed)


async def test_anthropic_client_maps_system_schema_and_usage() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "content": [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "{}"}],
                "usage": {"input_tokens": 5, "output_tokens": 2},
            },
            headers={"Anthropic-RateLimit-Requests-Remaining": "41"},
        )

    client = AnthropicClient("a", api_key=SECRET, transport=httpx.MockTransport(answer))
    try:
        response = await client.send(_chat(GenerationKind.STRUCTURED))
    finally:
        await client.aclose()
    assert (response.text, response.reasoning, response.usage.total_tokens) == ("{}", "hm", 7)
    assert response.rate_limit == RateLimitHeaders(requests=RateLimitWindow(remaining=41))
    assert seen[0].headers["x-api-key"] == SECRET
    assert b"JSON schema" in seen[0].content and SECRET not in repr(client)
