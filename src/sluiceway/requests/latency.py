"""Straggler policy: per-attempt timeouts and hedge delays that follow the latency observed per
key, and the budget of hedged attempts (SPEC §6.6).

A key is a provider/model and domain plus the column whose task made the call. Its
:class:`LatencyWindow` keeps the provider call times of its last ``window`` successes (no queue
wait, no failures) in a ring buffer; every ``refresh_every`` samples it sorts a copy and reads
two quantiles::

    timeout     = max(min_timeout_seconds, timeout_factor * q(timeout_quantile), escalation)
    hedge_after = hedge_factor * q(hedge_quantile)

and an attempt gets ``min(timeout, configured timeout_seconds)`` (:meth:`attempt_timeout`).
The successes of every column are also samples of their provider/model and domain as a whole
(the window of column None, which calls made outside a task use directly; all of a column's
samples until it is warm, one in eight after): a column with fewer than ``min_samples``
samples of its own borrows that window's values.

Regimes:

- fewer than ``min_samples`` samples (in the column's window and its provider/model's): no
  adaptive timeout (the configured ``timeout_seconds`` governs) and no hedge;
- steady latency: a healthy answer is almost never cut (it would have to exceed the
  ``timeout_quantile`` by ``timeout_factor``); a hang is abandoned after a few multiples of the
  normal latency instead of the whole configured timeout, and retried;
- latency rises past the timeout: answers stop coming, and with them the samples. So an
  expiry with no success since the previous expiry raises ``escalation`` to twice the timeout
  that expired: the timeout doubles per round of expiries (up to the configured one) until
  answers come back and the window follows them. An expiry among successes is a straggler, not
  a slower provider, and changes nothing. ``escalation`` halves at every refresh, so it fades
  within a few dozen successes once answers come back;
- latency falls: the window forgets the slow answers within ``window`` successes.

Cost per success: one slot write (and one in the parent for one sample in eight once the
column is warm); a refresh sorts ``window`` floats every ``refresh_every`` samples (256 and 32
by default: a fraction of a microsecond per sample, amortized).

:class:`HedgeBudget` is a token bucket counted in attempts: each attempt earns
``hedge_budget_ratio`` of a hedge, at most ``hedge_burst`` hedges are saved up, and a hedge
spends one. So hedged attempts never exceed ``hedge_budget_ratio`` x attempts.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from sluiceway.errors import EngineError
from sluiceway.requests.keys import RequestResourceKey


@dataclass(frozen=True, slots=True, kw_only=True)
class StragglerSettings:
    """Adaptive timeouts and hedged attempts; see the module docstring for the formulas.

    ``adaptive_timeout=False`` leaves every attempt to the configured ``timeout_seconds``;
    ``hedging=False`` (the default) never sends a second attempt while the first one runs."""

    adaptive_timeout: bool = True
    timeout_quantile: float = 0.99
    timeout_factor: float = 3.0
    min_timeout_seconds: float = 1.0
    min_samples: int = 20
    hedging: bool = False
    hedge_quantile: float = 0.95
    hedge_factor: float = 2.0
    hedge_budget_ratio: float = 0.02
    hedge_burst: int = 10
    window: int = 256
    refresh_every: int = 32

    def __post_init__(self) -> None:
        for name in ("timeout_quantile", "hedge_quantile"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise EngineError(f"StragglerSettings.{name} must be in (0, 1), got {value}")
        for name in ("timeout_factor", "hedge_factor"):
            value = getattr(self, name)
            if not value >= 1.0:
                raise EngineError(f"StragglerSettings.{name} must be >= 1, got {value}")
        if not self.min_timeout_seconds > 0:
            raise EngineError(
                f"StragglerSettings.min_timeout_seconds must be > 0, got {self.min_timeout_seconds}"
            )
        if not 0.0 < self.hedge_budget_ratio <= 1.0:
            raise EngineError(
                "StragglerSettings.hedge_budget_ratio must be in (0, 1], got "
                f"{self.hedge_budget_ratio}"
            )
        for name in ("min_samples", "hedge_burst", "window", "refresh_every"):
            value = getattr(self, name)
            if value < 1:
                raise EngineError(f"StragglerSettings.{name} must be >= 1, got {value}")
        if self.min_samples > self.window:
            raise EngineError(
                f"StragglerSettings.min_samples ({self.min_samples}) must be <= window "
                f"({self.window}): the window never holds more samples than that"
            )

    @property
    def enabled(self) -> bool:
        """Whether latency is tracked at all (for a timeout or a hedge)."""
        return self.adaptive_timeout or self.hedging


# Once a column's window is warm, one of this many of its samples also goes to its parent.
_PARENT_SHARE = 8


def _nearest_rank(ordered: list[float], quantile: float) -> float:
    """The nearest-rank quantile of a sorted, non-empty list."""
    index = min(len(ordered) - 1, max(0, math.ceil(quantile * len(ordered)) - 1))
    return ordered[index]


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyWindowStatistics:
    """One key's window: what it holds and the values in force (None before ``min_samples``)."""

    samples: int
    observed_total: int
    timeout_quantile_seconds: float | None
    hedge_quantile_seconds: float | None
    timeout_seconds: float | None
    hedge_after_seconds: float | None
    escalation_seconds: float
    expiries: int


