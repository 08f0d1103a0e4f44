"""The limit a request domain is admitted against, kept apart from the machinery enforcing it.

The admission controller reads ``limit`` when it decides whether a request may go and reports
every release to ``on_outcome``; it never computes a limit itself. The foundation uses
:class:`StaticRequestLimit`; adaptive algorithms (SPEC §6.3) implement the same protocol.
"""

from __future__ import annotations

from typing import Protocol

from sluiceway.errors import EngineError
from sluiceway.requests.keys import RequestResourceKey
from sluiceway.requests.outcomes import RequestReleaseOutcome


class RequestLimit(Protocol):
    """How many requests of one domain may be in flight; updated from release outcomes.

    Implementations are pure bookkeeping: no clock reads, locks, events or waiting. ``limit``
    must stay >= 1; the controller raises :class:`EngineError` otherwise.
    """

    @property
    def limit(self) -> int: ...

    def on_outcome(
        self,
        outcome: RequestReleaseOutcome,
        *,
        now: float,
        limit_at_grant: int,
        retry_after_seconds: float | None,
    ) -> None: ...


class RequestLimitFactory(Protocol):
    """Builds the limit of a domain the first time a request for it arrives."""

    def __call__(self, resource: RequestResourceKey, static_cap: int) -> RequestLimit: ...


class StaticRequestLimit:
    """A limit that never moves: the provider/model's static cap."""

    __slots__ = ("_limit",)

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise EngineError(f"a static request limit must be >= 1, got {limit}")
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    def on_outcome(
        self,
        outcome: RequestReleaseOutcome,
        *,
        now: float,
        limit_at_grant: int,
        retry_after_seconds: float | None,
    ) -> None:
        return None


def static_limits(resource: RequestResourceKey, static_cap: int) -> RequestLimit:
    """The default :class:`RequestLimitFactory`: every domain gets the static cap."""
    return StaticRequestLimit(static_cap)
