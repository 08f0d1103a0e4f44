"""The limit a request domain is admitted against, kept apart from the machinery enforcing it.

The admission controller reads ``limit`` and ``blocked_until`` when it decides whether a request
may go, reports every release to ``on_outcome`` and calls ``advance(now)`` when a deadline the
limit asked for is due; it never computes a limit itself. The algorithms (SPEC §6.3) are small
pure classes that take ``now`` and samples and return a new state:

- :class:`AimdLimit`: additive increase, multiplicative decrease.
  On a rate limit: ``limit = max(1, floor(limit * decrease_factor))``, at most once per burst
  (a lease granted at a higher limit than the current one does not decrease again). The
  concurrency at which the provider refused is remembered as the *ceiling*: the requests in
  flight when the burst's first refusal arrived, less one for each further refusal of the same
  burst, kept within ``[decreased limit + 1, limit in force]``. A limit of 36 against a provider
  that serves 32 (4 refusals) remembers 33, not 36. When the further refusals bring the ceiling
  down to the decreased limit, the limit follows it (``ceiling - 1``, the concurrency the
  provider served), but not below half the limit the burst was granted at: 64 requests against
  a provider that serves 32 end the burst at 32, one cooldown instead of one per multiplicative
  step (64, 48, 36, 27).
  On a success outside cooldown while the limit is in use
  (``in_flight >= ceil(limit * usage_ratio)``): after ``successes_until_increase`` successes
  ``limit += increase_step`` up to the effective max. At or above the remembered ceiling each
  increase needs ``ceiling_caution`` times as many successes, and a step that would reach the
  ceiling waits until the hold (``ceiling_hold_seconds``) has passed since the last rate
  limit, so the limit settles just below the last known rate-limit point instead of
  sawtoothing back into it (each probe costs a 429 and a cooldown). A rate limit at or above
  the concurrency of the previous refusal confirms it and doubles the hold, up to
  ``ceiling_hold_max_seconds``; a rate limit below it starts the hold over.
- :class:`StartupRamp`: from 1 to the initial limit linearly over ``ramp_seconds``;
  ``limit_at(now) = 1 + floor((target - 1) * (now - start) / ramp_seconds)``.
- :class:`CooldownPolicy`: ``now + min(retry_after, max_seconds)``, or ``now + default_seconds``
  when the provider gave no Retry-After.
- :class:`GradientLimit` (opt-in, for servers that queue instead of refusing): the limit moves
  by the ratio of a long-term baseline to the short-term latency,
  ``new = limit * clamp(tolerance * baseline / short, 0.5, 1) + sqrt(limit)``, smoothed; it
  only shrinks while latency inflates above ``tolerance * baseline``. The baseline is the
  lowest latency seen, drifting slowly up toward the long-term average (so a server that gets
  slower for good is followed), and the gradient limit starts at a quarter of the initial
  limit, so its first samples show the latency of a server that is not queueing yet.

:class:`AdaptiveRequestLimit` composes them into a :class:`RequestLimit`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from sluiceway.errors import EngineError
from sluiceway.requests.keys import ProviderModelKey, RequestResourceKey
from sluiceway.requests.outcomes import RequestReleaseOutcome

# Outcomes that mean "the provider is under pressure": they decrease the limit and cool down.
PRESSURE_OUTCOMES = frozenset({RequestReleaseOutcome.RATE_LIMITED})


class RequestLimit(Protocol):
    """How many requests of one domain may be in flight; updated from release outcomes.

    Implementations are pure bookkeeping: no clock reads, locks, events or waiting. ``limit``
    must stay >= 1; the controller raises :class:`EngineError` otherwise. ``blocked_until`` is
    the end of a cooldown (no grants before it), ``None`` outside cooldown.
    """

    @property
    def limit(self) -> int: ...

    @property
    def blocked_until(self) -> float | None: ...

    @property
    def ceiling(self) -> int | None: ...

    def on_outcome(
        self,
        outcome: RequestReleaseOutcome,
        *,
        now: float,
        limit_at_grant: int,
        in_flight: int,
        retry_after_seconds: float | None,
        latency_seconds: float | None = None,
    ) -> None: ...

    def advance(self, now: float) -> float | None:
        """Apply changes due by ``now`` (cooldown end, ramp steps); return the next such time."""
        ...


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

    @property
    def blocked_until(self) -> float | None:
        return None

    @property
    def ceiling(self) -> int | None:
        return None

    def on_outcome(
        self,
        outcome: RequestReleaseOutcome,
        *,
        now: float,
        limit_at_grant: int,
        in_flight: int,
        retry_after_seconds: float | None,
        latency_seconds: float | None = None,
    ) -> None:
        return None

    def advance(self, now: float) -> float | None:
        return None


def static_limits(resource: RequestResourceKey, static_cap: int) -> RequestLimit:
    """The default :class:`RequestLimitFactory`: every domain gets the static cap."""
    return StaticRequestLimit(static_cap)


# --------------------------------------------------------------------------------------------
# Pure algorithms
# --------------------------------------------------------------------------------------------


class LimitChange(enum.Enum):
    """A state transition of a limit (the source of the request_limit_* events)."""

    DECREASED = "decreased"
    INCREASED = "increased"
    SOFT_CEILING_RECOVERED = "soft_ceiling_recovered"
    FULLY_RECOVERED = "fully_recovered"


@dataclass(frozen=True, slots=True, kw_only=True)
class AimdState:
    limit: int
    successes: int = 0
    ceiling: int | None = None
    rate_limited_at: float | None = None
    hold_seconds: float | None = None  # None: ``ceiling_hold_seconds``
    refused_at: int | None = None  # concurrency of the last refusal, before the ceiling's bounds


@dataclass(frozen=True, slots=True, kw_only=True)
class AimdLimit:
    """Additive increase / multiplicative decrease; see the module docstring for the formula."""

    max_limit: int
    decrease_factor: float = 0.75
    successes_until_increase: int = 25
    increase_step: int = 1
    usage_ratio: float = 0.8
    ceiling_caution: int = 4
    ceiling_hold_seconds: float = 30.0
    ceiling_hold_max_seconds: float = 600.0

    def __post_init__(self) -> None:
        if not 0 <= self.ceiling_hold_seconds <= self.ceiling_hold_max_seconds:
            raise EngineError(
                "AimdLimit needs 0 <= ceiling_hold_seconds <= ceiling_hold_max_seconds, got "
                f"{self.ceiling_hold_seconds} and {self.ceiling_hold_max_seconds}"
            )
        if self.max_limit < 1:
            raise EngineError(f"AimdLimit.max_limit must be >= 1, got {self.max_limit}")
        if not 0.0 < self.decrease_factor < 1.0:
            raise EngineError(
                f"AimdLimit.decrease_factor must be in (0, 1), got {self.decrease_factor}"
            )
        if self.successes_until_increase < 1 or self.increase_step < 1:
            raise EngineError(
                "AimdLimit needs successes_until_increase >= 1 and increase_step >= 1, got "
                f"{self.successes_until_increase} and {self.increase_step}"
            )
        if not 0.0 <= self.usage_ratio <= 1.0 or self.ceiling_caution < 1:
            raise EngineError(
                "AimdLimit needs 0 <= usage_ratio <= 1 and ceiling_caution >= 1, got "
                f"{self.usage_ratio} and {self.ceiling_caution}"
            )

    def on_rate_limited(
        self,
        state: AimdState,
        *,
        limit_at_grant: int,
        now: float | None = None,
        in_flight: int | None = None,
    ) -> AimdState:
        """``in_flight``: requests in flight when this refusal arrived, itself included; without
        it the ceiling is the limit in force."""
        if limit_at_grant > state.limit:
            # This burst already decreased the limit. Another refusal of it was in flight when
            # the first one arrived: the provider served one fewer than counted then.
            if in_flight is None or state.refused_at is None or state.refused_at <= 1:
                return state
            refused_at = state.refused_at - 1
            # Once the refusals show the provider served fewer at once than the decreased limit,
            # the limit comes down to what it served: kept higher, the next burst is refused too
            # (another cooldown) before it gets there. Never below half the limit the burst was
            # granted at: a provider refusing everything (an exhausted rate window, say) halves
            # the limit per burst instead of sending it to 1.
            floor = max(1, limit_at_grant // 2)
            limit = max(min(floor, state.limit), min(state.limit, refused_at - 1))
            return replace(
                state,
                limit=limit,
                refused_at=refused_at,
                ceiling=max(limit + 1, refused_at),
            )
        limit = max(1, math.floor(state.limit * self.decrease_factor))
        refused_at = state.limit if in_flight is None else max(1, min(state.limit, in_flight))
        hold = self.ceiling_hold_seconds
        known = state.refused_at if state.refused_at is not None else state.ceiling
        if known is not None and state.limit >= known:
            # Refused again at or above a concurrency refused before: probe less often.
            hold = min(self.ceiling_hold_max_seconds, 2 * (state.hold_seconds or hold))
        return AimdState(
            limit=limit,
            successes=0,
            # At or below the new limit a ceiling would say nothing about the next step up.
            ceiling=min(state.limit, max(limit + 1, refused_at)),
            rate_limited_at=now,
            hold_seconds=hold,
            refused_at=refused_at,
        )

    def on_success(
        self, state: AimdState, *, in_flight: int, now: float | None = None
    ) -> AimdState:
        """``in_flight`` counts the requests in flight while this one was, itself included.

        Without ``now`` (or without a recorded rate-limit time) the ceiling hold is skipped.
        """
        limit = state.limit
        if limit >= self.max_limit or in_flight < math.ceil(limit * self.usage_ratio):
            return state  # growth only while the limit is actually used
        needed = self.successes_until_increase
        ceiling = state.ceiling
        if ceiling is not None and limit + self.increase_step >= ceiling:
            held_since = state.rate_limited_at
            hold = self.ceiling_hold_seconds if state.hold_seconds is None else state.hold_seconds
            if held_since is not None and now is not None and now - held_since < hold:
                return state  # stay below the last rate-limit point for a while
        if ceiling is not None and limit + self.increase_step > ceiling:
            needed *= self.ceiling_caution
        successes = state.successes + 1
        if successes < needed:
            return replace(state, successes=successes)
        return replace(state, limit=min(self.max_limit, limit + self.increase_step), successes=0)

    def change(self, before: AimdState, after: AimdState) -> LimitChange | None:
        """The transition from ``before`` to ``after``, the most specific one first."""
        if after.limit < before.limit:
            return LimitChange.DECREASED
        if after.limit > before.limit:
            if after.limit >= self.max_limit:
                return LimitChange.FULLY_RECOVERED
            ceiling = after.ceiling
            if ceiling is not None and before.limit < ceiling <= after.limit:
                return LimitChange.SOFT_CEILING_RECOVERED
            return LimitChange.INCREASED
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class StartupRamp:
    """Linear ramp from 1 to ``target`` over ``ramp_seconds`` starting at ``start_at``."""

    target: int
    ramp_seconds: float
    start_at: float

    def limit_at(self, now: float) -> int:
        if self.ramp_seconds <= 0 or self.target <= 1 or now >= self.start_at + self.ramp_seconds:
            return self.target
        share = max(0.0, now - self.start_at) / self.ramp_seconds
        return min(self.target, 1 + math.floor((self.target - 1) * share))

    def next_step_at(self, now: float) -> float | None:
        """When ``limit_at`` next grows, or ``None`` once the ramp is done."""
        current = self.limit_at(now)
        if current >= self.target:
            return None
        at = self.start_at + self.ramp_seconds * current / (self.target - 1)
        # Rounding may put the computed instant a hair before the step; the step must be real.
        while at <= now or self.limit_at(at) <= current:
            at = math.nextafter(at, math.inf)
        return at


@dataclass(frozen=True, slots=True, kw_only=True)
class CooldownPolicy:
    """How long a domain pauses after a rate limit."""

    default_seconds: float = 2.0
    max_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.default_seconds < 0 or self.max_seconds < 0:
            raise EngineError(
                "CooldownPolicy needs default_seconds >= 0 and max_seconds >= 0, got "
                f"{self.default_seconds} and {self.max_seconds}"
            )

    def until(self, now: float, retry_after_seconds: float | None) -> float:
        if retry_after_seconds is None or retry_after_seconds < 0:
            return now + min(self.default_seconds, self.max_seconds)
        return now + min(retry_after_seconds, self.max_seconds)


@dataclass(frozen=True, slots=True, kw_only=True)
class GradientState:
    limit: float
    short_latency_seconds: float | None = None
    long_latency_seconds: float | None = None
    baseline_latency_seconds: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GradientLimit:
    """Delay-based limit (Gradient2 style) for servers that queue instead of returning 429.

    Short- and long-term latencies are exponential moving averages (``short_alpha``,
    ``long_alpha``); the baseline is ``min(sample, baseline + baseline_drift * (long -
    baseline))``, a no-load estimate that follows lasting changes slowly. Latencies below
    ``floor_seconds`` count as the floor.
    ``gradient = clamp(tolerance * baseline / short, 0.5, 1)``;
    ``new = gradient * limit + sqrt(limit)`` (the queue allowance), taken with weight
    ``smoothing / limit`` per sample (about ``smoothing`` per round trip of ``limit`` requests)
    and kept in ``[1, max_limit]``. With steady latency the limit grows by about
    ``smoothing * sqrt(limit)`` per round trip; with inflated latency it shrinks toward what
    the server serves.
    """

    max_limit: int
    tolerance: float = 1.5
    short_alpha: float = 0.2
    long_alpha: float = 0.02
    smoothing: float = 0.5
    baseline_drift: float = 0.00002
    floor_seconds: float = 0.001

    def on_sample(self, state: GradientState, *, latency_seconds: float) -> GradientState:
        prior_long = state.long_latency_seconds
        short = state.short_latency_seconds
        long = state.long_latency_seconds
        short = (
            latency_seconds
            if short is None
            else short + self.short_alpha * (latency_seconds - short)
        )
        long = (
            latency_seconds if long is None else long + self.long_alpha * (latency_seconds - long)
        )
        baseline = state.baseline_latency_seconds
        if baseline is None:
            baseline = latency_seconds if prior_long is None else prior_long
        baseline = min(latency_seconds, baseline + self.baseline_drift * (long - baseline))
        ratio = max(baseline, self.floor_seconds) / max(short, self.floor_seconds)
        gradient = max(0.5, min(1.0, self.tolerance * ratio))
        target = gradient * state.limit + math.sqrt(state.limit)
        # One sample per request: with ``limit`` requests per round trip, each sample carries
        # 1/limit of the ``smoothing`` step, so the limit moves about once per round trip.
        weight = self.smoothing / max(1.0, state.limit)
        limit = state.limit + (target - state.limit) * weight
        limit = max(1.0, min(float(self.max_limit), limit))
        return GradientState(
            limit=limit,
            short_latency_seconds=short,
            long_latency_seconds=long,
            baseline_latency_seconds=baseline,
        )


# --------------------------------------------------------------------------------------------
# The composed adaptive limit
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptiveLimitSettings:
    """Tuning of the adaptive limit of every domain (SPEC §6.3)."""

    initial_limit: int | None = None  # None: the effective max
    max_limit: int | None = None  # optional clamp below the static cap
    decrease_factor: float = 0.75
    successes_until_increase: int = 25
    increase_step: int = 1
    usage_ratio: float = 0.8
    ceiling_caution: int = 4
    ceiling_hold_seconds: float = 30.0
    ceiling_hold_max_seconds: float = 600.0  # never below ceiling_hold_seconds
    startup_ramp_seconds: float = 0.0
    default_cooldown_seconds: float = 2.0
    max_cooldown_seconds: float = 60.0
    latency_gradient: bool = False


class AdaptiveRequestLimit:
    """AIMD + startup ramp + cooldown (+ an optional gradient cap) for one domain.

    Pure bookkeeping driven by ``now`` arguments. The limit in force is
    ``min(aimd limit, ramp limit while ramping, gradient limit when enabled)``.
    """

    __slots__ = (
        "_aimd",
        "_blocked_until",
        "_changes",
        "_cooldown",
        "_gradient",
        "_gradient_state",
        "_ramp",
        "_ramp_seconds",
        "_state",
        "effective_max",
    )

    def __init__(self, settings: AdaptiveLimitSettings, static_cap: int) -> None:
        effective_max = static_cap
        if settings.max_limit is not None:
            effective_max = max(1, min(effective_max, settings.max_limit))
        self.effective_max = effective_max
        initial = effective_max if settings.initial_limit is None else settings.initial_limit
        initial = max(1, min(effective_max, initial))
        self._aimd = AimdLimit(
            max_limit=effective_max,
            decrease_factor=settings.decrease_factor,
            successes_until_increase=settings.successes_until_increase,
            increase_step=settings.increase_step,
            usage_ratio=settings.usage_ratio,
            ceiling_caution=settings.ceiling_caution,
            ceiling_hold_seconds=settings.ceiling_hold_seconds,
            ceiling_hold_max_seconds=max(
                settings.ceiling_hold_max_seconds, settings.ceiling_hold_seconds
            ),
        )
        self._cooldown = CooldownPolicy(
            default_seconds=settings.default_cooldown_seconds,
            max_seconds=settings.max_cooldown_seconds,
        )
        self._state = AimdState(limit=initial)
        self._ramp_seconds = settings.startup_ramp_seconds
        self._ramp: StartupRamp | None = None  # starts at the first advance()
        self._blocked_until: float | None = None
        self._gradient = (
            GradientLimit(max_limit=effective_max) if settings.latency_gradient else None
        )
        # A quarter of the initial limit: the first samples see a server that is not queueing.
        self._gradient_state = GradientState(limit=float(max(1, initial // 4)))
        self._changes = dict.fromkeys(LimitChange, 0)

    @property
    def limit(self) -> int:
        limit = self._state.limit
        if self._gradient is not None:
            limit = min(limit, max(1, math.floor(self._gradient_state.limit)))
        return limit

    def _ramped(self, now: float) -> None:
        ramp = self._ramp
        if ramp is None:
            return
        # While ramping, the AIMD limit follows the ramp; it never exceeds the target. The
        # last step applies the target before the ramp ends.
        self._state = replace(self._state, limit=ramp.limit_at(now))
        if ramp.next_step_at(now) is None:
            self._ramp = None

    @property
    def blocked_until(self) -> float | None:
        return self._blocked_until

    @property
    def ceiling(self) -> int | None:
        return self._state.ceiling

    @property
    def changes(self) -> dict[LimitChange, int]:
        return dict(self._changes)

    @property
    def ramping(self) -> bool:
        """True while the startup ramp sets the limit."""
        return self._ramp is not None

    @property
    def latency_bound(self) -> bool:
        """True when the latency gradient, not AIMD, sets the limit in force."""
        return self._gradient is not None and self.limit < self._state.limit

    def advance(self, now: float) -> float | None:
        if self._ramp_seconds > 0:
            target = self._state.limit
            self._ramp = StartupRamp(target=target, ramp_seconds=self._ramp_seconds, start_at=now)
            self._ramp_seconds = 0.0  # one ramp per domain
        self._ramped(now)
        if self._blocked_until is not None and now >= self._blocked_until:
            self._blocked_until = None
        deadlines = [t for t in (self._blocked_until, self._next_ramp(now)) if t is not None]
        return min(deadlines) if deadlines else None

    def _next_ramp(self, now: float) -> float | None:
        return None if self._ramp is None else self._ramp.next_step_at(now)

    def on_outcome(
        self,
        outcome: RequestReleaseOutcome,
        *,
        now: float,
        limit_at_grant: int,
        in_flight: int,
        retry_after_seconds: float | None,
        latency_seconds: float | None = None,
    ) -> None:
        before = self._state
        self._ramped(now)
        if outcome in PRESSURE_OUTCOMES:
            self._ramp = None  # a rate limit aborts the startup ramp
            self._ramp_seconds = 0.0
            self._state = self._aimd.on_rate_limited(
                self._state, limit_at_grant=limit_at_grant, now=now, in_flight=in_flight
            )
            until = self._cooldown.until(now, retry_after_seconds)
            if self._blocked_until is None or until > self._blocked_until:
                self._blocked_until = until
        elif outcome is RequestReleaseOutcome.SUCCESS:
            cooling = self._blocked_until is not None and now < self._blocked_until
            if not cooling and self._ramp is None:
                self._state = self._aimd.on_success(self._state, in_flight=in_flight, now=now)
            if self._gradient is not None and latency_seconds is not None:
                self._gradient_state = self._gradient.on_sample(
                    self._gradient_state, latency_seconds=latency_seconds
                )
        change = self._aimd.change(before, self._state)
        if change is not None and self._ramp is None:
            self._changes[change] += 1


def adaptive_limits(
    settings: AdaptiveLimitSettings,
    *,
    per_model: Mapping[ProviderModelKey, AdaptiveLimitSettings] | None = None,
) -> RequestLimitFactory:
    """A :class:`RequestLimitFactory` giving every domain an :class:`AdaptiveRequestLimit`.

    ``per_model`` replaces ``settings`` for the domains of the provider/models it names (the
    opt-in latency gradient of one self-hosted model, for instance).
    """
    overrides = dict(per_model or {})

    def factory(resource: RequestResourceKey, static_cap: int) -> RequestLimit:
        chosen = overrides.get(resource.provider_model, settings)
        return AdaptiveRequestLimit(chosen, static_cap)

    return factory