class LatencyWindow:
    """The recent success latencies of one key and the timeout and hedge delay they give.

    Mutable and updated in place (a sample per success at thousands of requests per second);
    pure otherwise: no clock, no I/O. ``timeout_seconds`` and ``hedge_after_seconds`` are this
    window's own values, None until ``min_samples`` successes were observed; until then the
    values in force (:meth:`attempt_timeout`, :meth:`hedge_delay_seconds`) are ``parent``'s,
    which also gets every sample."""

    __slots__ = (
        "_answered_since_expiry",
        "_capacity",
        "_escalation",
        "_parent",
        "_samples",
        "_settings",
        "_until_refresh",
        "expiries",
        "hedge_after_seconds",
        "hedge_quantile_seconds",
        "observed_total",
        "timeout_quantile_seconds",
        "timeout_seconds",
    )

    def __init__(self, settings: StragglerSettings, parent: LatencyWindow | None = None) -> None:
        self._settings = settings
        self._parent = parent
        self._capacity = settings.window
        # A ring: sample n goes to slot n % window; slots past the samples seen are unused.
        self._samples: list[float] = [0.0] * settings.window
        self._until_refresh = settings.min_samples
        self._escalation = 0.0
        self._answered_since_expiry = True
        self.observed_total = 0
        self.expiries = 0
        self.timeout_quantile_seconds: float | None = None
        self.hedge_quantile_seconds: float | None = None
        self.timeout_seconds: float | None = None
        self.hedge_after_seconds: float | None = None

    def observe(self, latency_seconds: float) -> None:
        """One success's provider call time."""
        count = self.observed_total
        parent = self._parent
        # The parent needs every sample while this window borrows its values, and a fresh
        # share of them afterwards, for columns that start later.
        if parent is not None and (
            not count % _PARENT_SHARE or self.timeout_quantile_seconds is None
        ):
            parent.observe(latency_seconds)
        self._samples[count % self._capacity] = latency_seconds  # the ring's oldest slot
        self.observed_total = count + 1
        self._answered_since_expiry = True
        until = self._until_refresh - 1
        if until > 0:
            self._until_refresh = until
        else:
            self._refresh()

    def in_force(self) -> LatencyWindow:
        """The window whose values apply: this one once warm, else its parent (if any)."""
        if self.timeout_quantile_seconds is None and self._parent is not None:
            return self._parent
        return self

    def on_expiry(self, timeout_seconds: float) -> None:
        """An attempt given ``timeout_seconds`` by this window was abandoned at its deadline.
        Unless the window in force saw a success since its previous expiry, it escalates."""
        self.expiries += 1
        source = self.in_force()
        if source._answered_since_expiry:
            source._answered_since_expiry = False
            return
        source._escalation = max(source._escalation, 2.0 * timeout_seconds)
        source._settle()

    def attempt_timeout(
        self, configured_seconds: float | None, at_least_seconds: float = 0.0
    ) -> float | None:
        """The deadline of the next attempt, or None when the configured timeout governs
        (before ``min_samples``, or when the adaptive value is not below it).

        ``at_least_seconds`` raises it for one call whose previous attempt expired."""
        timeout = self.timeout_seconds
        if timeout is None:
            parent = self._parent
            timeout = None if parent is None else parent.timeout_seconds
            if timeout is None:
                return None
        if at_least_seconds > timeout:
            timeout = at_least_seconds
        if configured_seconds is not None and timeout >= configured_seconds:
            return None
        return timeout

    def hedge_delay_seconds(self) -> float | None:
        """How long an attempt runs before it may be hedged (None before ``min_samples``)."""
        return self.in_force().hedge_after_seconds

    def statistics(self) -> LatencyWindowStatistics:
        return LatencyWindowStatistics(
            samples=min(self.observed_total, self._capacity),
            observed_total=self.observed_total,
            timeout_quantile_seconds=self.timeout_quantile_seconds,
            hedge_quantile_seconds=self.hedge_quantile_seconds,
            timeout_seconds=self.timeout_seconds,
            hedge_after_seconds=self.hedge_after_seconds,
            escalation_seconds=self._escalation,
            expiries=self.expiries,
        )

    def _refresh(self) -> None:
        settings = self._settings
        self._until_refresh = settings.refresh_every
        filled = self.observed_total
        ordered = sorted(self._samples if filled >= self._capacity else self._samples[:filled])
        self.timeout_quantile_seconds = _nearest_rank(ordered, settings.timeout_quantile)
        self.hedge_quantile_seconds = _nearest_rank(ordered, settings.hedge_quantile)
        self._escalation /= 2.0
        self._settle()

    def _settle(self) -> None:
        """Recompute the values in force from the quantiles and the escalation."""
        settings = self._settings
        quantile = self.timeout_quantile_seconds
        if quantile is None:
            return  # not enough samples yet: nothing adapts
        self.timeout_seconds = max(
            settings.min_timeout_seconds, settings.timeout_factor * quantile, self._escalation
        )
        hedge = self.hedge_quantile_seconds
        self.hedge_after_seconds = None if hedge is None else settings.hedge_factor * hedge


