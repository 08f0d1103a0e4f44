"""Reading rate-limit headers: Go durations (examples and properties), OpenAI's and Anthropic's
header families, absent or malformed headers that leave their fields ``None``, and the HTTP
clients attaching what they read to answers and refusals (over loopback sockets)."""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import time

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway.errors import ProviderOverloadedError, RateLimitedError
from sluiceway.providers.anthropic import AnthropicClient
from sluiceway.providers.base import ChatMessage, GenerationKind, ModelRequest
from sluiceway.providers.behaviour import SimulationSettings
from sluiceway.providers.mock_server import MockProviderServer, MockServerSettings
from sluiceway.providers.openai import OpenAICompatibleClient
from sluiceway.providers.rate_limit_headers import (
    RateLimitHeaders,
    RateLimitWindow,
    parse_anthropic_rate_limit_headers,
    parse_duration_seconds,
    parse_openai_rate_limit_headers,
    parse_rate_limit_headers,
    select_rate_limit_headers,
)

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z

OPENAI_NAMES = tuple(
    f"x-ratelimit-{field}-{kind}"
    for field in ("limit", "remaining", "reset")
    for kind in ("requests", "tokens")
)
ANTHROPIC_NAMES = tuple(
    f"anthropic-ratelimit-{kind}-{field}"
    for kind in ("requests", "tokens", "input-tokens", "output-tokens")
    for field in ("limit", "remaining", "reset")
)


def _rfc3339(epoch_seconds: float) -> str:
    return datetime.datetime.fromtimestamp(epoch_seconds, datetime.UTC).isoformat()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0", 0.0),
        ("0s", 0.0),
        ("250us", 0.00025),
        ("250\u00b5s", 0.00025),
        ("7ns", 7e-9),
        (".5s", 0.5),
        ("2.s", 2.0),
        (" 1s ", 1.0),
    ],
)
def test_go_durations_are_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "1", "1.5", "-1s", "+1s", "1 s", "s", "1x", "1sm", "1.2.3s", "1e3s", "inf"]
)
def test_anything_else_is_not_a_duration(text: str) -> None:
    assert parse_duration_seconds(text) is None


