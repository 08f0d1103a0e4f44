"""Reading the rate-limit headers of OpenAI and Anthropic answers into :class:`RateLimitHeaders`.

OpenAI (and compatible servers) send ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``,
the resets as Go durations (``6m0s``, ``1.5s``, ``20ms``, ``1h2m3.5s``). Anthropic sends
``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``,
the resets as RFC 3339 times, turned into seconds from the caller's wall clock. Pure functions:
a header that is absent or unreadable leaves its field ``None``; nothing here raises.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable, Mapping

from sluiceway.rate_limits import RateLimitHeaders, RateLimitWindow

__all__ = [
    "RateLimitHeaders",
    "RateLimitWindow",
    "parse_anthropic_rate_limit_headers",
    "parse_duration_seconds",
    "parse_openai_rate_limit_headers",
    "parse_rate_limit_headers",
    "select_rate_limit_headers",
]

_PREFIXES = (b"x-ratelimit-", b"anthropic-ratelimit-")

# Go's time.ParseDuration units, in seconds; "us" and both micro signs are microseconds.
_UNIT_SECONDS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ns": 1e-9,
}
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_UNIT = r"(?:ms|us|\u00b5s|\u03bcs|ns|h|m|s)"  # "ms" before "m" and "s"
_DURATION = re.compile(rf"(?:{_NUMBER}{_UNIT})+")
_PART = re.compile(rf"({_NUMBER})({_UNIT})")


def parse_duration_seconds(text: str) -> float | None:
    """Seconds in a Go duration (``6m0s``, ``1.5s``, ``20ms``, ``1h2m3.5s``, ``0``), or
    ``None`` when ``text`` is not one. Signs are refused: a reset is never negative."""
    text = text.strip()
    if text == "0":
        return 0.0
    if not _DURATION.fullmatch(text):
        return None
    seconds = math.fsum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(text))
    return seconds if math.isfinite(seconds) else None


def _count(text: str | None) -> int | None:
    """A non-negative decimal count, or ``None``."""
    if text is None:
        return None
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def _seconds_until(text: str | None, now_epoch_seconds: float) -> float | None:
    """Seconds from ``now_epoch_seconds`` to an RFC 3339 time (0 when it is past), or ``None``."""
    if text is None:
        return None
    try:
        when = datetime.datetime.fromisoformat(text.strip().upper())
    except ValueError:
        return None
    if when.tzinfo is None:
        return None  # RFC 3339 times name their offset; a local time cannot be placed
    return max(0.0, when.timestamp() - now_epoch_seconds)


def _window(
    limit: int | None, remaining: int | None, reset_seconds: float | None
) -> RateLimitWindow | None:
    if limit is None and remaining is None and reset_seconds is None:
        return None
    return RateLimitWindow(limit=limit, remaining=remaining, reset_seconds=reset_seconds)


def _headers(*windows: RateLimitWindow | None) -> RateLimitHeaders | None:
    requests, tokens, input_tokens, output_tokens = windows
    if all(window is None for window in windows):
        return None
    return RateLimitHeaders(
        requests=requests, tokens=tokens, input_tokens=input_tokens, output_tokens=output_tokens
    )


def parse_openai_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitHeaders | None:
    """The ``x-ratelimit-*`` windows (requests, tokens), or ``None`` when none is readable.

    ``headers`` must be case-insensitive (``httpx.Headers``) or use lower-case names.
    """

    def window(kind: str) -> RateLimitWindow | None:
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        return _window(
            _count(headers.get(f"x-ratelimit-limit-{kind}")),
            _count(headers.get(f"x-ratelimit-remaining-{kind}")),
            None if reset is None else parse_duration_seconds(reset),
        )

    return _headers(window("requests"), window("tokens"), None, None)


def parse_anthropic_rate_limit_headers(
    headers: Mapping[str, str], *, now_epoch_seconds: float
) -> RateLimitHeaders | None:
    """The ``anthropic-ratelimit-*`` windows (requests, tokens, input and output tokens), or
    ``None`` when none is readable; resets are seconds from ``now_epoch_seconds`` (wall clock).

    ``headers`` must be case-insensitive (``httpx.Headers``) or use lower-case names.
    """

    def window(kind: str) -> RateLimitWindow | None:
        prefix = f"anthropic-ratelimit-{kind}-"
        return _window(
            _count(headers.get(prefix + "limit")),
            _count(headers.get(prefix + "remaining")),
            _seconds_until(headers.get(prefix + "reset"), now_epoch_seconds),
        )

    return _headers(
        window("requests"), window("tokens"), window("input-tokens"), window("output-tokens")
    )


def parse_rate_limit_headers(
    headers: Mapping[str, str], *, now_epoch_seconds: float
) -> RateLimitHeaders | None:
    """The windows of whichever family ``headers`` carries: OpenAI's, else Anthropic's."""
    openai = parse_openai_rate_limit_headers(headers)
    if openai is not None:
        return openai
    return parse_anthropic_rate_limit_headers(headers, now_epoch_seconds=now_epoch_seconds)


def select_rate_limit_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The rate-limit headers among raw ``(name, value)`` pairs, by lower-case name (empty when
    there are none, the common case, so callers parse only when there is something to read)."""
    selected: dict[str, str] = {}
    for name, value in raw:
        lowered = name.lower()
        if lowered.startswith(_PREFIXES):
            selected[lowered.decode("latin-1")] = value.decode("latin-1")
    return selected
