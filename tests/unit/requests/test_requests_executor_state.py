"""Stateful property test of the executor: cancellation injected at every await point leaks
nothing.

Model calls run through ``ModelRequestExecutor.execute`` against a controller with a small cap
and an rpm budget. A call can be cancelled while it waits for a lease, right after its lease was
granted (before it resumed), while its attempt is in flight, and while it sleeps between
attempts. Attempts end as success, rate limit, overload (503) or provider failure. After every
step: every live lease belongs to an attempt in flight or to the test; in flight never exceeds
the cap; every grant is live or released once. At the end nothing is left.
"""

from __future__ import annotations

import asyncio
import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sluiceway.errors import (
    NonRetryableGenerationError,
    ProviderOverloadedError,
    ProviderUnavailableError,
    RateLimitedError,
)
from sluiceway.providers.base import GenerationKind, ModelRequest, ModelResponse, TokenUsage
from sluiceway.requests import (
    ModelRequestExecutor,
    ProviderModelKey,
    RequestAdmissionController,
    RequestAdmissionItem,
    RequestAdmissionLease,
    RequestDomain,
    RequestReleaseOutcome,
    RequestResourceKey,
    RetryPolicy,
)
from sluiceway.requests.budgets import BudgetLimits, RequestBudgets

KEY = ProviderModelKey(provider="p", model_id="m")
CHAT = RequestResourceKey(provider_model=KEY, domain=RequestDomain.CHAT)
CAP = 2
REQUEST = ModelRequest(model_id="m", kind=GenerationKind.TEXT, parameters={"max_tokens": 5})
ENDINGS = ("success", "rate_limited", "overloaded", "failure")


class GatedClient:
    """Each ``send`` waits until the test says how it ends."""

    name = "gated"

    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[str]] = []
        self.in_flight = 0

    async def send(self, request: ModelRequest) -> ModelResponse:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.in_flight += 1
        try:
            ending = await future
        finally:
            self.in_flight -= 1
            if future in self.waiting:
                self.waiting.remove(future)
        if ending == "rate_limited":
            raise RateLimitedError("429", retry_after_seconds=0.0)
        if ending == "overloaded":
            raise ProviderOverloadedError("503", retry_after_seconds=None)
        if ending == "failure":
            raise ProviderUnavailableError("500")
        return ModelResponse(text="ok", usage=TokenUsage(prompt_tokens=1, completion_tokens=2))

    async def aclose(self) -> None:
        return None


class GatedSleep:
    """The executor's sleep between attempts: blocks until the test wakes the sleepers."""

    def __init__(self) -> None:
        self.sleepers: list[asyncio.Future[None]] = []

    async def __call__(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sleepers.append(future)
        try:
            await future
        finally:
            if future in self.sleepers:
                self.sleepers.remove(future)


class ExecutorCancellationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = 0.0
        self.controller = RequestAdmissionController(
            {KEY: CAP},
            clock=lambda: self.now,
            budgets=RequestBudgets(models={KEY: BudgetLimits(tpm=10_000)}),
        )
        self.client = GatedClient()
        self.sleep = GatedSleep()
        self.executor = ModelRequestExecutor(
            self.controller,
            retry=RetryPolicy(max_attempts=3),
            rng=random.Random(1),
            clock=lambda: self.now,
            sleep=self.sleep,
        )
        self.calls: list[asyncio.Task[ModelResponse]] = []
        self.held: list[RequestAdmissionLease] = []

    def _settle(self) -> None:
        for _ in range(4):
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

    @precondition(lambda self: len(self.held) + self.controller.statistics().in_flight < CAP)
    @rule()
    def hold_a_lease(self) -> None:
        result = self.controller.try_acquire(RequestAdmissionItem(resource=CHAT))
        if isinstance(result, RequestAdmissionLease):
            self.held.append(result)

    @precondition(lambda self: self.held)
    @rule(cancel=st.booleans(), victim=st.integers(min_value=0))
    def release_a_held_lease(self, cancel: bool, victim: int) -> None:
        """Release; optionally cancel a call at once, before the waiter granted can resume."""
        assert self.controller.release(self.held.pop(), RequestReleaseOutcome.SUCCESS).released
        if cancel and self.calls:
            self.calls[victim % len(self.calls)].cancel()
        self._settle()

    @precondition(lambda self: self.client.waiting)
    @rule(index=st.integers(min_value=0), ending=st.sampled_from(ENDINGS))
    def end_an_attempt(self, index: int, ending: str) -> None:
        self.client.waiting[index % len(self.client.waiting)].set_result(ending)
        self._settle()

    @precondition(lambda self: self.sleep.sleepers)
    @rule()
    def wake_the_sleepers(self) -> None:
        self.now += 1.0
        for sleeper in list(self.sleep.sleepers):
            sleeper.set_result(None)
        self._settle()

    @precondition(lambda self: self.calls)
    @rule(victim=st.integers(min_value=0))
    def cancel_a_call(self, victim: int) -> None:
        # Wherever it is: waiting for a lease, in flight, or sleeping before a retry.
        self.calls[victim % len(self.calls)].cancel()
        self._settle()

    @invariant()
    def every_lease_is_an_attempt_in_flight_or_held(self) -> None:
        stats = self.controller.statistics()
        assert stats.live_leases == stats.in_flight == self.client.in_flight + len(self.held)
        assert stats.in_flight <= CAP
        assert stats.granted_total == stats.released_total + stats.live_leases
        if stats.waiters:
            assert stats.in_flight == CAP

    def teardown(self) -> None:
        try:
            for call in self.calls:
                call.cancel()
            self._settle()
            for lease in self.held:
                assert self.controller.release(lease, RequestReleaseOutcome.SUCCESS).released
            stats = self.controller.statistics()
            assert stats.live_leases == stats.in_flight == stats.waiters == 0
            assert stats.granted_total == stats.released_total
            assert stats.release_diagnostics == 0
            assert self.executor.statistics().release_diagnostics == 0
        finally:
            self.loop.close()


ExecutorCancellationMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None
)
TestExecutorCancellationMachine = ExecutorCancellationMachine.TestCase
