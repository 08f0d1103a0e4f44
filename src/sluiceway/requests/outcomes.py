"""How one outbound attempt ended, as reported when its request lease is released (SPEC §6.4).

``classify_exception`` is the single mapping from what an attempt raised to a release outcome.
"""

from __future__ import annotations

import asyncio
import enum

from sluiceway.errors import (
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
)


class RequestReleaseOutcome(enum.Enum):
    SUCCESS = "success"
    RATE_LIMITED = "rate_limited"
    PROVIDER_FAILURE = "provider_failure"
    PROVIDER_TIMEOUT = "provider_timeout"
    LOCAL_CANCELLED = "local_cancelled"
    LOCAL_TIMEOUT = "local_timeout"
    UNEXPECTED_EXCEPTION = "unexpected_exception"


def classify_exception(exc: BaseException) -> tuple[RequestReleaseOutcome, float | None]:
    """Release outcome and provider ``Retry-After`` (seconds, if any) for an attempt that raised.

    Cancellation and other non-``Exception`` exits are ``local_cancelled``; a builtin
    ``TimeoutError`` raised by local code is ``local_timeout``; provider errors map by kind.
    """
    if isinstance(exc, RateLimitedError):
        return RequestReleaseOutcome.RATE_LIMITED, exc.retry_after_seconds
    if isinstance(exc, ProviderTimeoutError):
        return RequestReleaseOutcome.PROVIDER_TIMEOUT, None
    if isinstance(exc, ProviderError):
        return RequestReleaseOutcome.PROVIDER_FAILURE, None
    if isinstance(exc, asyncio.CancelledError) or not isinstance(exc, Exception):
        return RequestReleaseOutcome.LOCAL_CANCELLED, None
    if isinstance(exc, TimeoutError):
        return RequestReleaseOutcome.LOCAL_TIMEOUT, None
    return RequestReleaseOutcome.UNEXPECTED_EXCEPTION, None
