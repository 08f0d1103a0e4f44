"""Pure tests of the limit algorithms: one sample per test, time passed in explicitly."""

from __future__ import annotations

import pytest

from sluiceway.errors import EngineError
from sluiceway.requests.limits import (
    AdaptiveLimitSettings,
    AdaptiveRequestLimit,
    AimdLimit,
    AimdState,
    CooldownPolicy,
    GradientLimit,
    GradientState,
    LimitChange,
    StartupRamp,
)
from sluiceway.requests.outcomes import RequestReleaseOutcome

OK = RequestReleaseOutcome.SUCCESS
LIMITED = RequestReleaseOutcome.RATE_LIMITED

AIMD = AimdLimit(max_limit=32, successes_until_increase=2)


def test_a_rate_limit_decreases_multiplicatively_and_remembers_the_ceiling() -> None:
    state = AIMD.on_rate_limited(AimdState(limit=32), limit_at_grant=32)
    assert state == AimdState(limit=24, successes=0, ceiling=32, hold_seconds=30.0, refused_at=32)


def test_the_ceiling_is_what_was_in_flight_when_the_first_refusal_arrived() -> None:
    state = AIMD.on_rate_limited(AimdState(limit=32), limit_at_grant=32, in_flight=30)
    assert (state.limit, state.ceiling) == (24, 30)


def test_the_ceiling_is_never_above_the_limit_in_force() -> None:
    state = AIMD.on_rate_limited(AimdState(limit=16), limit_at_grant=16, in_flight=40)
    assert state.ceiling == 16


def test_the_ceiling_stays_above_the_decreased_limit() -> None:
    state = AIMD.on_rate_limited(AimdState(limit=32), limit_at_grant=32, in_flight=10)
    assert (state.limit, state.ceiling) == (24, 25)


def test_each_further_refusal_of_the_burst_lowers_the_ceiling_by_one() -> None:
    state = AimdState(limit=24, ceiling=32, refused_at=32)
    after = AIMD.on_rate_limited(state, limit_at_grant=32, in_flight=31)
    assert (after.ceiling, after.refused_at) == (31, 31)


def test_further_refusals_never_bring_the_ceiling_to_the_limit() -> None:
    state = AimdState(limit=1, ceiling=2, refused_at=2)
    after = AIMD.on_rate_limited(state, limit_at_grant=2, in_flight=1)
    assert (after.ceiling, after.refused_at) == (2, 1)


def test_further_refusals_below_the_decreased_limit_bring_it_to_what_was_served() -> None:
    # 64 went out at once, the burst's refusals have counted the ceiling down to 49.
    state = AimdState(limit=48, ceiling=49, refused_at=49)
    after = AIMD.on_rate_limited(state, limit_at_grant=64, in_flight=40)
    assert (after.limit, after.ceiling, after.refused_at) == (47, 48, 48)


def test_further_refusals_above_the_decreased_limit_leave_it() -> None:
    state = AimdState(limit=48, ceiling=60, refused_at=60)
    after = AIMD.on_rate_limited(state, limit_at_grant=64, in_flight=50)
    assert (after.limit, after.ceiling) == (48, 59)


def test_a_refusal_above_the_previous_refusal_doubles_the_hold() -> None:
    aimd = AimdLimit(max_limit=64, ceiling_hold_seconds=30.0)
    # The ceiling was kept above the decreased limit (37), but 33 is where it was refused.
    state = AimdState(limit=36, ceiling=37, refused_at=33, hold_seconds=30.0)
    after = aimd.on_rate_limited(state, limit_at_grant=36, in_flight=36, now=5.0)
    assert (after.limit, after.hold_seconds) == (27, 60.0)


def test_a_lease_granted_above_the_current_limit_does_not_decrease_again() -> None:
    state = AimdState(limit=24, ceiling=32)
    assert AIMD.on_rate_limited(state, limit_at_grant=32) is state


def test_the_decrease_never_goes_below_one() -> None:
    assert AIMD.on_rate_limited(AimdState(limit=1), limit_at_grant=1).limit == 1


def test_successes_grow_the_limit_by_one_step_after_the_threshold() -> None:
    state = AIMD.on_success(AimdState(limit=10, successes=1), in_flight=10)
    assert state == AimdState(limit=11, successes=0)


