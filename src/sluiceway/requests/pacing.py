"""Pacing grants by the rate-limit windows a provider reports in its answers (SPEC §6.6).

OpenAI (``x-ratelimit-*``) and Anthropic (``anthropic-ratelimit-*``) tell with every answer how
much of a window is left (``remaining``), how large it is (``limit``) and when it is full again
(``reset``). Both refill continuously, so :class:`PacedWindow` models a window from its latest
report at ``reported_at`` as::

    available(t) = min(limit, remaining + (limit - remaining) * (t - reported_at) / reset)
                   - charged since the report

(without a ``limit``: ``remaining`` until the reset, full after it). A grant of ``amount`` units
fits when ``available(now) >= amount``; otherwise it is ready at the ``t`` where it does, so a
waiter held by a window is woken by a timer, never by polling. Requests that were granted after
the reporting request but before its answer arrived may not have been counted by the provider
yet; they are charged against the report (``unseen``), so the window is never overrun by the
requests in flight. A report older than the one in force (an answer to an earlier request
arriving late) is ignored. Once the reset has passed with no newer report the window says
nothing: pacing holds nobody back until the next answer reports again. Absent or malformed
headers give no report and change nothing.

Pure bookkeeping: every method takes ``now``; nothing reads a clock.
"""

from __future__ import annotations

import enum

from sluiceway.rate_limits import RateLimitWindow


class PacedKind(enum.Enum):
    """What a paced window counts."""

    REQUESTS = "requests"
    TOKENS = "tokens"


class PacedWindow:
    """One provider window as its freshest report describes it; see the module docstring."""

    __slots__ = (
        "_charged",
        "_limit",
        "_remaining",
        "_reported_at",
        "_reset_at",
        "_sequence",
        "holds",
        "kind",
    )

    def __init__(self, kind: PacedKind) -> None:
        self.kind = kind
        # Mutable state, all of it:
        self._limit: int | None = None
        self._remaining = 0
        self._reported_at = 0.0
        self._reset_at: float | None = None  # None: no report in force
        self._charged = 0
        self._sequence = -1  # grant sequence of the request whose answer reported
        self.holds = 0  # grants this window has held back

    @property
    def active(self) -> bool:
        return self._reset_at is not None

    def report(self, window: RateLimitWindow, *, now: float, sequence: int, unseen: int) -> None:
        """Take a report from the answer to the request granted as ``sequence``; ``unseen``
        units were granted after that request (charged against the report)."""
        remaining, reset_seconds = window.remaining, window.reset_seconds
        if remaining is None or reset_seconds is None or sequence < self._sequence:
            return
        self._sequence = sequence
        self._limit = window.limit if window.limit is not None and window.limit > 0 else None
        self._remaining = max(0, remaining)
        self._reported_at = now
        self._reset_at = now + max(0.0, reset_seconds)
        self._charged = max(0, unseen)

    def charge(self, amount: int) -> None:
        if self._reset_at is not None:
            self._charged += amount

    def _expire(self, now: float) -> bool:
        """Forget a report whose reset has passed; True while one is in force."""
        if self._reset_at is not None and now >= self._reset_at:
            self._reset_at = None
        return self._reset_at is not None

    def available(self, now: float) -> float:
        """Units the window has for new grants at ``now`` (infinite without a report)."""
        if not self._expire(now) or self._reset_at is None:
            return float("inf")
        limit = self._limit
        if limit is None or limit <= self._remaining:
            return self._remaining - self._charged
        span = self._reset_at - self._reported_at
        refilled = (limit - self._remaining) * (now - self._reported_at) / span if span > 0 else 0
        return min(float(limit), self._remaining + refilled) - self._charged

    def ready_at(self, amount: int, now: float) -> float:
        """The earliest time ``amount`` fits (``now`` if it fits already)."""
        if self.available(now) >= amount or self._reset_at is None:
            return now
        limit = self._limit
        needed = amount + self._charged - self._remaining
        if limit is None or limit <= self._remaining or needed > limit - self._remaining:
            return self._reset_at
        span = self._reset_at - self._reported_at
        at = self._reported_at + span * needed / (limit - self._remaining)
        return min(self._reset_at, max(now, at))
