"""Mapping HTTP answers of model providers to typed errors, and reading Retry-After.

Used by the HTTP clients at their boundary: status codes and provider error bodies (OpenAI and
Anthropic shapes) become :mod:`sluiceway.errors` types (a 3xx is a redirect, not followed: the
base URL is wrong); ``Retry-After`` is read as seconds, as an HTTP-date (UTC when it names no
zone), or from ``retry-after-ms``. Messages never contain credentials.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import math
from collections.abc import Mapping
from typing import Any

from sluiceway.errors import (
    AuthenticationError,
    BadRequestError,
    ContextLengthError,
    ProviderError,
    ProviderOverloadedError,
    ProviderRedirectError,
    ProviderUnavailableError,
    QuotaExceededError,
    RateLimitedError,
)
from sluiceway.rate_limits import RateLimitHeaders

_MAX_DETAIL_CHARS = 300
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "quota_exceeded"})
_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})


def parse_retry_after(headers: Mapping[str, str], *, now_epoch_seconds: float) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` (seconds or HTTP-date).

    ``headers`` must be case-insensitive (``httpx.Headers``) or use lower-case names. Unreadable
    or negative values are ignored (``None``); a date in the past means 0.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            # No zone, or "-0000" (RFC 5322: zone unknown): HTTP-dates are in UTC.
            when = when.replace(tzinfo=datetime.UTC)
        return max(0.0, when.timestamp() - now_epoch_seconds)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _error_fields(body: bytes) -> tuple[str, str, str]:
    """(type, code, message) from an OpenAI- or Anthropic-shaped error body, '' when absent."""
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        text = body[:_MAX_DETAIL_CHARS].decode("utf-8", "replace").strip()
        return "", "", text
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str):
        return "", "", error
    if not isinstance(error, dict):
        return "", "", ""
    kind = error.get("type")
    code = error.get("code")
    message = error.get("message")
    return (
        kind if isinstance(kind, str) else "",
        code if isinstance(code, str) else "",
        message if isinstance(message, str) else "",
    )


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced (no-op without a secret)."""
    if secret and len(secret) >= 4:
        return text.replace(secret, "[redacted]")
    return text


def error_for_response(
    *,
    provider: str,
    model_id: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    now_epoch_seconds: float,
    secret: str | None = None,
    base_url: str | None = None,
    rate_limit: RateLimitHeaders | None = None,
) -> ProviderError:
    """The typed error for a non-2xx answer (rate limit vs quota, context length, auth, ...).

    A 3xx is a redirect, which is not followed: ``base_url`` (named in the message when
    given) most likely points at the wrong address. Rate-limit and overload errors carry
    ``rate_limit`` (the windows the answer's headers reported).
    """
    where = f"provider {provider!r} model {model_id!r}: HTTP {status}"
    if 300 <= status < 400:
        location = redact(headers.get("location", "")[:_MAX_DETAIL_CHARS], secret)
        target = f" to {location!r}" if location else " with no Location header"
        configured = f" ({base_url!r})" if base_url else ""
        return ProviderRedirectError(
            f"{where} is a redirect{target}; redirects are not followed: the provider's "
            f"base_url{configured} is probably wrong (check the scheme, host and path, e.g. "
            "http vs https or a missing /v1)"
        )
    kind, code, message = _error_fields(body)
    detail = redact(message[:_MAX_DETAIL_CHARS], secret).replace("\n", " ")
    if detail:
        where += f" ({detail})"
    retry_after = parse_retry_after(headers, now_epoch_seconds=now_epoch_seconds)
    if status == 429:
        if code in _QUOTA_CODES or kind in _QUOTA_CODES:
            return QuotaExceededError(
                f"{where}; the account's quota is spent, add credit or raise the quota"
            )
        return RateLimitedError(
            f"{where}; rate limited", retry_after_seconds=retry_after, rate_limit=rate_limit
        )
    if status in (503, 529) or kind == "overloaded_error":
        return ProviderOverloadedError(
            f"{where}; the endpoint is overloaded",
            retry_after_seconds=retry_after,
            rate_limit=rate_limit,
        )
    if status in (401, 403):
        return AuthenticationError(
            f"{where}; the credentials were rejected, check the environment variable named "
            "by the provider's api_key_env"
        )
    if status in (400, 404, 413, 422):
        if code in _CONTEXT_CODES or "context length" in message.lower():
            return ContextLengthError(
                f"{where}; the prompt is longer than the model's context, shorten it"
            )
        return BadRequestError(f"{where}; the request was rejected as invalid")
    if status == 408:
        return ProviderUnavailableError(f"{where}; the server timed out the request")
    return ProviderUnavailableError(f"{where}; server error, retry later")