def test_a_success_below_the_threshold_only_counts() -> None:
    assert AIMD.on_success(AimdState(limit=10), in_flight=10) == AimdState(limit=10, successes=1)


def test_no_growth_while_the_limit_is_not_in_use() -> None:
    state = AimdState(limit=10, successes=1)
    assert AIMD.on_success(state, in_flight=3) is state


def test_growth_stops_at_the_effective_max() -> None:
    state = AimdState(limit=32, successes=1)
    assert AIMD.on_success(state, in_flight=32) is state


def test_crossing_the_remembered_ceiling_needs_more_successes() -> None:
    aimd = AimdLimit(max_limit=32, successes_until_increase=2, ceiling_caution=3)
    state = AimdState(limit=20, successes=2, ceiling=20)
    assert aimd.on_success(state, in_flight=20) == AimdState(limit=20, successes=3, ceiling=20)
    assert aimd.on_success(AimdState(limit=20, successes=5, ceiling=20), in_flight=20).limit == 21


def test_reaching_the_ceiling_is_a_soft_recovery() -> None:
    change = AIMD.change(AimdState(limit=19, ceiling=20), AimdState(limit=20, ceiling=20))
    assert change is LimitChange.SOFT_CEILING_RECOVERED


def test_reaching_the_max_is_a_full_recovery() -> None:
    change = AIMD.change(AimdState(limit=31), AimdState(limit=32))
    assert change is LimitChange.FULLY_RECOVERED


def test_invalid_aimd_settings_are_refused() -> None:
    with pytest.raises(EngineError, match="decrease_factor must be in"):
        AimdLimit(max_limit=4, decrease_factor=1.5)


def test_the_startup_ramp_is_linear_from_one_to_the_target() -> None:
    ramp = StartupRamp(target=9, ramp_seconds=8.0, start_at=100.0)
    assert [ramp.limit_at(100.0 + t) for t in (0, 1, 4, 7.99, 8, 50)] == [1, 2, 5, 8, 9, 9]


def test_the_startup_ramp_says_when_it_next_steps() -> None:
    ramp = StartupRamp(target=9, ramp_seconds=8.0, start_at=100.0)
    assert ramp.next_step_at(100.5) == 101.0
    assert ramp.next_step_at(108.0) is None


def test_cooldown_follows_retry_after_clamped_to_the_max() -> None:
    policy = CooldownPolicy(default_seconds=2.0, max_seconds=60.0)
    assert policy.until(10.0, 5.0) == 15.0
    assert policy.until(10.0, 3600.0) == 70.0


def test_cooldown_without_retry_after_uses_the_default() -> None:
    assert CooldownPolicy(default_seconds=2.0).until(10.0, None) == 12.0


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


def test_adaptive_rate_limit_cools_down_until_retry_after() -> None:
    limit = _adaptive()
    limit.on_outcome(LIMITED, now=5.0, limit_at_grant=32, in_flight=32, retry_after_seconds=3.0)
    assert (limit.limit, limit.blocked_until, limit.ceiling) == (24, 8.0, 32)
    assert limit.advance(6.0) == 8.0
    assert limit.advance(8.0) is None
    assert limit.blocked_until is None


def test_adaptive_successes_in_cooldown_do_not_grow_the_limit() -> None:
    limit = _adaptive(successes_until_increase=1)
    limit.on_outcome(LIMITED, now=0.0, limit_at_grant=32, in_flight=32, retry_after_seconds=None)
    limit.on_outcome(OK, now=1.0, limit_at_grant=24, in_flight=24, retry_after_seconds=None)
    assert limit.limit == 24


def test_adaptive_ramp_starts_at_the_first_advance_and_a_rate_limit_aborts_it() -> None:
    limit = _adaptive(startup_ramp_seconds=31.0)
    assert limit.advance(10.0) == 11.0
    assert limit.limit == 1
    limit.advance(20.0)
    assert limit.limit == 11
    limit.on_outcome(LIMITED, now=20.0, limit_at_grant=11, in_flight=11, retry_after_seconds=0)
    assert limit.limit == 8
    assert limit.advance(40.0) is None
    assert limit.limit == 8


