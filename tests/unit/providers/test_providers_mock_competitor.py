"""The mock server's competing client on a fake clock: slots held, 429s answered politely or at
once, the end of its load, and the text form of its settings."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

import pytest

from sluiceway.errors import ConfigError
from sluiceway.providers.behaviour import AttemptOutcome, BehaviourModel, SimulationSettings
from sluiceway.providers.mock_competitor import (
    CompetingClient,
    CompetitorLedger,
    CompetitorMode,
    CompetitorSettings,
    parse_competitor,
)

LATENCY = 0.2


class FakeTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimers:
    """A clock that moves only when told; due callbacks run in time order."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, FakeTimer, Callable[[], object]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer()
        heapq.heappush(self._queue, (when, next(self._order), timer, callback))
        return timer

    def advance_to(self, when: float) -> None:
        while self._queue and self._queue[0][0] <= when:
            at, _, timer, callback = heapq.heappop(self._queue)
            self.now = max(self.now, at)
            if not timer.cancelled:
                callback()
        self.now = when

    @property
    def pending(self) -> int:
        return sum(not timer.cancelled for _, _, timer, _ in self._queue)


def _competitor(
    timers: FakeTimers,
    behaviour: BehaviourModel,
    *,
    slots: int,
    mode: CompetitorMode = CompetitorMode.POLITE,
    end_at: float = 100.0,
    interval: float = 0.01,
) -> tuple[CompetingClient, CompetitorLedger]:
    ledger = CompetitorLedger()
    settings = CompetitorSettings(
        duration_seconds=end_at, slots=slots, mode=mode, retry_interval_seconds=interval
    )
    client = CompetingClient(
        settings, behaviour, ledger, timers, end_at=end_at, latency_seconds=LATENCY
    )
    return client, ledger


def _behaviour(capacity: int, retry_after_seconds: float = 1.0) -> BehaviourModel:
    return BehaviourModel(
        SimulationSettings(capacity=capacity, retry_after_seconds=retry_after_seconds), 1
    )


def test_it_holds_its_slots_one_latency_per_request_and_sends_the_next_at_once() -> None:
    timers = FakeTimers()
    behaviour = _behaviour(capacity=4)
    client, ledger = _competitor(timers, behaviour, slots=3)
    client.start()
    assert ledger.in_flight == 3 and ledger.requests == 3
    assert behaviour.admit(0.0) is None  # the fourth slot is the client's
    assert behaviour.admit(0.0) is not None
    timers.advance_to(LATENCY * 10 + 0.01)
    stats = ledger.statistics(timers.now)
    assert (stats.completed, stats.in_flight, stats.rate_limited) == (30, 3, 0)
    assert stats.in_flight_seconds == pytest.approx(3 * timers.now)
    assert behaviour.statistics().requests == 2  # none of its requests count as the client's


def test_polite_waits_out_the_retry_after_before_asking_again() -> None:
    timers = FakeTimers()
    behaviour = _behaviour(capacity=2, retry_after_seconds=1.5)
    assert behaviour.admit(0.0) is None
    assert behaviour.admit(0.0) is None
    client, ledger = _competitor(timers, behaviour, slots=2)
    client.start()
    assert (ledger.requests, ledger.rate_limited) == (2, 2)  # both slots asked, both refused
    behaviour.finish(0.1, AttemptOutcome.SUCCESS)
    timers.advance_to(1.49)
    assert ledger.requests == 2  # a slot freed, but it is backing off
    timers.advance_to(1.5)
    assert (ledger.in_flight, ledger.rate_limited, ledger.requests) == (1, 3, 4)


def test_retry_at_once_takes_a_freed_slot_within_its_retry_interval() -> None:
    timers = FakeTimers()
    behaviour = _behaviour(capacity=2, retry_after_seconds=5.0)
    assert behaviour.admit(0.0) is None
    assert behaviour.admit(0.0) is None
    client, ledger = _competitor(
        timers, behaviour, slots=2, mode=CompetitorMode.RETRY_AT_ONCE, interval=0.01
    )
    client.start()
    timers.advance_to(0.095)
    assert ledger.rate_limited == 2 * 10  # two slots refused at 0, 0.01, ..., 0.09
    behaviour.finish(0.095, AttemptOutcome.SUCCESS)
    timers.advance_to(0.1)
    assert ledger.in_flight == 1
    assert behaviour.admit(0.1) is not None  # the client lost the slot it freed


def test_at_its_end_it_sends_nothing_more_and_its_slots_free_as_answers_come() -> None:
    timers = FakeTimers()
    behaviour = _behaviour(capacity=3)
    client, ledger = _competitor(timers, behaviour, slots=3, end_at=1.0)
    client.start()
    timers.advance_to(1.0)  # the answers due at 1.0 find the load over
    assert ledger.in_flight == 0
    assert all(behaviour.admit(1.0) is None for _ in range(3))
    timers.advance_to(5.0)
    assert ledger.requests == ledger.completed == 15
    assert timers.pending == 0


def test_stop_cancels_its_retry_and_lets_its_requests_in_flight_end() -> None:
    timers = FakeTimers()
    behaviour = _behaviour(capacity=2)
    assert behaviour.admit(0.0) is None
    client, ledger = _competitor(timers, behaviour, slots=2)
    client.start()
    assert (ledger.in_flight, ledger.rate_limited) == (1, 1)
    client.stop()
    timers.advance_to(10.0)
    assert (ledger.in_flight, ledger.completed, ledger.requests) == (0, 1, 2)
    assert timers.pending == 0


def test_the_text_form_reads_every_key() -> None:
    settings = parse_competitor(
        "start=2.5, duration=10, slots=24, mode=retry-at-once, model=m-1, latency=0.3, "
        "interval=0.004, tokens=120",
        source="--competitor",
    )
    assert settings == CompetitorSettings(
        start_seconds=2.5,
        duration_seconds=10.0,
        slots=24,
        mode=CompetitorMode.RETRY_AT_ONCE,
        model="m-1",
        latency_seconds=0.3,
        retry_interval_seconds=0.004,
        tokens_per_request=120,
    )
    assert parse_competitor("duration=inf,slots=1", source="x").mode is CompetitorMode.POLITE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("duration=10", "slots missing"),
        ("slots=2,duration=1,colour=red", "'colour=red' is not one of"),
        ("slots=two,duration=1", "slots='two' is not a valid value"),
        ("slots=2,duration=1,mode=rude", "mode='rude' is not a valid value"),
        ("slots=0,duration=1", "slots 0 must be >= 1"),
        ("slots=1,duration=0", "duration 0.0 must be > 0"),
    ],
)
def test_a_bad_text_form_is_a_config_error_naming_the_flag_and_value(
    text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_competitor(text, source="--competitor")
    assert "competitor" in str(caught.value)
