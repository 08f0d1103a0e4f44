"""The limit a request domain is admitted against, kept apart from the machinery enforcing it.

The admission controller reads ``limit`` and ``blocked_until`` when it decides whether a request
may go, reports every release to ``on_outcome`` and calls ``advance(now)`` when a deadline the
limit asked for is due; it never computes a limit itself. The algorithms (SPEC §6.3) are small
pure classes that take ``now`` and samples and return a new state:

- :class:`AimdLimit`: a limit that follows a changing provider both ways, in round trips (one
  round trip is about ``limit`` successes while the limit is in use). Its phases:

  * ``startup``: slow start. The limit begins at half the cap and a :class:`StartupRamp`
    spreads the other half over ``slow_start_seconds`` (50 ms); the first refusal stops it. A
    refusal comes back in about a network round trip, far sooner than an answer, so a cap above
    the provider's true capacity earns a refusal or two, not one per excess request, and a right
    cap costs a few milliseconds. From an explicit ``initial_limit`` below the cap the limit
    grows by one per success instead (doubling per round trip).
  * ``recovery``: after a decrease, one per success (doubling per round trip) back up to
    ``served``, the highest concurrency recently served without refusal.
  * ``hold``: at ``served``, wait ``hold_round_trips`` round trips (at most
    ``max_hold_seconds``) before probing: a bound in round trips or seconds, never minutes.
  * ``probe``: above ``served``, ``step`` more per round trip, the step doubling every round
    trip without refusal (1, 2, 4, ...), so capacity that came back is found within a few
    round trips, while a provider that is still full costs one refusal per probe.

  A refusal is evidence about that moment: the provider served ``in_flight - 1``. Refused while
  probing or starting (above ``served``), the limit goes back to what was served, without a
  multiplicative cut or a domain cooldown (the refused request is retried after its own
  Retry-After), and the next hold doubles while probes keep being refused at the same level (up
  to ``max_hold_round_trips``). Refused at or below ``served`` (capacity shrank, a window ran
  out): ``limit = max(1, floor(limit * decrease_factor))``, ``served`` drops to what the refusal
  shows, the domain cools down and recovers from there; but a refusal *isolated* among answers
  (a slot taken for a moment, by another client or by a request the provider still works on
  after the client gave up) only brings the limit down to what was served then, and
  :class:`AdaptiveRequestLimit` cools down only for a refusal with no answer since the last.
  Further refusals of one burst (leases granted at a higher limit than the current one) do not
  decrease again; each one shows the provider served one fewer than counted, and once that is
  below the limit the limit follows it, but not below half the limit the burst was granted at
  (64 requests against a provider that serves 32 end the burst at 32, not after a cooldown per
  multiplicative step). Growth only happens while the limit is in use (``in_flight >=
  ceil(limit * usage_ratio)``).
- :class:`StartupRamp`: from ``first`` (1, or half the cap for slow start) to the target
  linearly over ``ramp_seconds``;
  ``limit_at(now) = first + floor((target - first) * (now - start) / ramp_seconds)``.
- :class:`CooldownPolicy`: ``now + min(retry_after, max_seconds)``; without a Retry-After it
  learns: ``default_seconds * 2 ** (refusals in a row)``, up to ``max_seconds``, back to
  ``default_seconds`` after a success (short first, longer when refusals repeat).
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
        in_flight_at_grant: int | None = None,
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
        in_flight_at_grant: int | None = None,
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


class LimitPhase(enum.Enum):
    """Where an :class:`AimdLimit` is in its cycle (see the module docstring)."""

    STARTUP = "startup"
    RECOVERY = "recovery"
    HOLD = "hold"
    PROBE = "probe"


class LimitReason(enum.Enum):
    """Why the last change of an :class:`AimdLimit` happened."""

    SLOW_START = "slow_start"
    RECOVERY = "recovery"
    PROBE = "probe"
    PROBE_REFUSED = "probe_refused"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True, slots=True, kw_only=True)
class AimdState:
    limit: int
    phase: LimitPhase = LimitPhase.STARTUP
    served: int = 0  # highest concurrency recently served without refusal
    step: int = 1  # probe: increase at the end of this round trip
    round_trip_successes: int = 0  # probe: successes of this round trip so far
    hold_until: float | None = None
    hold_round_trips: int = 0  # 0: the limit's initial hold
    refused_at: int | None = None  # concurrency of the last refusal
    # The concurrency last refused, kept above the limit, until a level at or above it is
    # served again (what snapshots call the rate-limit ceiling).
    ceiling: int | None = None
    rate_limited_at: float | None = None
    round_trip_seconds: float | None = None  # moving average of success latency
    reason: LimitReason | None = None  # of the last change of ``limit``
    cooldown: bool = False  # whether the last refusal calls for a domain cooldown


_RTT_ALPHA = 0.2


@dataclass(frozen=True, slots=True, kw_only=True)
class AimdLimit:
    """A limit that decreases on refusals and recovers and probes in round trips; see the
    module docstring for the phases and the formulas."""

    max_limit: int
    decrease_factor: float = 0.75
    usage_ratio: float = 0.8
    hold_round_trips: int = 2
    max_hold_round_trips: int = 8
    max_hold_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.max_limit < 1:
            raise EngineError(f"AimdLimit.max_limit must be >= 1, got {self.max_limit}")
        if not 0.0 < self.decrease_factor < 1.0:
            raise EngineError(
                f"AimdLimit.decrease_factor must be in (0, 1), got {self.decrease_factor}"
            )
        if not 0.0 <= self.usage_ratio <= 1.0:
            raise EngineError(f"AimdLimit needs 0 <= usage_ratio <= 1, got {self.usage_ratio}")
        if not 1 <= self.hold_round_trips <= self.max_hold_round_trips or self.max_hold_seconds < 0:
            raise EngineError(
                "AimdLimit needs 1 <= hold_round_trips <= max_hold_round_trips and "
                f"max_hold_seconds >= 0, got {self.hold_round_trips}, "
                f"{self.max_hold_round_trips} and {self.max_hold_seconds}"
            )

    def initial(self, limit: int) -> AimdState:
        """The state of a limit that starts at ``limit`` and slow-starts from there."""
        limit = max(1, min(self.max_limit, limit))
        phase = LimitPhase.STARTUP if limit < self.max_limit else LimitPhase.HOLD
        return AimdState(limit=limit, phase=phase, hold_round_trips=self.hold_round_trips)

    def _hold_until(self, state: AimdState, now: float | None, round_trips: int) -> float | None:
        if now is None:
            return None
        rtt = state.round_trip_seconds or 0.0
        return now + min(self.max_hold_seconds, round_trips * rtt)

    def on_rate_limited(
        self,
        state: AimdState,
        *,
        limit_at_grant: int,
        now: float | None = None,
        in_flight: int | None = None,
        isolated: bool = False,
    ) -> AimdState:
        """``in_flight``: requests in flight when this refusal arrived, itself included; without
        it the refusal is taken to be at the limit in force. ``isolated``: answers came since
        the last refusal, so this one shows a level just above what the provider serves now,
        not pressure: the limit comes down to what was served, not by the factor."""
        if limit_at_grant > state.limit:
            # This burst already decreased the limit. Another refusal of it was in flight when
            # the first one arrived: the provider served one fewer than counted then.
            if in_flight is None or state.refused_at is None or state.refused_at <= 1:
                return replace(state, cooldown=False)
            refused_at = state.refused_at - 1
            # Once the refusals show the provider served fewer at once than the decreased limit,
            # the limit comes down to what it served, but never below half the limit the burst
            # was granted at: a provider refusing everything (an exhausted window, say) halves
            # the limit per burst instead of sending it to 1.
            floor = max(1, limit_at_grant // 2)
            limit = max(min(floor, state.limit), min(state.limit, refused_at - 1))
            return replace(
                state,
                limit=limit,
                refused_at=refused_at,
                ceiling=max(limit + 1, refused_at),
                served=min(state.served, limit),
                reason=LimitReason.RATE_LIMITED if limit < state.limit else state.reason,
                cooldown=False,
            )
        refused_at = state.limit if in_flight is None else max(1, min(state.limit, in_flight))
        served_then = refused_at - 1
        probing = state.phase in (LimitPhase.STARTUP, LimitPhase.PROBE)
        if probing and served_then >= max(1, state.served):
            # A probe found the edge: go back to what was served and hold there. Refused again
            # at the level refused before, the next hold is longer.
            again = state.refused_at is not None and refused_at <= state.refused_at + 1
            rounds = state.hold_round_trips or self.hold_round_trips
            rounds = min(self.max_hold_round_trips, 2 * rounds) if again else self.hold_round_trips
            return replace(
                state,
                limit=served_then,
                phase=LimitPhase.HOLD,
                served=served_then,
                step=1,
                round_trip_successes=0,
                hold_until=self._hold_until(state, now, rounds),
                hold_round_trips=rounds,
                refused_at=refused_at,
                ceiling=refused_at,
                rate_limited_at=now,
                reason=LimitReason.PROBE_REFUSED,
                cooldown=False,
            )
        limit = max(1, math.floor(state.limit * self.decrease_factor))
        if isolated:
            limit = max(limit, min(state.limit, served_then))
        served = max(limit, min(state.served, served_then)) if state.served else limit
        return replace(
            state,
            limit=limit,
            phase=LimitPhase.RECOVERY if limit < served else LimitPhase.HOLD,
            served=served,
            step=1,
            round_trip_successes=0,
            hold_until=self._hold_until(state, now, self.hold_round_trips),
            hold_round_trips=self.hold_round_trips,
            refused_at=refused_at,
            ceiling=max(limit + 1, refused_at),
            rate_limited_at=now,
            reason=LimitReason.RATE_LIMITED,
            cooldown=True,
        )

    def on_success(
        self,
        state: AimdState,
        *,
        in_flight: int,
        now: float | None = None,
        latency_seconds: float | None = None,
        served_at: int | None = None,
    ) -> AimdState:
        """``in_flight``: requests in flight as this one is answered, itself included (is the
        limit in use); ``served_at``: requests in flight when it was sent, itself included (the
        concurrency the provider served; defaults to ``in_flight``).

        Without ``now`` a hold ends at the next success. The round trip is measured while the
        limit is in use below its max (where holds are timed), so an idle or capped limit keeps
        its state object: no allocation per success on the common path."""
        went_at = in_flight if served_at is None else served_at
        served = max(state.served, min(went_at, state.limit))
        ceiling = state.ceiling
        if ceiling is not None and served >= ceiling:
            ceiling = None  # the level refused before is served again
        limit = state.limit
        if limit >= self.max_limit or in_flight < math.ceil(limit * self.usage_ratio):
            # Growth only while the limit is actually used.
            if served == state.served and ceiling == state.ceiling:
                return state
            return replace(state, served=served, ceiling=ceiling)
        rtt = state.round_trip_seconds
        if latency_seconds is not None:
            rtt = latency_seconds if rtt is None else rtt + _RTT_ALPHA * (latency_seconds - rtt)
        state = replace(state, round_trip_seconds=rtt, served=served, ceiling=ceiling)
        phase = state.phase
        if phase is LimitPhase.STARTUP:
            return self._grown(state, limit + 1, LimitReason.SLOW_START, now)
        if phase is LimitPhase.RECOVERY:
            return self._grown(state, min(limit + 1, served), LimitReason.RECOVERY, now)
        if phase is LimitPhase.HOLD:
            if state.hold_until is None or now is None or now >= state.hold_until:
                return replace(state, phase=LimitPhase.PROBE, step=1, round_trip_successes=0)
            return state
        # Probing: ``step`` more at the end of each round trip of ``limit`` successes; the step
        # doubles per round trip without refusal.
        successes = state.round_trip_successes + 1
        if successes < limit:
            return replace(state, round_trip_successes=successes)
        state = replace(state, round_trip_successes=0, step=2 * state.step)
        return self._grown(state, limit + state.step // 2, LimitReason.PROBE, now)

    def _grown(
        self, state: AimdState, limit: int, reason: LimitReason, now: float | None
    ) -> AimdState:
        limit = min(self.max_limit, limit)
        if limit == state.limit:
            if state.phase is LimitPhase.RECOVERY:
                return replace(
                    state,
                    phase=LimitPhase.HOLD,
                    hold_until=self._hold_until(state, now, self.hold_round_trips),
                )
            return state
        phase = state.phase
        if limit >= self.max_limit:
            phase = LimitPhase.HOLD
        elif phase is LimitPhase.RECOVERY and limit >= state.served:
            phase = LimitPhase.HOLD
            state = replace(state, hold_until=self._hold_until(state, now, self.hold_round_trips))
        hold_round_trips = state.hold_round_trips
        if state.refused_at is not None and limit >= state.refused_at:
            hold_round_trips = self.hold_round_trips  # past the last refusal: start afresh
        return replace(
            state, limit=limit, phase=phase, reason=reason, hold_round_trips=hold_round_trips
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class StartupRamp:
    """Linear ramp from ``first`` (1 unless given) to ``target`` over ``ramp_seconds`` starting
    at ``start_at``: ``first + floor((target - first) * elapsed / ramp_seconds)``."""

    target: int
    ramp_seconds: float
    start_at: float
    first: int = 1

    def limit_at(self, now: float) -> int:
        first = min(self.first, self.target)
        if (
            self.ramp_seconds <= 0
            or self.target <= first
            or now >= self.start_at + self.ramp_seconds
        ):
            return self.target
        share = max(0.0, now - self.start_at) / self.ramp_seconds
        return min(self.target, first + math.floor((self.target - first) * share))

    def next_step_at(self, now: float) -> float | None:
        """When ``limit_at`` next grows, or ``None`` once the ramp is done."""
        current = self.limit_at(now)
        if current >= self.target:
            return None
        first = min(self.first, self.target)
        at = self.start_at + self.ramp_seconds * (current + 1 - first) / (self.target - first)
        # Rounding may put the computed instant a hair before the step; the step must be real.
        while at <= now or self.limit_at(at) <= current:
            at = math.nextafter(at, math.inf)
        return at


@dataclass(frozen=True, slots=True, kw_only=True)
class CooldownPolicy:
    """How long a domain pauses after a refusal that calls for it.

    A Retry-After is taken as given (up to ``max_seconds``). Without one the pause is learned:
    ``default_seconds * 2 ** streak`` where ``streak`` counts such pauses since the last
    success, up to ``max_seconds``.
    """

    default_seconds: float = 0.5
    max_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.default_seconds < 0 or self.max_seconds < 0:
            raise EngineError(
                "CooldownPolicy needs default_seconds >= 0 and max_seconds >= 0, got "
                f"{self.default_seconds} and {self.max_seconds}"
            )

    def seconds(self, retry_after_seconds: float | None, streak: int) -> float:
        """The pause for a refusal; ``streak``: pauses without Retry-After since a success."""
        if retry_after_seconds is not None and retry_after_seconds >= 0:
            return min(retry_after_seconds, self.max_seconds)
        return min(self.default_seconds * 2.0 ** min(streak, 32), self.max_seconds)


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
    """Tuning of the adaptive limit of every domain (SPEC §6.3, §6.6)."""

    initial_limit: int | None = None  # None: half the effective max with slow start, else it
    max_limit: int | None = None  # optional clamp below the static cap
    slow_start: bool = False  # on in a run by default (run.request_admission.slow_start)
    slow_start_seconds: float = 0.05
    decrease_factor: float = 0.75
    usage_ratio: float = 0.8
    hold_round_trips: int = 2
    max_hold_round_trips: int = 8
    max_hold_seconds: float = 10.0
    startup_ramp_seconds: float = 0.0
    default_cooldown_seconds: float = 0.5
    max_cooldown_seconds: float = 60.0
    latency_gradient: bool = False


class AdaptiveRequestLimit:
    """AIMD + startup ramp + cooldown (+ an optional gradient cap) for one domain.

    Pure bookkeeping driven by ``now`` arguments. The limit in force is
    ``min(aimd limit, ramp limit while ramping, gradient limit when enabled)``.
    """

    __slots__ = (
        "_aimd",
        "_answered_since_refusal",
        "_blocked_until",
        "_cooldown",
        "_cooldown_streak",
        "_gradient",
        "_gradient_state",
        "_ramp",
        "_ramp_first",
        "_ramp_seconds",
        "_ramp_target",
        "_state",
        "effective_max",
    )

    def __init__(self, settings: AdaptiveLimitSettings, static_cap: int) -> None:
        effective_max = static_cap
        if settings.max_limit is not None:
            effective_max = max(1, min(effective_max, settings.max_limit))
        self.effective_max = effective_max
        if settings.initial_limit is not None:
            initial = settings.initial_limit
        elif settings.slow_start and settings.startup_ramp_seconds <= 0:
            initial = -(-effective_max // 2)
        else:
            initial = effective_max
        initial = max(1, min(effective_max, initial))
        # The ramp starts at the first advance(): from 1 to the initial limit over
        # startup_ramp_seconds, or with slow start from the initial limit to the max over
        # slow_start_seconds (stopped by the first refusal).
        self._ramp_first = 1
        self._ramp_target = initial
        self._ramp_seconds = settings.startup_ramp_seconds
        if settings.slow_start and self._ramp_seconds <= 0 and initial < effective_max:
            self._ramp_first, self._ramp_target = initial, effective_max
            self._ramp_seconds = settings.slow_start_seconds
        self._aimd = AimdLimit(
            max_limit=effective_max,
            decrease_factor=settings.decrease_factor,
            usage_ratio=settings.usage_ratio,
            hold_round_trips=settings.hold_round_trips,
            max_hold_round_trips=max(settings.max_hold_round_trips, settings.hold_round_trips),
            max_hold_seconds=settings.max_hold_seconds,
        )
        self._cooldown = CooldownPolicy(
            default_seconds=settings.default_cooldown_seconds,
            max_seconds=settings.max_cooldown_seconds,
        )
        self._cooldown_streak = 0
        self._answered_since_refusal = False  # an answer came since the last refusal
        self._state = self._aimd.initial(initial)
        self._ramp: StartupRamp | None = None
        self._blocked_until: float | None = None
        self._gradient = (
            GradientLimit(max_limit=effective_max) if settings.latency_gradient else None
        )
        # A quarter of the initial limit: the first samples see a server that is not queueing.
        self._gradient_state = GradientState(limit=float(max(1, initial // 4)))

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
        # last step applies the target before the ramp ends. A ramp is a start: a refusal
        # during it goes back to what was served.
        limit = ramp.limit_at(now)
        phase = LimitPhase.STARTUP
        if ramp.next_step_at(now) is None:
            self._ramp = None
            if limit >= self._aimd.max_limit:
                phase = LimitPhase.HOLD
        self._state = replace(self._state, limit=limit, phase=phase)

    @property
    def blocked_until(self) -> float | None:
        return self._blocked_until

    @property
    def ceiling(self) -> int | None:
        return self._state.ceiling

    @property
    def phase(self) -> LimitPhase:
        return self._state.phase

    @property
    def reason(self) -> LimitReason | None:
        """Why the AIMD limit last changed (None before its first change)."""
        return self._state.reason

    @property
    def served(self) -> int:
        """The highest concurrency recently served without refusal."""
        return self._state.served

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
            self._ramp = StartupRamp(
                target=self._ramp_target,
                ramp_seconds=self._ramp_seconds,
                start_at=now,
                first=self._ramp_first,
            )
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
        in_flight_at_grant: int | None = None,
    ) -> None:
        """``in_flight``: the domain's requests in flight at this release (this one included);
        ``in_flight_at_grant``: at this request's grant, so a success shows the concurrency the
        provider served (defaults to ``in_flight``)."""
        went_at = in_flight if in_flight_at_grant is None else in_flight_at_grant
        self._ramped(now)
        if outcome in PRESSURE_OUTCOMES:
            self._ramp = None  # a rate limit aborts the startup ramp
            self._ramp_seconds = 0.0
            # A refusal comes back at once: what is in flight now is what the provider held.
            # One refusal among answers (a slot another client, or a request the provider still
            # works on after the client gave up, took for a moment) is met by the decrease
            # alone; a refusal with no answer since the last one cools the domain down.
            isolated = self._answered_since_refusal
            self._answered_since_refusal = False
            self._state = self._aimd.on_rate_limited(
                self._state,
                limit_at_grant=limit_at_grant,
                now=now,
                in_flight=in_flight,
                isolated=isolated,
            )
            if self._state.cooldown and not isolated:
                pause = self._cooldown.seconds(retry_after_seconds, self._cooldown_streak)
                if retry_after_seconds is None:
                    self._cooldown_streak += 1
                until = now + pause
                if self._blocked_until is None or until > self._blocked_until:
                    self._blocked_until = until
        elif outcome is RequestReleaseOutcome.SUCCESS:
            self._answered_since_refusal = True
            cooling = self._blocked_until is not None and now < self._blocked_until
            if not cooling:
                self._cooldown_streak = 0
                if self._ramp is None:
                    self._state = self._aimd.on_success(
                        self._state,
                        in_flight=in_flight,
                        now=now,
                        latency_seconds=latency_seconds,
                        served_at=went_at,
                    )
            if self._gradient is not None and latency_seconds is not None:
                self._gradient_state = self._gradient.on_sample(
                    self._gradient_state, latency_seconds=latency_seconds
                )


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
