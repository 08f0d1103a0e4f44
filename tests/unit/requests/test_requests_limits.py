"""Pure tests of the limit algorithms: one behaviour per test, time passed in explicitly.

A round trip is simulated as ``limit`` successes with the limit fully in use, each taking
``RTT`` seconds of latency; the clock moves one ``RTT`` per round trip.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway.errors import EngineError
from sluiceway.requests.limits import (
    AdaptiveLimitSettings,
    AdaptiveRequestLimit,
    AimdLimit,
    AimdState,
    CooldownPolicy,
    GradientLimit,
    GradientState,
    LimitPhase,
    LimitReason,
    StartupRamp,
)
from sluiceway.requests.outcomes import RequestReleaseOutcome

OK = RequestReleaseOutcome.SUCCESS
LIMITED = RequestReleaseOutcome.RATE_LIMITED
RTT = 0.2
AIMD = AimdLimit(max_limit=32)


def _round_trip(aimd: AimdLimit, state: AimdState, now: float) -> AimdState:
    """One round trip: ``limit`` successes at full use, all answered by ``now``."""
    for _ in range(state.limit):
        state = aimd.on_success(state, in_flight=state.limit, now=now, latency_seconds=RTT)
    return state


def _round_trips(aimd: AimdLimit, state: AimdState, now: float, count: int) -> AimdState:
    for n in range(count):
        state = _round_trip(aimd, state, now + n * RTT)
    return state


# -- slow start ------------------------------------------------------------------------------


def test_slow_start_doubles_the_limit_per_round_trip() -> None:
    state = AIMD.initial(4)
    assert state.phase is LimitPhase.STARTUP
    limits = []
    for n in range(3):
        state = _round_trip(AIMD, state, n * RTT)
        limits.append(state.limit)
    assert limits == [8, 16, 32]
    assert state.reason is LimitReason.SLOW_START


def test_a_limit_starting_at_the_cap_does_not_slow_start() -> None:
    assert AIMD.initial(32).phase is LimitPhase.HOLD


def test_a_refusal_while_starting_goes_back_to_what_was_served_without_a_cooldown() -> None:
    state = replace(AIMD.initial(16), limit=33)
    after = AIMD.on_rate_limited(state, limit_at_grant=33, now=1.0, in_flight=33)
    assert (after.limit, after.served, after.phase) == (32, 32, LimitPhase.HOLD)
    assert after.reason is LimitReason.PROBE_REFUSED and not after.cooldown


# -- decrease, recovery, hold, probe ---------------------------------------------------------


def _steady(aimd: AimdLimit, limit: int) -> AimdState:
    """A limit that has served ``limit`` at once for a while and holds there."""
    return _round_trips(aimd, AimdState(limit=limit, phase=LimitPhase.HOLD), 0.0, 1)


def test_a_refusal_at_the_served_level_decreases_and_calls_for_a_cooldown() -> None:
    aimd = AimdLimit(max_limit=64)
    state = _steady(aimd, 32)
    after = aimd.on_rate_limited(state, limit_at_grant=32, now=10.0, in_flight=32)
    assert (after.limit, after.served, after.phase) == (24, 31, LimitPhase.RECOVERY)
    assert after.reason is LimitReason.RATE_LIMITED and after.cooldown


def test_after_a_decrease_the_limit_returns_to_the_served_level_within_a_round_trip() -> None:
    aimd = AimdLimit(max_limit=64)
    state = aimd.on_rate_limited(_steady(aimd, 32), limit_at_grant=32, now=10.0, in_flight=32)
    state = _round_trip(aimd, state, 10.2)
    assert (state.limit, state.phase) == (31, LimitPhase.HOLD)
    assert state.reason is LimitReason.RECOVERY


def test_recovery_from_far_below_takes_round_trips_not_thousands_of_successes() -> None:
    aimd = AimdLimit(max_limit=64)
    state = AimdState(limit=2, phase=LimitPhase.RECOVERY, served=60)
    state = _round_trips(aimd, state, 0.0, 5)  # 2, 4, 8, 16, 32, 60
    assert state.limit >= 60 or state.phase is not LimitPhase.RECOVERY
    state = _round_trip(aimd, state, 1.0)
    assert state.limit == 60


def test_the_hold_ends_after_its_round_trips_and_the_limit_probes_above() -> None:
    aimd = AimdLimit(max_limit=64, hold_round_trips=2)
    state = AimdState(
        limit=32, phase=LimitPhase.HOLD, served=32, round_trip_seconds=RTT, hold_until=10.4
    )
    held = aimd.on_success(state, in_flight=32, now=10.3, latency_seconds=RTT)
    assert held.phase is LimitPhase.HOLD and held.limit == 32
    probing = aimd.on_success(held, in_flight=32, now=10.4, latency_seconds=RTT)
    assert probing.phase is LimitPhase.PROBE


def test_the_hold_is_bounded_in_seconds_whatever_the_round_trip() -> None:
    aimd = AimdLimit(max_limit=64, hold_round_trips=8, max_hold_seconds=10.0)
    slow = AimdState(limit=33, phase=LimitPhase.PROBE, served=32, round_trip_seconds=60.0)
    after = aimd.on_rate_limited(slow, limit_at_grant=33, now=100.0, in_flight=33)
    assert after.hold_until == 110.0


def test_probing_grows_faster_every_round_trip_without_refusal() -> None:
    aimd = AimdLimit(max_limit=256)
    state = AimdState(limit=8, phase=LimitPhase.PROBE, served=8, round_trip_seconds=RTT)
    limits = []
    for n in range(5):
        state = _round_trip(aimd, state, n * RTT)
        limits.append(state.limit)
    assert limits == [9, 11, 15, 23, 39]
    assert state.reason is LimitReason.PROBE


def test_a_refused_probe_goes_back_to_what_was_served_and_holds() -> None:
    aimd = AimdLimit(max_limit=64, hold_round_trips=2)
    state = AimdState(limit=10, phase=LimitPhase.PROBE, served=9, round_trip_seconds=RTT)
    after = aimd.on_rate_limited(state, limit_at_grant=10, now=5.0, in_flight=10)
    assert (after.limit, after.served, after.phase, after.hold_until) == (
        9,
        9,
        LimitPhase.HOLD,
        pytest.approx(5.4),
    )
    assert not after.cooldown and after.ceiling == 10


def test_probes_refused_at_the_same_level_hold_longer_up_to_the_maximum() -> None:
    aimd = AimdLimit(max_limit=64, hold_round_trips=2, max_hold_round_trips=8)
    state = AimdState(limit=10, phase=LimitPhase.PROBE, served=9, round_trip_seconds=RTT)
    holds = []
    for n in range(4):
        state = aimd.on_rate_limited(state, limit_at_grant=10, now=float(n), in_flight=10)
        holds.append(state.hold_round_trips)
        state = AimdState(
            limit=10,
            phase=LimitPhase.PROBE,
            served=9,
            round_trip_seconds=RTT,
            refused_at=state.refused_at,
            hold_round_trips=state.hold_round_trips,
        )
    assert holds == [2, 4, 8, 8]


def test_a_probe_past_the_last_refusal_starts_the_hold_afresh() -> None:
    aimd = AimdLimit(max_limit=64, hold_round_trips=2)
    state = AimdState(
        limit=10,
        phase=LimitPhase.PROBE,
        served=10,
        round_trip_seconds=RTT,
        refused_at=10,
        hold_round_trips=8,
    )
    state = _round_trips(aimd, state, 0.0, 2)
    assert state.limit > 10 and state.hold_round_trips == 2


def test_a_refusal_during_recovery_decreases_again_below_what_it_shows() -> None:
    aimd = AimdLimit(max_limit=64)
    state = AimdState(limit=20, phase=LimitPhase.RECOVERY, served=31, round_trip_seconds=RTT)
    after = aimd.on_rate_limited(state, limit_at_grant=20, now=3.0, in_flight=16)
    assert (after.limit, after.served, after.phase) == (15, 15, LimitPhase.HOLD)
    assert after.cooldown


def test_capacity_taken_and_freed_is_found_again_within_seconds() -> None:
    # 32 served, another client takes 24 slots: the limit comes down to 8 and holds there,
    # probing now and then. The other client leaves: the next probe finds the capacity.
    aimd = AimdLimit(max_limit=32)
    state = aimd.on_rate_limited(_steady(aimd, 32), limit_at_grant=32, now=0.0, in_flight=9)
    now = 0.0
    for _ in range(40):  # while the other client stays: every probe above 8 is refused
        now += RTT
        if state.limit > 8:
            state = aimd.on_rate_limited(state, limit_at_grant=state.limit, now=now, in_flight=9)
        else:
            state = _round_trip(aimd, state, now)
    assert state.limit <= 9
    left_at = now
    while state.limit < 29:
        now += RTT
        state = _round_trip(aimd, state, now)
    assert now - left_at <= 3.0  # the hold (at most 8 round trips) and a few probing ones


def test_further_refusals_of_one_burst_bring_the_limit_to_what_was_served() -> None:
    # 64 went out at once against a provider that serves 32: 32 refusals while all are out.
    aimd = AimdLimit(max_limit=64)
    state = aimd.initial(64)
    for refusal in range(32):
        state = aimd.on_rate_limited(state, limit_at_grant=64, now=0.0, in_flight=64 - refusal)
    assert (state.limit, state.refused_at) == (32, 33)


def test_further_refusals_never_halve_below_half_the_burst() -> None:
    aimd = AimdLimit(max_limit=64)
    state = aimd.initial(64)
    for refusal in range(60):
        state = aimd.on_rate_limited(state, limit_at_grant=64, now=0.0, in_flight=64 - refusal)
    assert state.limit == 32


def test_growth_needs_the_limit_in_use() -> None:
    state = AimdState(limit=10, phase=LimitPhase.STARTUP)
    assert AIMD.on_success(state, in_flight=7).limit == 10
    assert AIMD.on_success(state, in_flight=8).limit == 11


def test_the_limit_never_passes_its_max() -> None:
    state = _round_trips(AIMD, AimdState(limit=30, phase=LimitPhase.PROBE, served=30), 0.0, 6)
    assert state.limit == 32


def test_invalid_aimd_settings_are_refused() -> None:
    with pytest.raises(EngineError, match="decrease_factor"):
        AimdLimit(max_limit=4, decrease_factor=1.5)
    with pytest.raises(EngineError, match="hold_round_trips"):
        AimdLimit(max_limit=4, hold_round_trips=9, max_hold_round_trips=8)


# -- properties ------------------------------------------------------------------------------

_events = st.lists(
    st.tuples(
        st.sampled_from(["ok", "refused", "refused_old"]),
        st.integers(min_value=1, max_value=80),
        st.floats(min_value=0.0, max_value=5.0),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(cap=st.integers(min_value=1, max_value=64), events=_events)
def test_the_limit_stays_within_one_and_the_cap(
    cap: int, events: list[tuple[str, int, float]]
) -> None:
    limit = AdaptiveRequestLimit(AdaptiveLimitSettings(slow_start=True), cap)
    now = 0.0
    for kind, in_flight, step in events:
        now += step
        limit.advance(now)
        grant = limit.limit if kind != "refused_old" else limit.limit + 3
        outcome = OK if kind == "ok" else LIMITED
        limit.on_outcome(
            outcome,
            now=now,
            limit_at_grant=grant,
            in_flight=in_flight,
            retry_after_seconds=None,
            latency_seconds=step,
        )
        assert 1 <= limit.limit <= cap


@settings(max_examples=200, deadline=None)
@given(
    cap=st.integers(min_value=1, max_value=256),
    events=_events,
    rtt=st.floats(min_value=0.001, max_value=30.0),
)
def test_a_domain_whose_requests_all_succeed_reaches_the_cap_in_bounded_round_trips(
    cap: int, events: list[tuple[str, int, float]], rtt: float
) -> None:
    limit = AdaptiveRequestLimit(AdaptiveLimitSettings(slow_start=True), cap)
    now = 0.0
    for kind, in_flight, step in events:  # any history first
        now += step
        limit.advance(now)
        limit.on_outcome(
            OK if kind == "ok" else LIMITED,
            now=now,
            limit_at_grant=limit.limit,
            in_flight=in_flight,
            retry_after_seconds=None,
            latency_seconds=step or None,
        )
    # Then every request succeeds while work waits (the limit is always fully in use).
    now += 61.0  # past any cooldown
    limit.advance(now)
    round_trips = 0
    while limit.limit < cap:
        round_trips += 1
        assert round_trips <= 8 + 2 * 9 + 10 / rtt + 2, limit.limit
        for _ in range(limit.limit):
            limit.on_outcome(
                OK,
                now=now,
                limit_at_grant=limit.limit,
                in_flight=limit.limit,
                retry_after_seconds=None,
                latency_seconds=rtt,
            )
        now += rtt
        limit.advance(now)


def test_the_startup_ramp_is_linear_from_one_to_the_target() -> None:
    ramp = StartupRamp(target=9, ramp_seconds=8.0, start_at=100.0)
    assert [ramp.limit_at(100.0 + t) for t in (0, 1, 4, 7.99, 8, 50)] == [1, 2, 5, 8, 9, 9]


def test_the_startup_ramp_says_when_it_next_steps() -> None:
    ramp = StartupRamp(target=9, ramp_seconds=8.0, start_at=100.0)
    assert ramp.next_step_at(100.5) == 101.0
    assert ramp.next_step_at(108.0) is None


def test_cooldown_follows_retry_after_clamped_to_the_max() -> None:
    policy = CooldownPolicy(default_seconds=2.0, max_seconds=60.0)
    assert policy.seconds(5.0, streak=3) == 5.0
    assert policy.seconds(3600.0, streak=0) == 60.0


def test_cooldown_without_retry_after_starts_short_and_doubles_while_refusals_repeat() -> None:
    policy = CooldownPolicy(default_seconds=0.5, max_seconds=6.0)
    assert [policy.seconds(None, streak=n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0]


def test_the_gradient_limit_shrinks_when_latency_inflates() -> None:
    gradient = GradientLimit(max_limit=64, short_alpha=1.0, long_alpha=0.0)
    state = GradientState(limit=32.0, short_latency_seconds=0.2, long_latency_seconds=0.2)
    assert gradient.on_sample(state, latency_seconds=2.0).limit < 32.0


def test_the_gradient_limit_grows_while_latency_is_steady() -> None:
    gradient = GradientLimit(max_limit=64)
    state = GradientState(limit=16.0, short_latency_seconds=0.2, long_latency_seconds=0.2)
    assert gradient.on_sample(state, latency_seconds=0.2).limit > 16.0


def _adaptive(**settings: object) -> AdaptiveRequestLimit:
    return AdaptiveRequestLimit(AdaptiveLimitSettings(**settings), static_cap=32)  # type: ignore[arg-type]


def test_adaptive_limit_starts_at_the_clamped_initial_limit() -> None:
    assert _adaptive(initial_limit=100).limit == 32
    assert _adaptive(initial_limit=0).limit == 1
    assert _adaptive(max_limit=8).limit == 8


def test_slow_start_begins_at_half_the_cap() -> None:
    assert _adaptive(slow_start=True).limit == 16
    assert _adaptive(slow_start=True, initial_limit=4).limit == 4


def test_adaptive_rate_limit_cools_down_until_retry_after() -> None:
    limit = _adaptive()
    limit.on_outcome(LIMITED, now=5.0, limit_at_grant=32, in_flight=32, retry_after_seconds=3.0)
    assert (limit.limit, limit.blocked_until, limit.ceiling) == (24, 8.0, 32)
    assert limit.advance(6.0) == 8.0
    assert limit.advance(8.0) is None
    assert limit.blocked_until is None


def test_one_refusal_among_answers_comes_down_to_what_was_served_without_a_cooldown() -> None:
    limit = _adaptive()
    limit.on_outcome(OK, now=1.0, limit_at_grant=32, in_flight=32, retry_after_seconds=None)
    # 32 in flight when refused: the provider served 31 at that moment (a slot another client,
    # or a request it still works on, took for a while).
    limit.on_outcome(LIMITED, now=2.0, limit_at_grant=32, in_flight=32, retry_after_seconds=1.0)
    assert (limit.limit, limit.blocked_until) == (31, None)
    limit.on_outcome(LIMITED, now=2.0, limit_at_grant=31, in_flight=31, retry_after_seconds=1.0)
    assert (limit.limit, limit.blocked_until) == (23, 3.0)  # refused again in a row: pressure


def test_a_refused_probe_does_not_cool_the_domain_down() -> None:
    limit = _adaptive(slow_start=True)
    limit.on_outcome(LIMITED, now=5.0, limit_at_grant=16, in_flight=16, retry_after_seconds=3.0)
    assert (limit.limit, limit.blocked_until) == (15, None)


def test_cooldowns_without_retry_after_grow_while_refusals_repeat() -> None:
    limit = _adaptive(default_cooldown_seconds=0.5)
    pauses = []
    now = 0.0
    for _ in range(3):
        limit.on_outcome(
            LIMITED, now=now, limit_at_grant=limit.limit, in_flight=1, retry_after_seconds=None
        )
        assert limit.blocked_until is not None
        pauses.append(limit.blocked_until - now)
        now = limit.blocked_until
        limit.advance(now)
    assert pauses == [0.5, 1.0, 2.0]
    limit.on_outcome(OK, now=now, limit_at_grant=1, in_flight=1, retry_after_seconds=None)
    # One refusal among answers is met by the decrease alone...
    limit.on_outcome(LIMITED, now=now, limit_at_grant=1, in_flight=1, retry_after_seconds=None)
    assert limit.blocked_until is None
    # ...the next in a row cools down again, the learning started over by the answer.
    limit.on_outcome(LIMITED, now=now, limit_at_grant=1, in_flight=1, retry_after_seconds=None)
    assert limit.blocked_until == now + 0.5


def test_adaptive_successes_in_cooldown_do_not_grow_the_limit() -> None:
    limit = _adaptive()
    limit.on_outcome(LIMITED, now=0.0, limit_at_grant=32, in_flight=32, retry_after_seconds=None)
    limit.on_outcome(OK, now=0.1, limit_at_grant=24, in_flight=24, retry_after_seconds=None)
    assert limit.limit == 24


def test_adaptive_ramp_starts_at_the_first_advance_and_a_rate_limit_aborts_it() -> None:
    limit = _adaptive(startup_ramp_seconds=31.0)
    assert limit.advance(10.0) == 11.0
    assert limit.limit == 1
    limit.advance(20.0)
    assert limit.limit == 11
    limit.on_outcome(LIMITED, now=20.0, limit_at_grant=11, in_flight=11, retry_after_seconds=0)
    assert limit.limit == 10
    assert limit.advance(40.0) is None
    assert limit.limit == 10


def test_adaptive_ramp_ends_at_its_target() -> None:
    limit = _adaptive(startup_ramp_seconds=31.0)
    limit.advance(10.0)
    limit.advance(40.0)
    assert limit.limit == 31
    assert limit.advance(41.0) is None
    assert limit.limit == 32  # the last step applies the target before the ramp ends
    assert not limit.ramping