LatencyKey = tuple[RequestResourceKey, str | None]


class LatencyTracker:
    """The latency windows of one executor by key (resource, column); built on first use.
    The window of a column has the window of its resource (column None) as its parent.

    ``window(resource, column)`` is on the path of every attempt: resources are the resolver's
    long-lived key objects, so it looks them up by identity first (an equal key that is a
    different object still finds the same window, through the slower equality lookup)."""

    def __init__(self, settings: StragglerSettings) -> None:
        self._settings = settings
        self._windows: dict[LatencyKey, LatencyWindow] = {}
        # id(resource) -> (resource, its windows by column); the stored resource keeps the id
        # valid for as long as the entry exists.
        self._by_identity: dict[int, tuple[RequestResourceKey, dict[str | None, LatencyWindow]]]
        self._by_identity = {}

    @property
    def settings(self) -> StragglerSettings:
        return self._settings

    def window(self, resource: RequestResourceKey, column: str | None) -> LatencyWindow:
        entry = self._by_identity.get(id(resource))
        if entry is not None and entry[0] is resource:
            found = entry[1].get(column)
            if found is not None:
                return found
        key: LatencyKey = (resource, column)
        window = self._windows.get(key)
        if window is None:
            parent = None if column is None else self.window(resource, None)
            window = self._windows[key] = LatencyWindow(self._settings, parent)
        if entry is None or entry[0] is not resource:
            entry = self._by_identity[id(resource)] = (resource, {})
        entry[1][column] = window
        return window

    def statistics(self) -> dict[LatencyKey, LatencyWindowStatistics]:
        return {key: window.statistics() for key, window in self._windows.items()}


class HedgeResult(enum.Enum):
    """How a hedged attempt ended."""

    WON = "won"  # it answered first; the first attempt was cancelled (or had failed)
    LOST = "lost"  # the first attempt answered first (or the call ended); the hedge was cancelled
    FAILED = "failed"  # the hedge itself failed (error or its own deadline)


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgeBudgetStatistics:
    attempts: int
    hedges: int
    available: float


class HedgeBudget:
    """At most ``ratio`` hedged attempts per attempt, ever, with ``burst`` saved up at most.

    Counted in attempts, not time: ``earn()`` per attempt, ``try_spend()`` per hedge. Integer
    credit (one per attempt, a hedge costs ``1 / ratio``) keeps the bound exact."""

    __slots__ = ("_attempts", "_cap", "_cost", "_credit", "_hedges")

    def __init__(self, ratio: float, burst: int) -> None:
        if not 0.0 < ratio <= 1.0 or burst < 1:
            raise EngineError(
                f"HedgeBudget needs ratio in (0, 1] and burst >= 1, got {ratio} and {burst}"
            )
        self._cost = 1.0 / ratio
        self._cap = burst * self._cost
        self._credit = 0.0
        self._attempts = 0
        self._hedges = 0

    def earn(self) -> None:
        self._attempts += 1
        if self._credit < self._cap:
            self._credit += 1.0

    def can_spend(self) -> bool:
        return self._credit >= self._cost

    def try_spend(self) -> bool:
        if self._credit < self._cost:
            return False
        self._credit -= self._cost
        self._hedges += 1
        return True

    def statistics(self) -> HedgeBudgetStatistics:
        return HedgeBudgetStatistics(
            attempts=self._attempts, hedges=self._hedges, available=self._credit / self._cost
        )


__all__ = [
    "HedgeBudget",
    "HedgeBudgetStatistics",
    "HedgeResult",
    "LatencyKey",
    "LatencyTracker",
    "LatencyWindow",
    "LatencyWindowStatistics",
    "StragglerSettings",
]