def _go_duration(nanoseconds: int) -> str:
    """Go's ``time.Duration.String()`` of a non-negative duration (written from its rules:
    under a second in one unit with a fraction, else hours, minutes, fractional seconds)."""

    def fraction(value: int, unit: int) -> str:
        whole, rest = divmod(value, unit)
        digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
        return f"{whole}.{digits}" if digits else str(whole)

    if nanoseconds == 0:
        return "0s"
    if nanoseconds < 1_000:
        return f"{nanoseconds}ns"
    if nanoseconds < 1_000_000:
        return fraction(nanoseconds, 1_000) + "\u00b5s"
    if nanoseconds < 1_000_000_000:
        return fraction(nanoseconds, 1_000_000) + "ms"
    hours, rest = divmod(nanoseconds, 3_600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return text + fraction(rest, 10**9) + "s"


@given(st.integers(min_value=0, max_value=10**9 * 3_600 * 1_000))
def test_every_go_duration_string_reads_back_as_its_length(nanoseconds: int) -> None:
    text = _go_duration(nanoseconds)
    assert parse_duration_seconds(text) == pytest.approx(nanoseconds / 1e9, rel=1e-12, abs=1e-15)


@given(
    st.lists(
        st.tuples(
            st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False),
            st.sampled_from(["h", "m", "s", "ms", "us", "ns"]),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_a_sum_of_parts_in_any_order_is_their_total(parts: list[tuple[object, str]]) -> None:
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    text = "".join(f"{number}{unit}" for number, unit in parts)
    expected = math.fsum(float(str(number)) * scale[unit] for number, unit in parts)
    assert parse_duration_seconds(text) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@given(st.text())
def test_the_duration_parser_never_raises_and_never_goes_negative(text: str) -> None:
    seconds = parse_duration_seconds(text)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0.0)


def test_openai_headers_fill_the_requests_and_tokens_windows() -> None:
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "29000",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert parse_openai_rate_limit_headers(headers) == RateLimitHeaders(
        requests=RateLimitWindow(limit=500, remaining=499, reset_seconds=0.12),
        tokens=RateLimitWindow(limit=30000, remaining=29000, reset_seconds=360.0),
    )


def test_openai_header_names_are_case_insensitive_through_httpx_headers() -> None:
    headers = httpx.Headers({"X-RateLimit-Remaining-Tokens": "7"})
    assert parse_openai_rate_limit_headers(headers) == RateLimitHeaders(
        tokens=RateLimitWindow(remaining=7)
    )


def test_malformed_values_leave_their_fields_none_and_the_rest_is_kept() -> None:
    headers = {
        "x-ratelimit-limit-requests": "-1",
        "x-ratelimit-remaining-requests": "12.5",
        "x-ratelimit-reset-requests": "soon",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "\u00b2",  # a digit to str.isdigit, not a count
        "x-ratelimit-reset-tokens": "1.5s",
    }
    assert parse_openai_rate_limit_headers(headers) == RateLimitHeaders(
        tokens=RateLimitWindow(limit=1000, reset_seconds=1.5)
    )


def test_no_rate_limit_header_gives_none() -> None:
    assert parse_openai_rate_limit_headers({"content-type": "application/json"}) is None
    assert parse_anthropic_rate_limit_headers({}, now_epoch_seconds=NOW) is None
    assert (
        parse_rate_limit_headers({"x-ratelimit-limit-requests": "x"}, now_epoch_seconds=NOW) is None
    )


def test_anthropic_headers_fill_four_windows_with_resets_from_the_wall_clock() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:21.5Z",
        "anthropic-ratelimit-tokens-limit": "90000",
        "anthropic-ratelimit-tokens-remaining": "80000",
        "anthropic-ratelimit-tokens-reset": "2023-11-14T23:13:20+01:00",  # NOW, in +01:00
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-input-tokens-reset": _rfc3339(NOW + 30),
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "7000",
        "anthropic-ratelimit-output-tokens-reset": "2023-11-14T22:13:00Z",  # already past
    }
    parsed = parse_anthropic_rate_limit_headers(headers, now_epoch_seconds=NOW)
    assert parsed == RateLimitHeaders(
        requests=RateLimitWindow(limit=50, remaining=49, reset_seconds=1.5),
        tokens=RateLimitWindow(limit=90000, remaining=80000, reset_seconds=0.0),
        input_tokens=RateLimitWindow(limit=40000, remaining=39000, reset_seconds=30.0),
        output_tokens=RateLimitWindow(limit=8000, remaining=7000, reset_seconds=0.0),
    )
    assert parse_rate_limit_headers(headers, now_epoch_seconds=NOW) == parsed


@pytest.mark.parametrize(
    "reset",
    [
        "2023-11-14T22:13:30",
        "6m0s",
        "tomorrow",
        "2023-13-40T00:00:00Z",
    ],
)
def test_an_anthropic_reset_that_is_not_an_rfc3339_time_is_none(reset: str) -> None:
    headers = {
        "anthropic-ratelimit-requests-remaining": "3",
        "anthropic-ratelimit-requests-reset": reset,
    }
    assert parse_anthropic_rate_limit_headers(headers, now_epoch_seconds=NOW) == RateLimitHeaders(
        requests=RateLimitWindow(remaining=3)
    )


@given(st.dictionaries(st.sampled_from(OPENAI_NAMES + ANTHROPIC_NAMES), st.text(), max_size=18))
def test_no_header_value_makes_a_parser_raise(headers: dict[str, str]) -> None:
    parsed = parse_rate_limit_headers(headers, now_epoch_seconds=NOW)
    if parsed is None:
        return
    for window in (parsed.requests, parsed.tokens, parsed.input_tokens, parsed.output_tokens):
        if window is not None:
            assert window.limit is None or window.limit >= 0
            assert window.remaining is None or window.remaining >= 0
            assert window.reset_seconds is None or window.reset_seconds >= 0.0


def test_only_rate_limit_headers_are_selected_by_lower_case_name() -> None:
    raw = [
        (b"Content-Type", b"application/json"),
        (b"X-RateLimit-Remaining-Requests", b"9"),
        (b"anthropic-ratelimit-tokens-limit", b"100"),
        (b"retry-after", b"1"),
    ]
    assert select_rate_limit_headers(raw) == {
        "x-ratelimit-remaining-requests": "9",
        "anthropic-ratelimit-tokens-limit": "100",
    }


# -- the clients attach what they read -------------------------------------------------------


async def _answering(answers: list[bytes]) -> tuple[asyncio.Server, str]:
    """A loopback server that answers the n-th request on a connection with ``answers[n]``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for answer in answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _answer(status: str, headers: dict[str, str], body: dict[str, object]) -> bytes:
    content = json.dumps(body).encode()
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"HTTP/1.1 {status}\r\n{fields}content-length: {len(content)}\r\n\r\n".encode() + content


CHAT = ModelRequest(
    model_id="m",
    kind=GenerationKind.TEXT,
    messages=(ChatMessage(role="user", content="Name a canal lock"),),
    timeout_seconds=5.0,
)


async def test_the_openai_client_attaches_the_windows_to_answers_and_to_429s() -> None:
    limits = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    refused = limits | {"x-ratelimit-remaining-requests": "0", "retry-after": "1"}
    server, base = await _answering(
        [
            _answer("200 OK", limits, {"choices": [{"message": {"content": "Lock 7"}}]}),
            _answer("429 Too Many Requests", refused, {"error": {"type": "rate_limit"}}),
            _answer("200 OK", {}, {"choices": [{"message": {"content": "Lock 8"}}]}),
        ]
    )
    client = OpenAICompatibleClient("raw", base_url=base)
    try:
        answered = await client.send(CHAT)
        with pytest.raises(RateLimitedError) as caught:
            await client.send(CHAT)
        plain = await client.send(CHAT)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    tokens = RateLimitWindow(limit=1000, remaining=900, reset_seconds=360.0)
    assert answered.rate_limit == RateLimitHeaders(
        requests=RateLimitWindow(limit=60, remaining=59, reset_seconds=1.0), tokens=tokens
    )
    assert caught.value.rate_limit == RateLimitHeaders(
        requests=RateLimitWindow(limit=60, remaining=0, reset_seconds=1.0), tokens=tokens
    )
    assert caught.value.retry_after_seconds == 1.0
    assert plain.text == "Lock 8" and plain.rate_limit is None


async def test_the_anthropic_client_attaches_the_windows_to_answers_and_to_refusals() -> None:
    def limits(remaining: int) -> dict[str, str]:
        reset = _rfc3339(time.time() + 60)
        return {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": str(remaining),
            "anthropic-ratelimit-requests-reset": reset,
            "anthropic-ratelimit-output-tokens-limit": "8000",
            "anthropic-ratelimit-output-tokens-remaining": "7990",
            "anthropic-ratelimit-output-tokens-reset": reset,
        }

    text = {"content": [{"type": "text", "text": "Lock 7"}], "usage": {}}
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    server, base = await _answering(
        [
            _answer("200 OK", limits(49), text),
            _answer("429 Too Many Requests", limits(0), {"type": "error", "error": {}}),
            _answer("529 Overloaded", limits(0), overloaded),
        ]
    )
    client = AnthropicClient("raw", base_url=base)
    try:
        answered = await client.send(CHAT)
        with pytest.raises(RateLimitedError) as limited:
            await client.send(CHAT)
        with pytest.raises(ProviderOverloadedError) as busy:
            await client.send(CHAT)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    for rate_limit, remaining in (
        (answered.rate_limit, 49),
        (limited.value.rate_limit, 0),
        (busy.value.rate_limit, 0),
    ):
        assert rate_limit is not None and rate_limit.tokens is rate_limit.input_tokens is None
        requests, output = rate_limit.requests, rate_limit.output_tokens
        assert requests is not None and output is not None
        assert (requests.limit, requests.remaining) == (50, remaining)
        assert (output.limit, output.remaining) == (8000, 7990)
        for window in (requests, output):
            assert window.reset_seconds is not None and 0.0 < window.reset_seconds <= 60.0


async def test_a_429_from_the_mock_server_carries_its_token_window() -> None:
    mock = MockProviderServer(MockServerSettings(simulation=SimulationSettings(tpm=1)))
    await mock.start()
    client = OpenAICompatibleClient("mock", base_url=mock.base_url)
    try:
        await client.send(CHAT)  # an empty window takes one large request
        with pytest.raises(RateLimitedError) as caught:
            await client.send(CHAT)
    finally:
        await client.aclose()
        await mock.aclose()
    rate_limit = caught.value.rate_limit
    assert rate_limit is not None and rate_limit.tokens is not None
    assert (rate_limit.tokens.limit, rate_limit.tokens.remaining) == (1, 0)
    assert rate_limit.tokens.reset_seconds == pytest.approx(caught.value.retry_after_seconds, abs=1)
