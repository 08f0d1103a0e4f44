"""Stateful property test of adaptive timeouts and hedged attempts: whatever happens first
(an answer, an error, an adaptive deadline, a hedge delay, a cancellation of the call), every
lease is released exactly once and no hedge outlives its call.

Calls run through ``ModelRequestExecutor.execute`` with both adaptive timeouts and hedging on
(every attempt may be hedged), against a controller with a small cap and a fake clock whose
``advance`` runs the deadline timers. Attempts end when the test says, as success or failure;
an attempt nobody ends hangs until its deadline or its cancellation. After every step: every
live lease belongs to an attempt in flight; in flight never exceeds the cap; hedges never
exceed the attempts. At the end nothing is left.
"""

from __future__ import annotations

import asyncio
import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sluiceway.errors import NonRetryableGenerationError, ProviderUnavailableError
from sluiceway.providers.base import GenerationKind, ModelRequest, ModelResponse
from sluiceway.requests import (
    ModelRequestExecutor,
    ProviderModelKey,
    RequestAdmissionController,
    RequestDomain,
    RequestResourceKey,
    RetryPolicy,
)
from sluiceway.requests.latency import StragglerSettings
from sluiceway.testing import FakeClock

KEY = ProviderModelKey(provider="p", model_id="m")
CHAT = RequestResourceKey(provider_model=KEY, domain=RequestDomain.CHAT)
CAP = 3
REQUEST = ModelRequest(model_id="m", kind=GenerationKind.TEXT, timeout_seconds=30.0)
SETTINGS = StragglerSettings(
    min_samples=1, min_timeout_seconds=1.0, hedging=True, hedge_budget_ratio=1.0, hedge_burst=2
)


class GatedClient:
    """Each ``send`` waits until the test ends it (or it is cancelled)."""

    name = "gated"

    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[bool]] = []
        self.in_flight = 0

    async def send(self, request: ModelRequest) -> ModelResponse:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.in_flight += 1
        try:
            succeeded = await future
        finally:
            self.in_flight -= 1
            if future in self.waiting:
                self.waiting.remove(future)
        if not succeeded:
            raise ProviderUnavailableError("500")
        return ModelResponse(text="ok")

    async def aclose(self) -> None:
        return None


class StragglerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock(start=1.0)
        self.controller = RequestAdmissionController(
            {KEY: CAP}, clock=self.clock, timers=self.clock
        )
        self.client = GatedClient()

        async def no_sleep(seconds: float) -> None:
            return None

        self.executor = ModelRequestExecutor(
            self.controller,
            retry=RetryPolicy(max_attempts=3),
            rng=random.Random(1),
            clock=self.clock,
            sleep=no_sleep,
            stragglers=SETTINGS,
            timers=self.clock,
        )
        self.calls: list[asyncio.Task[ModelResponse]] = []

    def _settle(self) -> None:
        for _ in range(6):
            self.loop.run_until_complete(asyncio.sleep(0))
        for call in [c for c in self.calls if c.done()]:
            self.calls.remove(call)
            if not call.cancelled():
                error = call.exception()
                assert error is None or isinstance(error, NonRetryableGenerationError), error

    @rule()
    def start_a_call(self) -> None:
        self.calls.append(self.loop.create_task(self.executor.execute(CHAT, self.client, REQUEST)))
        self._settle()

    @precondition(lambda self: self.client.waiting)
    @rule(
        index=st.integers(min_value=0),
        succeeded=st.booleans(),
        latency=st.sampled_from([0.1, 0.3]),
    )
    def end_an_attempt(self, index: int, succeeded: bool, latency: float) -> None:
        self.clock.advance(latency)  # runs due deadlines first, like a real loop would
        # A deadline that fired has cancelled its attempt's future already.
        open_ = [future for future in self.client.waiting if not future.done()]
        if open_:
            open_[index % len(open_)].set_result(succeeded)
        self._settle()

    @rule(seconds=st.sampled_from([0.2, 0.5, 1.1, 3.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self._settle()

    @precondition(lambda self: self.calls)
    @rule(victim=st.integers(min_value=0))
    def cancel_a_call(self, victim: int) -> None:
        self.calls[victim % len(self.calls)].cancel()
        self._settle()

    @invariant()
    def every_lease_is_an_attempt_in_flight(self) -> None:
        stats = self.controller.statistics()
        assert stats.live_leases == stats.in_flight == self.client.in_flight
        assert stats.in_flight <= CAP
        assert stats.granted_total == stats.released_total + stats.live_leases
        executor = self.executor.statistics()
        assert executor.hedges_started <= executor.attempts - executor.hedges_started
        ended = executor.hedges_won + executor.hedges_lost + executor.hedges_failed
        assert ended <= executor.hedges_started

    def teardown(self) -> None:
        try:
            for call in self.calls:
                call.cancel()
            self._settle()
            stats = self.controller.statistics()
            assert stats.live_leases == stats.in_flight == stats.waiters == 0
            assert stats.granted_total == stats.released_total
            assert stats.release_diagnostics == 0
            executor = self.executor.statistics()
            assert executor.release_diagnostics == 0
            assert (
                executor.hedges_won + executor.hedges_lost + executor.hedges_failed
                == executor.hedges_started
            )
            assert not [task for task in asyncio.all_tasks(self.loop) if not task.done()]
        finally:
            self.loop.close()


StragglerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestStragglerMachine = StragglerMachine.TestCase
