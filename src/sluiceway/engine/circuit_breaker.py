"""The circuit breaker: a provider/model that keeps failing is declared unavailable (SPEC §5.4).

``CircuitBreaker`` is pure: it is told each attempt's result with ``now`` and opens a key when a
failure (error or rate limit) arrives and that key has had no success for ``open_after_seconds``
since its current failure streak began. ``BreakerClient`` wraps a ``ProviderClient`` at the
composition root, feeds the breaker, and once a key is open raises ``ProviderCircuitOpenError``
(a ``RunStoppedError``) instead of sending: the scheduler then stops the run in order and the
error names the provider and model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sluiceway.errors import ProviderCircuitOpenError, ProviderError
from sluiceway.providers.base import ModelRequest, ModelResponse, ProviderClient


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerStatistics:
    open_keys: tuple[tuple[str, str], ...]
    failures_total: int
    successes_total: int


class CircuitBreaker:
    """Per (provider, model): opens after ``open_after_seconds`` of failures without a success."""

    def __init__(self, open_after_seconds: float) -> None:
        if open_after_seconds <= 0:
            raise ValueError(f"open_after_seconds must be > 0, got {open_after_seconds!r}")
        self._open_after = open_after_seconds
        self._streak_started: dict[tuple[str, str], float] = {}
        self._open: dict[tuple[str, str], str] = {}  # key -> last error text
        self._failures = 0
        self._successes = 0

    def record_success(self, key: tuple[str, str]) -> None:
        self._successes += 1
        self._streak_started.pop(key, None)

    def record_failure(self, key: tuple[str, str], now: float, error: str) -> bool:
        """Count a failed attempt; True when this failure opens the circuit of ``key``."""
        self._failures += 1
        started = self._streak_started.setdefault(key, now)
        if key not in self._open and now - started >= self._open_after:
            self._open[key] = error
            return True
        return False

    def is_open(self, key: tuple[str, str]) -> bool:
        return key in self._open

    def open_error(self, key: tuple[str, str], now: float) -> ProviderCircuitOpenError:
        provider, model_id = key
        started = self._streak_started.get(key, now)
        return ProviderCircuitOpenError(
            f"provider {provider!r} model {model_id!r} is unavailable: no successful answer for "
            f"{now - started:.0f}s while every attempt failed or was rate limited (circuit "
            f"breaker after {self._open_after:g}s; last error: {self._open.get(key, '')}). "
            "Check the endpoint and its limits, or raise run.circuit_breaker_seconds",
            provider=provider,
            model_id=model_id,
        )

    def statistics(self) -> CircuitBreakerStatistics:
        return CircuitBreakerStatistics(
            open_keys=tuple(sorted(self._open)),
            failures_total=self._failures,
            successes_total=self._successes,
        )


class BreakerClient:
    """A ``ProviderClient`` that reports every attempt to a breaker and refuses when it is open."""

    def __init__(
        self,
        inner: ProviderClient,
        breaker: CircuitBreaker,
        *,
        provider: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = inner.name
        self._inner = inner
        self._breaker = breaker
        self._provider = provider
        self._clock = clock

    @property
    def inner(self) -> ProviderClient:
        return self._inner

    async def send(self, request: ModelRequest) -> ModelResponse:
        key = (self._provider, request.model_id)
        breaker = self._breaker
        if breaker.is_open(key):
            raise breaker.open_error(key, self._clock())
        try:
            response = await self._inner.send(request)
        except ProviderError as error:
            if error.retryable:
                now = self._clock()
                if breaker.record_failure(key, now, f"{type(error).__name__}: {error}"):
                    raise breaker.open_error(key, now) from error
            raise
        breaker.record_success(key)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
