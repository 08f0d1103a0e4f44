"""Pacing by the windows a provider reports: the pure window, then through the controller."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway.observability import EventBus, EventKind, MemoryEventSink
from sluiceway.observability.request_events import RequestPacingHeld
from sluiceway.rate_limits import RateLimitHeaders, RateLimitWindow
from sluiceway.requests import (
    ProviderModelKey,
    RequestAdmissionItem,
    RequestAdmissionLease,
    RequestDomain,
    RequestReleaseOutcome,
    RequestResourceKey,
)
from sluiceway.requests.admission import RequestAdmissionController, RequestAdmissionDenied
from sluiceway.requests.budgets import BudgetLimits, RequestBudgets
from sluiceway.requests.pacing import PacedKind, PacedWindow
from sluiceway.testing import FakeClock

KEY = ProviderModelKey(provider="p", model_id="m")
CHAT = RequestResourceKey(provider_model=KEY, domain=RequestDomain.CHAT)
OK = RequestReleaseOutcome.SUCCESS


def _window(remaining: int | None, reset: float | None, limit: int | None = None) -> PacedWindow:
    window = PacedWindow(PacedKind.REQUESTS)
    report = RateLimitWindow(limit=limit, remaining=remaining, reset_seconds=reset)
    window.report(report, now=100.0, sequence=1, unseen=0)
    return window


def test_a_window_without_a_report_holds_nothing_back() -> None:
    window = PacedWindow(PacedKind.REQUESTS)
    assert window.ready_at(10**9, 5.0) == 5.0 and not window.active


def test_what_remains_may_go_at_once() -> None:
    window = _window(remaining=3, reset=6.0, limit=60)
    for _ in range(3):
        assert window.ready_at(1, 100.0) == 100.0
        window.charge(1)
    assert window.ready_at(1, 100.0) > 100.0


def test_a_spent_window_refills_linearly_until_its_reset() -> None:
    # 0 of 60 left, full again in 6 s: one more every 0.1 s.
    window = _window(remaining=0, reset=6.0, limit=60)
    assert window.ready_at(1, 100.0) == pytest.approx(100.1)
    assert window.ready_at(30, 100.0) == pytest.approx(103.0)
    window.charge(10)
    assert window.ready_at(1, 100.5) == pytest.approx(101.1)


def test_without_a_limit_a_spent_window_waits_for_its_reset() -> None:
    window = _window(remaining=0, reset=6.0)
    assert window.ready_at(1, 100.0) == 106.0


def test_after_the_reset_the_window_says_nothing_until_the_next_report() -> None:
    window = _window(remaining=0, reset=6.0, limit=60)
    assert window.ready_at(1000, 106.0) == 106.0 and not window.active


def test_grants_after_the_reporting_request_are_charged_against_its_report() -> None:
    window = PacedWindow(PacedKind.REQUESTS)
    window.report(
        RateLimitWindow(limit=100, remaining=5, reset_seconds=60.0),
        now=0.0,
        sequence=10,
        unseen=5,
    )
    assert window.ready_at(1, 0.0) > 0.0


def test_a_report_older_than_the_one_in_force_is_ignored() -> None:
    window = _window(remaining=50, reset=6.0, limit=60)
    window.report(
        RateLimitWindow(limit=60, remaining=0, reset_seconds=6.0), now=100.0, sequence=0, unseen=0
    )
    assert window.ready_at(1, 100.0) == 100.0


def test_a_report_missing_remaining_or_reset_changes_nothing() -> None:
    window = PacedWindow(PacedKind.TOKENS)
    window.report(
        RateLimitWindow(limit=60, remaining=None, reset_seconds=1.0), now=0.0, sequence=1, unseen=0
    )
    window.report(
        RateLimitWindow(limit=60, remaining=0, reset_seconds=None), now=0.0, sequence=2, unseen=0
    )
    assert not window.active


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=10_000),
    remaining=st.integers(min_value=0, max_value=10_000),
    reset=st.floats(min_value=0.0, max_value=120.0),
    amount=st.integers(min_value=1, max_value=20_000),
    charged=st.integers(min_value=0, max_value=10_000),
    later=st.floats(min_value=0.0, max_value=200.0),
)
def test_ready_at_is_never_before_now_and_never_after_the_reset(
    limit: int, remaining: int, reset: float, amount: int, charged: int, later: float
) -> None:
    window = PacedWindow(PacedKind.TOKENS)
    window.report(
        RateLimitWindow(limit=limit, remaining=min(remaining, limit), reset_seconds=reset),
        now=0.0,
        sequence=1,
        unseen=0,
    )
    window.charge(charged)
    ready = window.ready_at(amount, later)
    assert later <= ready <= max(later, reset)
    if ready > later:
        assert window.available(later) < amount


# -- through the controller -----------------------------------------------------------------


def _lease(result: object) -> RequestAdmissionLease:
    assert isinstance(result, RequestAdmissionLease), result
    return result


def _report(remaining: int, reset: float, limit: int = 60) -> RateLimitHeaders:
    return RateLimitHeaders(
        requests=RateLimitWindow(limit=limit, remaining=remaining, reset_seconds=reset)
    )


async def test_a_reported_window_holds_waiters_and_a_timer_wakes_them() -> None:
    clock = FakeClock(start=0.0)
    sink = MemoryEventSink()
    controller = RequestAdmissionController(
        {KEY: 8}, clock=clock, timers=clock, events=EventBus([sink])
    )
    first = _lease(controller.try_acquire(RequestAdmissionItem(resource=CHAT)))
    clock.advance(0.5)
    # The answer says: nothing left of 60, full again in 6 s (one more every 0.1 s).
    controller.release(first, OK, rate_limit=_report(remaining=0, reset=6.0))
    denied = controller.try_acquire(RequestAdmissionItem(resource=CHAT))
    assert isinstance(denied, RequestAdmissionDenied)
    assert denied.budget_ready_at == pytest.approx(0.6)
    waiters = [
        asyncio.create_task(controller.acquire(RequestAdmissionItem(resource=CHAT)))
        for _ in range(2)
    ]
    for _ in range(3):
        await asyncio.sleep(0)
    assert not any(waiter.done() for waiter in waiters)
    clock.advance(0.1)
    for _ in range(3):
        await asyncio.sleep(0)
    assert [waiter.done() for waiter in waiters] == [True, False]
    clock.advance(0.1)
    for _ in range(3):
        await asyncio.sleep(0)
    for waiter in waiters:
        controller.release(waiter.result(), OK)
    held = [event for event in sink.events if isinstance(event, RequestPacingHeld)]
    assert (
        held
        and held[0].window.value == "requests"
        and held[0].kind is EventKind.REQUEST_PACING_HELD
    )
    assert controller.statistics().live_leases == 0


async def test_the_tighter_of_a_configured_budget_and_a_reported_window_wins() -> None:
    clock = FakeClock(start=0.0)
    controller = RequestAdmissionController(
        {KEY: 8},
        clock=clock,
        timers=clock,
        budgets=RequestBudgets(models={KEY: BudgetLimits(rpm=3)}),
    )
    lease = _lease(controller.try_acquire(RequestAdmissionItem(resource=CHAT)))
    # The provider reports plenty left: the configured budget (3 per minute) still binds.
    controller.release(lease, OK, rate_limit=_report(remaining=59, reset=1.0))
    for _ in range(2):
        _lease(controller.try_acquire(RequestAdmissionItem(resource=CHAT)))
    denied = controller.try_acquire(RequestAdmissionItem(resource=CHAT))
    assert isinstance(denied, RequestAdmissionDenied) and denied.budget_ready_at is not None
    assert denied.budget_ready_at > 60.0
