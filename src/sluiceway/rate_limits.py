"""What one provider answer said about the provider's rate-limit windows: :class:`RateLimitHeaders`.

A provider-neutral value carried by successful answers (``ModelResponse.rate_limit``) and by
refusals (``RateLimitedError.rate_limit``), for request admission to pace grants by. It lives
apart from the provider package so that the error tree can name it; the HTTP headers of each
provider are read into it by :mod:`sluiceway.providers.rate_limit_headers`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sluiceway.values import fast_init


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitWindow:
    """One window as the answer reported it; a field is ``None`` when its header was absent or
    unreadable.

    ``limit`` is the window's size (requests or tokens), ``remaining`` what is left of it, and
    ``reset_seconds`` the time from the answer until the window is fully replenished (>= 0).
    """

    limit: int | None = None
    remaining: int | None = None
    reset_seconds: float | None = None


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitHeaders:
    """The rate-limit windows one answer reported; a window is ``None`` when the answer said
    nothing readable about it.

    ``requests`` and ``tokens`` are reported by OpenAI and Anthropic; ``input_tokens`` and
    ``output_tokens`` by Anthropic only.
    """

    requests: RateLimitWindow | None = None
    tokens: RateLimitWindow | None = None
    input_tokens: RateLimitWindow | None = None
    output_tokens: RateLimitWindow | None = None