def test_adaptive_ramp_ends_at_its_target() -> None:
    limit = _adaptive(startup_ramp_seconds=31.0)
    limit.advance(10.0)
    limit.advance(40.0)
    assert limit.limit == 31
    assert limit.advance(41.0) is None
    assert limit.limit == 32  # the last step applies the target before the ramp ends
    assert not limit.ramping


def test_a_step_reaching_the_ceiling_waits_for_the_hold_after_a_rate_limit() -> None:
    aimd = AimdLimit(max_limit=64, successes_until_increase=1, ceiling_hold_seconds=30.0)
    state = aimd.on_rate_limited(AimdState(limit=33), limit_at_grant=33, now=100.0)
    assert (state.limit, state.ceiling, state.rate_limited_at) == (24, 33, 100.0)
    state = AimdState(limit=32, ceiling=33, rate_limited_at=100.0)
    assert aimd.on_success(state, in_flight=32, now=129.9) is state


def test_a_step_below_the_ceiling_is_not_held() -> None:
    aimd = AimdLimit(max_limit=64, successes_until_increase=1, ceiling_hold_seconds=30.0)
    state = AimdState(limit=30, ceiling=33, rate_limited_at=100.0)
    assert aimd.on_success(state, in_flight=30, now=100.5).limit == 31


def test_after_the_hold_the_ceiling_is_probed_again() -> None:
    aimd = AimdLimit(max_limit=64, successes_until_increase=1, ceiling_hold_seconds=30.0)
    state = AimdState(limit=32, ceiling=33, rate_limited_at=100.0)
    assert aimd.on_success(state, in_flight=32, now=130.0).limit == 33


def test_a_refused_probe_of_the_ceiling_doubles_the_hold() -> None:
    aimd = AimdLimit(max_limit=64, ceiling_hold_seconds=30.0, ceiling_hold_max_seconds=100.0)
    state = aimd.on_rate_limited(
        AimdState(limit=33, ceiling=33, rate_limited_at=0.0, hold_seconds=30.0),
        limit_at_grant=33,
        now=50.0,
    )
    assert (state.limit, state.ceiling, state.hold_seconds) == (24, 33, 60.0)


def test_the_doubled_hold_stops_at_its_maximum() -> None:
    aimd = AimdLimit(max_limit=64, ceiling_hold_seconds=30.0, ceiling_hold_max_seconds=100.0)
    probe = AimdState(limit=33, ceiling=33, rate_limited_at=0.0, hold_seconds=60.0)
    assert aimd.on_rate_limited(probe, limit_at_grant=33, now=90.0).hold_seconds == 100.0


def test_a_rate_limit_below_the_ceiling_starts_the_hold_over() -> None:
    aimd = AimdLimit(max_limit=64, ceiling_hold_seconds=30.0)
    below = AimdState(limit=28, ceiling=33, rate_limited_at=0.0, hold_seconds=120.0)
    assert aimd.on_rate_limited(below, limit_at_grant=28, now=10.0).hold_seconds == 30.0


def test_the_doubled_hold_keeps_the_step_to_the_ceiling_back() -> None:
    aimd = AimdLimit(max_limit=64, successes_until_increase=1, ceiling_hold_seconds=30.0)
    state = AimdState(limit=32, ceiling=33, rate_limited_at=100.0, hold_seconds=60.0)
    assert aimd.on_success(state, in_flight=32, now=159.9) is state


def test_the_adaptive_limit_settles_below_the_ceiling_it_learned() -> None:
    limit = AdaptiveRequestLimit(
        AdaptiveLimitSettings(successes_until_increase=1, default_cooldown_seconds=1.0), 64
    )
    limit.on_outcome(LIMITED, now=0.0, limit_at_grant=64, in_flight=64, retry_after_seconds=None)
    assert limit.limit == 48
    limit.advance(1.0)
    for step in range(40):  # plenty of successes, well inside the hold
        now = 1.0 + step * 0.1
        limit.on_outcome(
            OK, now=now, limit_at_grant=64, in_flight=limit.limit, retry_after_seconds=None
        )
    assert limit.limit == 63  # ceiling 64 (all 64 in flight when refused): held one below it


