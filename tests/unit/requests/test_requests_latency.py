"""The straggler policy on fed sample streams: adaptive timeouts, hedge delays, hedge budget."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway.errors import EngineError
from sluiceway.requests.keys import ProviderModelKey, RequestDomain, RequestResourceKey
from sluiceway.requests.latency import (
    HedgeBudget,
    LatencyTracker,
    LatencyWindow,
    StragglerSettings,
)

SETTINGS = StragglerSettings(min_samples=20, window=100, refresh_every=10)
CHAT = RequestResourceKey(
    provider_model=ProviderModelKey(provider="p", model_id="m"), domain=RequestDomain.CHAT
)


def _window(samples: list[float], settings: StragglerSettings = SETTINGS) -> LatencyWindow:
    window = LatencyWindow(settings)
    for latency in samples:
        window.observe(latency)
    return window


def test_nothing_adapts_before_min_samples() -> None:
    window = _window([0.5] * 19)
    assert window.timeout_seconds is None
    assert window.hedge_after_seconds is None
    assert window.attempt_timeout(60.0) is None  # the configured timeout governs


def test_the_timeout_is_the_quantile_times_the_factor_once_warm() -> None:
    # 100 samples 0.01 .. 1.00: the nearest-rank p99 is 0.99, the p95 0.95.
    window = _window([n / 100 for n in range(1, 101)])
    assert window.timeout_quantile_seconds == pytest.approx(0.99)
    assert window.timeout_seconds == pytest.approx(3 * 0.99)
    assert window.hedge_after_seconds == pytest.approx(2 * 0.95)
    assert window.attempt_timeout(60.0) == pytest.approx(2.97)


def test_the_floor_holds_for_fast_answers() -> None:
    window = _window([0.01] * 20)
    assert window.timeout_seconds == 1.0


def test_the_configured_timeout_caps_the_attempt() -> None:
    window = _window([2.0] * 20)  # adaptive 6 s
    assert window.attempt_timeout(60.0) == 6.0
    assert window.attempt_timeout(5.0) is None  # 5 s governs, as configured


def test_the_timeout_adapts_up_when_answers_get_slower() -> None:
    window = _window([0.5] * 100)
    assert window.timeout_seconds == 1.5
    for _ in range(10):  # 10% slow answers: the p99 moves to them at the next refresh
        window.observe(2.0)
    assert window.timeout_seconds == 6.0


def test_the_timeout_adapts_down_once_slow_answers_leave_the_window() -> None:
    window = _window([2.0] * 100)
    assert window.timeout_seconds == 6.0
    for _ in range(100):
        window.observe(0.5)
    assert window.timeout_seconds == 1.5


def test_an_expiry_among_successes_changes_nothing() -> None:
    window = _window([0.5] * 20)
    for _ in range(5):
        window.on_expiry(1.5)  # a hang ...
        window.observe(0.5)  # ... while the others keep answering
    assert window.timeout_seconds == 1.5
    assert window.expiries == 5


def test_expiries_without_a_success_between_them_double_the_timeout() -> None:
    window = _window([0.5] * 20)
    window.on_expiry(1.5)  # the first may be a straggler
    assert window.timeout_seconds == 1.5
    window.on_expiry(1.5)  # no answer since: the provider got slower
    assert window.timeout_seconds == 3.0
    window.on_expiry(1.5)  # one more of the same round does not compound
    assert window.timeout_seconds == 3.0
    window.on_expiry(3.0)
    assert window.timeout_seconds == 6.0


def test_the_escalation_halves_at_each_refresh() -> None:
    window = _window([0.5] * 20)
    window.on_expiry(1.5)
    window.on_expiry(1.5)  # escalation 3 s
    assert window.timeout_seconds == 3.0
    for _ in range(10):
        window.observe(0.5)
    assert window.timeout_seconds == 1.5  # max(1.5, 3 / 2)


def test_one_call_can_ask_for_a_longer_deadline_after_its_expiry() -> None:
    window = _window([0.5] * 20)
    assert window.attempt_timeout(60.0, at_least_seconds=3.0) == 3.0
    assert window.attempt_timeout(60.0, at_least_seconds=1.0) == 1.5
    assert window.attempt_timeout(2.0, at_least_seconds=3.0) is None


@given(
    samples=st.lists(
        st.floats(min_value=0.0, max_value=100.0, allow_nan=False), min_size=0, max_size=300
    ),
    expiries=st.lists(st.integers(min_value=0, max_value=300), max_size=10),
    configured=st.floats(min_value=0.01, max_value=120.0, allow_nan=False),
    at_least=st.floats(min_value=0.0, max_value=500.0, allow_nan=False),
)
def test_an_attempt_timeout_is_within_the_floor_and_the_configured_timeout(
    samples: list[float], expiries: list[int], configured: float, at_least: float
) -> None:
    window = LatencyWindow(SETTINGS)
    for index, latency in enumerate(samples):
        window.observe(latency)
        if index in expiries and window.timeout_seconds is not None:
            window.on_expiry(window.timeout_seconds)
        timeout = window.attempt_timeout(configured, at_least_seconds=at_least)
        if timeout is not None:
            assert SETTINGS.min_timeout_seconds <= timeout < configured


def test_the_tracker_keeps_one_window_per_resource_and_column() -> None:
    tracker = LatencyTracker(SETTINGS)
    text = tracker.window(CHAT, "text")
    assert tracker.window(CHAT, "text") is text
    assert tracker.window(CHAT, "summary") is not text
    assert tracker.window(CHAT, None) is not text
    # An equal key object finds the same windows.
    twin = RequestResourceKey(provider_model=CHAT.provider_model, domain=CHAT.domain)
    assert tracker.window(twin, "text") is text
    assert len(tracker.statistics()) == 3


def test_a_cold_column_borrows_the_values_of_its_provider_model() -> None:
    tracker = LatencyTracker(SETTINGS)
    text = tracker.window(CHAT, "text")
    for _ in range(20):
        text.observe(0.5)  # also samples of the provider/model as a whole
    summary = tracker.window(CHAT, "summary")
    assert summary.timeout_seconds is None  # nothing of its own yet
    assert summary.attempt_timeout(60.0) == 1.5
    assert summary.hedge_delay_seconds() == 1.0
    for _ in range(20):
        summary.observe(2.0)
    assert summary.attempt_timeout(60.0) == 6.0  # its own, once warm
    assert text.attempt_timeout(60.0) == 1.5  # the other column keeps its own


def test_an_expiry_in_a_cold_column_escalates_the_window_it_borrowed() -> None:
    tracker = LatencyTracker(SETTINGS)
    for _ in range(20):
        tracker.window(CHAT, "text").observe(0.5)
    summary = tracker.window(CHAT, "summary")
    summary.on_expiry(1.5)
    summary.on_expiry(1.5)
    assert summary.attempt_timeout(60.0) == 3.0
    assert tracker.window(CHAT, None).timeout_seconds == 3.0
    assert summary.expiries == 2


def test_hedges_never_exceed_the_budget_ratio_of_attempts() -> None:
    budget = HedgeBudget(0.02, burst=10)
    spent = 0
    for attempt in range(1, 1001):
        budget.earn()
        if budget.try_spend():
            spent += 1
        assert spent <= 0.02 * attempt
    assert spent == 20


def test_the_hedge_budget_saves_up_at_most_its_burst() -> None:
    budget = HedgeBudget(0.5, burst=3)
    for _ in range(100):
        budget.earn()
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]
    assert budget.statistics().hedges == 3


@pytest.mark.parametrize(
    "bad",
    [
        {"timeout_quantile": 1.0},
        {"timeout_factor": 0.5},
        {"min_timeout_seconds": 0.0},
        {"hedge_budget_ratio": 0.0},
        {"min_samples": 300, "window": 256},
        {"refresh_every": 0},
    ],
)
def test_bad_settings_are_refused_naming_the_field(bad: dict[str, float]) -> None:
    with pytest.raises(EngineError, match=next(iter(bad))):
        StragglerSettings(**bad)  # type: ignore[arg-type]
