"""The behaviour model's limits as they change: new values in force, other clients' attempts,
token-bucket windows and the window states reported to clients (fake clock: ``now`` values)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sluiceway.errors import EngineError
from sluiceway.providers.behaviour import (
    RPM_WINDOW_SECONDS,
    AttemptOutcome,
    BehaviourModel,
    EndpointLimit,
    RateWindowKind,
    Refusal,
    RefusalReason,
    SimulationSettings,
    WindowState,
)


def _model(**overrides: Any) -> BehaviourModel:
    return BehaviourModel(SimulationSettings(**overrides), 1)


# -- capacity in force ------------------------------------------------------------------------


def test_a_lowered_capacity_keeps_attempts_in_flight_and_refuses_new_ones_until_below() -> None:
    model = _model(capacity=3)
    for now in (0.0, 0.1, 0.2):
        assert model.admit(now) is None
    model.set_limit(1.0, EndpointLimit.CAPACITY, 1)
    assert model.capacity == 1
    assert model.statistics().in_flight == 3  # nothing was ended
    assert model.admit(1.1) == Refusal(reason=RefusalReason.CAPACITY, retry_after_seconds=1.0)
    model.finish(1.2, AttemptOutcome.SUCCESS)
    model.finish(1.3, AttemptOutcome.SUCCESS)
    assert model.admit(1.4) is not None  # 1 in flight: still at the lowered capacity
    model.finish(1.5, AttemptOutcome.SUCCESS)
    assert model.admit(1.6) is None


def test_a_raised_or_removed_capacity_admits_at_once() -> None:
    model = _model(capacity=1)
    assert model.admit(0.0) is None
    assert model.admit(0.0) is not None
    model.set_limit(0.5, EndpointLimit.CAPACITY, 2)
    assert model.admit(0.5) is None
    model.set_limit(0.6, EndpointLimit.CAPACITY, None)
    assert all(model.admit(0.7) is None for _ in range(10))


def test_a_limit_below_one_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match="capacity limit 0 must be >= 1"):
        _model().set_limit(0.0, EndpointLimit.CAPACITY, 0)


# -- other clients ----------------------------------------------------------------------------


def test_other_clients_take_capacity_but_are_not_counted() -> None:
    model = _model(capacity=3)
    assert model.admit_other(0.0) is None
    assert model.admit_other(0.0) is None
    assert model.admit(0.1) is None
    refusal = model.admit(0.2)
    assert refusal is not None and refusal.reason is RefusalReason.CAPACITY
    assert model.admit_other(0.2) is not None  # the other client is refused the same way
    model.finish_other()
    assert model.admit(0.3) is None
    stats = model.statistics()
    assert (stats.requests, stats.rate_limited, stats.in_flight, stats.max_in_flight) == (
        3,
        1,
        2,
        2,
    )


def test_other_clients_take_window_room() -> None:
    model = _model(rpm=2, tpm=100)
    assert model.admit_other(0.0, tokens=50) is None
    assert model.admit(1.0, tokens=60) is not None  # 50 + 60 > 100
    assert model.admit(1.0, tokens=10) is None
    refusal = model.admit(2.0)
    assert refusal is not None and refusal.reason is RefusalReason.RPM
    assert refusal.retry_after_seconds == pytest.approx(RPM_WINDOW_SECONDS - 2.0)


def test_finish_other_without_admit_other_is_an_engine_error() -> None:
    model = _model(capacity=2)
    assert model.admit(0.0) is None
    with pytest.raises(EngineError, match="finish_other"):
        model.finish_other()


def test_queueing_slows_down_for_other_clients_too() -> None:
    model = _model(capacity=2, queueing=True)
    assert model.admit_other(0.0) is None
    assert model.admit_other(0.0) is None
    assert model.admit(0.0) is None
    assert model.load_factor() == pytest.approx(1.5)


# -- windows in force -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(RateWindowKind))
def test_a_window_that_appears_starts_full_and_one_removed_admits_all(kind: RateWindowKind) -> None:
    model = _model(rate_window=kind)
    assert not model.has_rate_windows
    for now in (0.0, 1.0, 2.0):
        assert model.admit(now) is None
    model.set_limit(3.0, EndpointLimit.RPM, 2)
    assert model.has_rate_windows and model.rpm == 2
    assert model.admit(3.0) is None
    assert model.admit(3.0) is None
    assert model.admit(3.0) is not None
    model.set_limit(4.0, EndpointLimit.RPM, None)
    assert not model.has_rate_windows
    assert model.admit(4.0) is None


def test_a_lowered_rolling_rpm_counts_what_the_window_already_holds() -> None:
    model = _model(rpm=10)
    for now in (0.0, 1.0, 2.0):
        assert model.admit(now) is None
    model.set_limit(5.0, EndpointLimit.RPM, 3)
    refusal = model.admit(5.0)
    assert refusal == Refusal(reason=RefusalReason.RPM, retry_after_seconds=55.0)


def test_a_lowered_bucket_keeps_at_most_the_new_limit() -> None:
    model = _model(rpm=60, rate_window=RateWindowKind.BUCKET)
    model.set_limit(0.0, EndpointLimit.RPM, 2)
    assert model.admit(0.0) is None
    assert model.admit(0.0) is None
    refusal = model.admit(0.0)
    # Refilled at 2 per 60 s: the next request in 30 s.
    assert refusal == Refusal(reason=RefusalReason.RPM, retry_after_seconds=30.0)


# -- token buckets ----------------------------------------------------------------------------


def test_a_request_bucket_admits_a_burst_then_one_per_refill_interval() -> None:
    model = _model(rpm=6, rate_window=RateWindowKind.BUCKET)  # one request back every 10 s
    assert all(model.admit(0.0) is None for _ in range(6))
    refusal = model.admit(4.0)
    assert refusal is not None and refusal.reason is RefusalReason.RPM
    assert refusal.retry_after_seconds == pytest.approx(6.0)
    assert model.admit(10.0) is None
    assert model.admit(10.0) is not None
    assert model.admit(20.0) is None


def test_a_token_bucket_refuses_until_the_tokens_are_back() -> None:
    model = _model(tpm=600, rate_window=RateWindowKind.BUCKET)  # 10 tokens per second
    assert model.admit(0.0, tokens=500) is None
    refusal = model.admit(0.0, tokens=200)
    assert refusal == Refusal(reason=RefusalReason.TPM, retry_after_seconds=10.0)
    assert model.admit(10.0, tokens=200) is None
    assert model.statistics().rate_limited == 1


def test_a_request_above_the_whole_token_bucket_needs_a_full_bucket() -> None:
    model = _model(tpm=600, rate_window=RateWindowKind.BUCKET)
    assert model.admit(0.0, tokens=1000) is None  # full: admitted, and the bucket overdrawn
    refusal = model.admit(1.0, tokens=1000)
    assert refusal is not None
    # From -400 + 10 back to 600: 99 s more.
    assert refusal.retry_after_seconds == pytest.approx(99.0)


def test_a_bucket_refusal_takes_nothing() -> None:
    model = _model(rpm=60, tpm=100, rate_window=RateWindowKind.BUCKET)
    assert model.admit(0.0, tokens=100) is None
    assert model.admit(0.0, tokens=10) is not None  # tpm
    requests, _ = model.window_states(0.0)
    assert requests == WindowState(limit=60, remaining=59, reset_seconds=1.0)


# -- window states ----------------------------------------------------------------------------


def test_rolling_window_states_count_down_and_reset_when_the_newest_admit_leaves() -> None:
    model = _model(rpm=3, tpm=100)
    assert model.window_states(0.0) == (
        WindowState(limit=3, remaining=3, reset_seconds=0.0),
        WindowState(limit=100, remaining=100, reset_seconds=0.0),
    )
    assert model.admit(0.0, tokens=30) is None
    assert model.admit(10.0, tokens=50) is None
    requests, tokens = model.window_states(15.0)
    assert requests == WindowState(limit=3, remaining=1, reset_seconds=55.0)
    assert tokens == WindowState(limit=100, remaining=20, reset_seconds=55.0)
    requests, tokens = model.window_states(65.0)  # the first admit has left
    assert requests == WindowState(limit=3, remaining=2, reset_seconds=5.0)
    assert tokens == WindowState(limit=100, remaining=50, reset_seconds=5.0)


def test_bucket_window_states_report_the_level_and_the_time_to_full() -> None:
    model = _model(rpm=60, tpm=600, rate_window=RateWindowKind.BUCKET)
    assert model.admit(0.0, tokens=300) is None
    requests, tokens = model.window_states(0.5)
    assert requests == WindowState(limit=60, remaining=59, reset_seconds=pytest.approx(0.5))
    assert tokens == WindowState(limit=600, remaining=305, reset_seconds=pytest.approx(29.5))


def test_a_bucket_read_at_an_earlier_time_does_not_refill_it_twice() -> None:
    model = _model(rpm=60, rate_window=RateWindowKind.BUCKET)
    assert model.admit(10.0) is None
    model.window_states(5.0)  # a clock read before the last refill changes nothing
    requests, _ = model.window_states(10.0)
    assert requests is not None and requests.remaining == 59


def test_window_states_of_limits_not_in_force_are_none() -> None:
    assert _model(capacity=4).window_states(0.0) == (None, None)
    assert _model(tpm=10).window_states(0.0)[0] is None


# -- property: the limits in force hold under any interleaving --------------------------------


class ChangingLimitsMachine(RuleBasedStateMachine):
    """Client and other-client attempts, limit changes and time in any order: an admission never
    exceeds the capacity in force, and the client's statistics never count the other's."""

    def __init__(self) -> None:
        super().__init__()
        self.model = BehaviourModel(
            SimulationSettings(capacity=3, rpm=6, rate_window=RateWindowKind.BUCKET), 1
        )
        self.now = 0.0
        self.mine = 0
        self.others = 0
        self.capacity: int | None = 3
        self.requests = 0

    @rule(seconds=st.floats(0.0, 20.0))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(value=st.one_of(st.none(), st.integers(1, 5)))
    def change_capacity(self, value: int | None) -> None:
        self.model.set_limit(self.now, EndpointLimit.CAPACITY, value)
        self.capacity = value

    @rule(value=st.one_of(st.none(), st.integers(1, 8)))
    def change_rpm(self, value: int | None) -> None:
        self.model.set_limit(self.now, EndpointLimit.RPM, value)

    @rule(other=st.booleans())
    def admit(self, other: bool) -> None:
        before = self.mine + self.others
        refusal = self.model.admit_other(self.now) if other else self.model.admit(self.now)
        self.requests += not other
        if refusal is None:
            assert self.capacity is None or before < self.capacity
            if other:
                self.others += 1
            else:
                self.mine += 1
        else:
            assert refusal.retry_after_seconds > 0
            if refusal.reason is RefusalReason.CAPACITY:
                assert self.capacity is not None and before >= self.capacity

    @precondition(lambda self: self.mine > 0)
    @rule()
    def finish(self) -> None:
        self.model.finish(self.now, AttemptOutcome.SUCCESS)
        self.mine -= 1

    @precondition(lambda self: self.others > 0)
    @rule()
    def finish_other(self) -> None:
        self.model.finish_other()
        self.others -= 1

    @invariant()
    def statistics_count_only_the_client(self) -> None:
        stats = self.model.statistics()
        assert stats.in_flight == self.mine
        assert stats.requests == self.requests


TestChangingLimitsMachine = ChangingLimitsMachine.TestCase
TestChangingLimitsMachine.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