def test_one_burst_against_a_provider_serving_half_settles_at_what_it_served() -> None:
    limit = AdaptiveRequestLimit(
        AdaptiveLimitSettings(successes_until_increase=1, default_cooldown_seconds=1.0), 64
    )
    # 64 out at once, the provider serves 32: the 32 refusals arrive while all 64 are out.
    for refusal in range(32):
        limit.on_outcome(
            LIMITED, now=0.0, limit_at_grant=64, in_flight=64 - refusal, retry_after_seconds=1.0
        )
    assert (limit.limit, limit.ceiling) == (32, 33)
    limit.advance(1.0)
    for step in range(40):  # successes inside the hold do not step back into the ceiling
        limit.on_outcome(
            OK, now=1.0 + step * 0.1, limit_at_grant=32, in_flight=32, retry_after_seconds=None
        )
    assert limit.limit == 32


def test_a_ceiling_learned_from_fewer_in_flight_holds_the_decreased_limit() -> None:
    limit = AdaptiveRequestLimit(
        AdaptiveLimitSettings(successes_until_increase=1, default_cooldown_seconds=1.0), 64
    )
    limit.on_outcome(LIMITED, now=0.0, limit_at_grant=64, in_flight=33, retry_after_seconds=None)
    assert (limit.limit, limit.ceiling) == (48, 49)
    limit.advance(1.0)
    for step in range(40):
        limit.on_outcome(
            OK, now=1.0 + step * 0.1, limit_at_grant=48, in_flight=48, retry_after_seconds=None
        )
    assert limit.limit == 48


def test_a_negative_ceiling_hold_is_refused() -> None:
    with pytest.raises(EngineError):
        AimdLimit(max_limit=4, ceiling_hold_seconds=-1.0)
    with pytest.raises(EngineError, match="ceiling_hold_max_seconds"):
        AimdLimit(max_limit=4, ceiling_hold_seconds=60.0, ceiling_hold_max_seconds=30.0)


def test_the_gradient_baseline_is_the_lowest_latency_seen() -> None:
    gradient = GradientLimit(max_limit=64, baseline_drift=0.0)
    state = GradientState(limit=32.0, short_latency_seconds=0.4, long_latency_seconds=0.4)
    state = gradient.on_sample(state, latency_seconds=0.2)
    assert state.baseline_latency_seconds == 0.2
    assert gradient.on_sample(state, latency_seconds=0.4).baseline_latency_seconds == 0.2


def test_the_gradient_baseline_drifts_up_toward_the_long_term_latency() -> None:
    gradient = GradientLimit(max_limit=64, long_alpha=0.0, baseline_drift=0.5)
    state = GradientState(
        limit=32.0,
        short_latency_seconds=0.4,
        long_latency_seconds=0.4,
        baseline_latency_seconds=0.2,
    )
    baseline = gradient.on_sample(state, latency_seconds=0.4).baseline_latency_seconds
    assert baseline == pytest.approx(0.3)


def test_a_queue_above_the_tolerance_shrinks_the_gradient_limit_despite_a_high_long_term() -> None:
    # The long-term average already shows the queue; the baseline still remembers no load.
    gradient = GradientLimit(max_limit=64, short_alpha=1.0, baseline_drift=0.0)
    state = GradientState(
        limit=64.0,
        short_latency_seconds=0.4,
        long_latency_seconds=0.4,
        baseline_latency_seconds=0.2,
    )
    assert gradient.on_sample(state, latency_seconds=0.4).limit < 64.0


def test_one_gradient_sample_moves_the_limit_by_a_share_of_one_round_trip() -> None:
    gradient = GradientLimit(max_limit=64, smoothing=0.5)
    state = GradientState(limit=16.0, short_latency_seconds=0.2, long_latency_seconds=0.2)
    # target = 16 + sqrt(16) = 20; weight = 0.5 / 16
    assert gradient.on_sample(state, latency_seconds=0.2).limit == pytest.approx(16.125)


def test_zero_latencies_leave_the_gradient_limit_growing() -> None:
    gradient = GradientLimit(max_limit=64)
    state = GradientState(limit=8.0)
    for _ in range(3):
        state = gradient.on_sample(state, latency_seconds=0.0)
    assert state.limit > 8.0


def test_the_gradient_cap_starts_at_a_quarter_of_the_initial_limit() -> None:
    assert _adaptive(latency_gradient=True).limit == 8
    assert _adaptive(latency_gradient=True, initial_limit=2).limit == 1
    assert _adaptive(latency_gradient=False).limit == 32
