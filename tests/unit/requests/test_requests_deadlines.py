"""The deadline wheel on a fake clock: entries fire within one tick after their time, never
before, done entries never fire, and one timer serves them all."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway.requests.deadlines import DeadlineWheel
from sluiceway.testing import FakeClock


@dataclass(eq=False)
class Entry:
    clock: FakeClock
    done: bool = False
    fired_at: list[float] = field(default_factory=list)

    def fire(self) -> None:
        self.fired_at.append(self.clock.now)


def _wheel(clock: FakeClock, tick: float = 0.1) -> DeadlineWheel:
    return DeadlineWheel(tick_seconds=tick, clock=clock, timers=clock)


def test_an_entry_fires_within_one_tick_after_its_time() -> None:
    clock = FakeClock(start=5.0)
    wheel = _wheel(clock)
    entry = Entry(clock)
    wheel.schedule(6.03, entry)
    clock.advance(1.0)
    assert entry.fired_at == []
    clock.advance(0.2)
    assert len(entry.fired_at) == 1 and 6.03 <= entry.fired_at[0] <= 6.03 + 0.1 + 1e-9
    assert entry.done and wheel.pending == 0


def test_a_done_entry_never_fires() -> None:
    clock = FakeClock()
    wheel = _wheel(clock)
    entry = Entry(clock)
    wheel.schedule(1.0, entry)
    entry.done = True
    clock.advance(2.0)
    assert entry.fired_at == []
    assert wheel.pending == 0 and clock.pending_timers == 0


def test_one_timer_serves_every_entry_and_rearms_for_the_next_tick() -> None:
    clock = FakeClock()
    wheel = _wheel(clock)
    late, early, same = Entry(clock), Entry(clock), Entry(clock)
    wheel.schedule(2.0, late)
    wheel.schedule(1.0, early)  # earlier than the armed tick: the timer moves
    wheel.schedule(1.0, same)
    assert clock.pending_timers == 1
    clock.advance(1.05)
    assert early.fired_at and same.fired_at and not late.fired_at
    assert clock.pending_timers == 1
    clock.advance(1.0)
    assert late.fired_at
    assert clock.pending_timers == 0


def test_the_tick_must_be_positive() -> None:
    with pytest.raises(ValueError, match="tick_seconds"):
        DeadlineWheel(tick_seconds=0.0, clock=FakeClock(), timers=FakeClock())


@given(
    offsets=st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=1, max_size=30),
    cancelled=st.lists(st.booleans(), min_size=30, max_size=30),
    steps=st.lists(st.floats(min_value=0.01, max_value=3.0), min_size=1, max_size=20),
)
def test_entries_fire_once_never_early_and_at_most_a_tick_late(
    offsets: list[float], cancelled: list[bool], steps: list[float]
) -> None:
    clock = FakeClock(start=100.0)
    wheel = _wheel(clock, tick=0.25)
    entries = []
    for offset, cancel in zip(offsets, cancelled, strict=False):
        entry = Entry(clock)
        wheel.schedule(100.0 + offset, entry)
        entry.done = cancel
        entries.append((100.0 + offset, cancel, entry))
    for step in [*steps, 11.0]:
        clock.advance(step)
    for when, cancel, entry in entries:
        if cancel:
            assert entry.fired_at == []
        else:
            (fired,) = entry.fired_at
            assert when - 1e-6 <= fired <= when + 0.25 + 1e-6
    assert wheel.pending == 0
