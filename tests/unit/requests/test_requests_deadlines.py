"""The deadline wheel on a fake clock: tokens fire once, within one tick after their time and
never before, and one timer serves them all."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway.requests.deadlines import DeadlineWheel
from sluiceway.testing import FakeClock


class Fired:
    """The wheel's callback and the owner's pending tokens: when each token fired."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.pending: set[int] = set()
        self.at: dict[int, list[float]] = {}

    def __call__(self, token: int) -> None:
        self.pending.discard(token)
        self.at.setdefault(token, []).append(self.clock.now)


def _wheel(clock: FakeClock, tick: float = 0.1) -> tuple[DeadlineWheel, Fired]:
    fired = Fired(clock)
    wheel = DeadlineWheel(
        tick_seconds=tick, clock=clock, fire=fired, pending=fired.pending, timers=clock
    )
    return wheel, fired


def _schedule(wheel: DeadlineWheel, fired: Fired, when: float, token: int) -> None:
    fired.pending.add(token)
    wheel.schedule(when, token)


def test_a_token_fires_within_one_tick_after_its_time() -> None:
    clock = FakeClock(start=5.0)
    wheel, fired = _wheel(clock)
    _schedule(wheel, fired, 6.03, 1)
    clock.advance(1.0)
    assert fired.at == {}
    clock.advance(0.2)
    (at,) = fired.at[1]
    assert 6.03 <= at <= 6.03 + 0.1 + 1e-9
    assert wheel.filed == 0 and clock.pending_timers == 0


def test_one_timer_serves_every_token_and_rearms_for_the_next_tick() -> None:
    clock = FakeClock()
    wheel, fired = _wheel(clock)
    _schedule(wheel, fired, 2.0, 1)
    _schedule(wheel, fired, 1.0, 2)  # earlier than the armed tick: the timer moves
    _schedule(wheel, fired, 1.0, 3)
    assert clock.pending_timers == 1
    clock.advance(1.05)
    assert set(fired.at) == {2, 3}
    assert clock.pending_timers == 1
    clock.advance(1.0)
    assert set(fired.at) == {1, 2, 3}
    assert clock.pending_timers == 0


def test_a_token_removed_from_pending_never_fires() -> None:
    clock = FakeClock()
    wheel, fired = _wheel(clock)
    _schedule(wheel, fired, 1.0, 1)
    fired.pending.discard(1)
    clock.advance(2.0)
    assert fired.at == {}
    assert wheel.filed == 0 and clock.pending_timers == 0


def test_the_tick_must_be_positive() -> None:
    with pytest.raises(ValueError, match="tick_seconds"):
        DeadlineWheel(tick_seconds=0.0, clock=FakeClock(), fire=print, pending=set())


@given(
    offsets=st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=1, max_size=30),
    removed=st.sets(st.integers(min_value=0, max_value=29)),
    steps=st.lists(st.floats(min_value=0.01, max_value=3.0), min_size=1, max_size=20),
)
def test_tokens_fire_once_never_early_and_at_most_a_tick_late(
    offsets: list[float], removed: set[int], steps: list[float]
) -> None:
    clock = FakeClock(start=100.0)
    wheel, fired = _wheel(clock, tick=0.25)
    for token, offset in enumerate(offsets):
        _schedule(wheel, fired, 100.0 + offset, token)
    fired.pending -= removed
    for step in [*steps, 11.0]:
        clock.advance(step)
    assert set(fired.at) == set(range(len(offsets))) - removed
    for token, offset in enumerate(offsets):
        if token not in removed:
            (at,) = fired.at[token]
            assert 100.0 + offset - 1e-6 <= at <= 100.0 + offset + 0.25 + 1e-6
    assert wheel.filed == 0
