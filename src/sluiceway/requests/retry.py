"""The retry budget of one model call and the delay before each retry (SPEC §6.4).

Delay before retry ``n`` (1 = the first retry): exponential backoff
``d = min(backoff_max, backoff_base * 2 ** (n - 1))`` with equal jitter, ``b = d * (1 + u) / 2``,
so that retries of many rows do not arrive in lockstep. When the provider sent Retry-After ``r``
the delay is ``max(r * (1 + u' * rate_limit_jitter_ratio), b)``: never earlier than asked, and a
tiny Retry-After from an overloaded endpoint still backs off instead of hammering it.

``u`` and ``u'`` are uniform in ``[0, 1)``, drawn from the caller's seeded ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sluiceway.errors import EngineError


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How many attempts, and how much wall time, one model call may spend."""

    max_attempts: int = 6
    max_wall_seconds: float = 600.0
    backoff_base_seconds: float = 0.25
    backoff_max_seconds: float = 30.0
    rate_limit_jitter_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise EngineError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_wall_seconds <= 0:
            raise EngineError(
                f"RetryPolicy.max_wall_seconds must be > 0, got {self.max_wall_seconds}"
            )
        if self.backoff_base_seconds < 0 or self.backoff_max_seconds < self.backoff_base_seconds:
            raise EngineError(
                "RetryPolicy needs 0 <= backoff_base_seconds <= backoff_max_seconds, got "
                f"{self.backoff_base_seconds} and {self.backoff_max_seconds}"
            )
        if self.rate_limit_jitter_ratio < 0:
            raise EngineError(
                "RetryPolicy.rate_limit_jitter_ratio must be >= 0, got "
                f"{self.rate_limit_jitter_ratio}"
            )


def retry_delay_seconds(
    policy: RetryPolicy,
    *,
    retry_number: int,
    retry_after_seconds: float | None,
    rng: random.Random,
) -> float:
    """Seconds to wait before retry ``retry_number``; see the module docstring for the formula."""
    if retry_number < 1:
        raise EngineError(f"retry numbers start at 1, got {retry_number}")
    exponent = min(retry_number - 1, 62)
    delay = min(policy.backoff_max_seconds, policy.backoff_base_seconds * 2.0**exponent)
    backoff = delay * (1.0 + rng.random()) / 2.0
    if retry_after_seconds is not None and retry_after_seconds >= 0:
        asked = retry_after_seconds * (1.0 + rng.random() * policy.rate_limit_jitter_ratio)
        return max(asked, backoff)
    return backoff
