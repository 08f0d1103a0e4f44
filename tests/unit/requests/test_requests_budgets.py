"""rpm / tpm budgets: the pure rolling window with a fake clock (one sample per test), then the
controller: charged at the grant, settled at release, shared account keys, timer wake-ups."""

from __future__ import annotations

import asyncio
import random

import pytest

from sluiceway.config.models import ModelConfig, ProviderConfig
from sluiceway.errors import EngineError, RequestAdmissionError
from sluiceway.providers.base import ChatMessage, GenerationKind, ModelRequest, TokenUsage
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
from sluiceway.requests.admission import (
    BudgetScope,
    DenialReason,
    RequestAdmissionDenied,
)
from sluiceway.requests.budgets import (
    DEFAULT_COMPLETION_TOKENS,
    BudgetKind,
    BudgetLimits,
    RequestBudgets,
    RollingBudget,
    estimate_request_tokens,
)
from sluiceway.requests.setup import budgets_from_config
from sluiceway.testing import FakeClock
from sluiceway.testing.providers import Reply, ScriptedProviderClient

A = ProviderModelKey(provider="p", model_id="a")
B = ProviderModelKey(provider="p", model_id="b")
CHAT_A = RequestResourceKey(provider_model=A, domain=RequestDomain.CHAT)
CHAT_B = RequestResourceKey(provider_model=B, domain=RequestDomain.CHAT)
OK = RequestReleaseOutcome.SUCCESS

# -- the pure window -----------------------------------------------------------------------


def test_charges_count_until_they_leave_the_window() -> None:
    budget = RollingBudget(BudgetKind.REQUESTS, 3, window_seconds=60.0)
    budget.charge(1, 0.0)
    budget.charge(1, 10.0)
    assert (budget.used(59.9), budget.used(60.0), budget.used(70.0)) == (2, 1, 0)


def test_a_full_window_does_not_fit_one_more() -> None:
    budget = RollingBudget(BudgetKind.REQUESTS, 2)
    budget.charge(1, 0.0)
    budget.charge(1, 1.0)
    assert not budget.fits(1, 5.0)


def test_ready_at_is_when_the_oldest_needed_charge_leaves_the_window() -> None:
    budget = RollingBudget(BudgetKind.TOKENS, 100, window_seconds=60.0)
    budget.charge(40, 0.0)
    budget.charge(40, 5.0)
    budget.charge(20, 9.0)
    assert budget.ready_at(50, 10.0) == 65.0  # 40 + 40 must go before 50 more fit
    assert budget.fits(50, 65.0)


def test_an_amount_that_fits_is_ready_now() -> None:
    budget = RollingBudget(BudgetKind.TOKENS, 100)
    budget.charge(30, 0.0)
    assert budget.ready_at(70, 1.0) == 1.0


def test_a_request_larger_than_the_budget_fits_an_empty_window_only() -> None:
    budget = RollingBudget(BudgetKind.TOKENS, 100, window_seconds=60.0)
    assert budget.fits(500, 0.0)
    budget.charge(500, 0.0)
    assert budget.ready_at(500, 1.0) == 60.0


def test_settling_a_charge_moves_used_by_the_difference() -> None:
    budget = RollingBudget(BudgetKind.TOKENS, 100)
    charge = budget.charge(80, 0.0)
    assert budget.settle(charge, 30, 1.0) == -50
    assert budget.used(1.0) == 30


def test_settling_a_charge_that_left_the_window_changes_nothing() -> None:
    budget = RollingBudget(BudgetKind.TOKENS, 100, window_seconds=60.0)
    charge = budget.charge(80, 0.0)
    assert budget.settle(charge, 500, 61.0) == 0
    assert budget.used(61.0) == 0


def test_an_earlier_reading_of_the_clock_is_read_as_the_latest_one() -> None:
    # Two readings of one step, or a timer firing a hair early, may interleave: the window
    # never moves back and nothing raises.
    budget = RollingBudget(BudgetKind.REQUESTS, 2, window_seconds=60.0)
    budget.charge(1, 5.000002)
    assert budget.fits(1, 5.000001)
    budget.charge(1, 5.000001)
    assert not budget.fits(1, 5.0)
    assert budget.ready_at(1, 5.0) == pytest.approx(65.000002)
    assert budget.used(65.000003) == 0


def test_invalid_budgets_are_refused() -> None:
    with pytest.raises(EngineError, match="rpm budget must be >= 1"):
        BudgetLimits(rpm=0)
    with pytest.raises(EngineError, match="budget key 'org'"):
        RequestBudgets(account_of={A: "org"})
    with pytest.raises(EngineError, match="limit >= 1"):
        RollingBudget(BudgetKind.TOKENS, 0)


def test_the_token_estimate_is_prompt_quarter_chars_plus_the_completion_budget() -> None:
    messages = (ChatMessage(role="user", content="x" * 41),)
    chat = ModelRequest(model_id="m", kind=GenerationKind.TEXT, messages=messages)
    capped = ModelRequest(
        model_id="m", kind=GenerationKind.TEXT, messages=messages, parameters={"max_tokens": 50}
    )
    embed = ModelRequest(model_id="m", kind=GenerationKind.EMBEDDING, inputs=("abcd", "efgh"))
    assert estimate_request_tokens(chat) == 11 + DEFAULT_COMPLETION_TOKENS
    assert estimate_request_tokens(capped) == 61
    assert estimate_request_tokens(embed) == 2


# -- the controller ------------------------------------------------------------------------


def _controller(
    budgets: RequestBudgets, caps: dict[ProviderModelKey, int] | None = None
) -> tuple[RequestAdmissionController, FakeClock]:
    clock = FakeClock(start=1000.0)
    controller = RequestAdmissionController(
        caps or {A: 8, B: 8}, clock=clock, timers=clock, budgets=budgets
    )
    return controller, clock


def _item(resource: RequestResourceKey = CHAT_A, tokens: int = 0) -> RequestAdmissionItem:
    return RequestAdmissionItem(resource=resource, estimated_tokens=tokens)


def _lease(result: object) -> RequestAdmissionLease:
    assert isinstance(result, RequestAdmissionLease), result
    return result


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_try_acquire_is_refused_by_a_spent_rpm_budget_and_says_when_it_has_room() -> None:
    controller, clock = _controller(RequestBudgets(models={A: BudgetLimits(rpm=2)}))
    first = _lease(controller.try_acquire(_item()))
    clock.advance(5.0)
    _lease(controller.try_acquire(_item()))
    controller.release(first, OK)  # releasing does not refund a request already sent
    denied = controller.try_acquire(_item())
    assert denied == RequestAdmissionDenied(
        reason=DenialReason.NO_CAPACITY, budget_ready_at=1061.2
    )  # window + 2% margin
    assert controller.has_capacity(CHAT_A) is False
    pool = controller.pressure.snapshot().provider_models[A]
    assert pool.headroom == 0 and pool.budget_blocked
    (budget,) = pool.budgets
    assert (budget.scope, budget.kind, budget.limit, budget.used) == (
        BudgetScope.MODEL,
        BudgetKind.REQUESTS,
        2,
        2,
    )
    assert budget.ready_in_seconds == pytest.approx(56.2)
    assert controller.statistics().provider_models[A].budget_denials == 1


async def test_a_waiter_held_by_a_budget_is_woken_by_the_window_timer() -> None:
    controller, clock = _controller(RequestBudgets(models={A: BudgetLimits(rpm=1)}))
    controller.release(_lease(controller.try_acquire(_item())), OK)
    waiter = asyncio.create_task(controller.acquire(_item()))
    await _settle()
    assert not waiter.done() and clock.next_deadline() == pytest.approx(1061.2)
    clock.advance(61.15)
    await _settle()
    assert not waiter.done()
    clock.advance(0.1)
    await _settle()
    controller.release(waiter.result(), OK)
    assert controller.statistics().live_leases == 0


async def test_tokens_are_reserved_at_the_grant_and_settled_to_the_reported_usage() -> None:
    controller, _ = _controller(RequestBudgets(models={A: BudgetLimits(tpm=1000)}))
    assert controller.reserves_tokens(CHAT_A) and not controller.reserves_tokens(CHAT_B)
    lease = _lease(controller.try_acquire(_item(tokens=800)))
    assert lease.reserved_tokens == 800
    assert isinstance(controller.try_acquire(_item(tokens=300)), RequestAdmissionDenied)
    waiter = asyncio.create_task(controller.acquire(_item(tokens=300)))
    await _settle()
    assert not waiter.done()
    # The answer used 150 tokens, not 800: the release makes room and grants the waiter.
    controller.release(lease, OK, usage_tokens=150)
    await _settle()
    second = waiter.result()
    (budget,) = controller.pressure.snapshot().provider_models[A].budgets
    assert budget.used == 450
    controller.release(second, RequestReleaseOutcome.PROVIDER_FAILURE)  # no usage: estimate stays
    assert controller.pressure.snapshot().provider_models[A].budgets[0].used == 450


async def test_an_account_budget_is_shared_by_its_models_and_a_settle_wakes_the_other() -> None:
    budgets = RequestBudgets(
        accounts={"org": BudgetLimits(tpm=1000)}, account_of={A: "org", B: "org"}
    )
    controller, _ = _controller(budgets)
    lease = _lease(controller.try_acquire(_item(CHAT_A, tokens=900)))
    waiter = asyncio.create_task(controller.acquire(_item(CHAT_B, tokens=500)))
    await _settle()
    assert not waiter.done()
    snapshot = controller.pressure.snapshot()
    assert snapshot.provider_models[B].budgets[0].scope is BudgetScope.ACCOUNT
    assert snapshot.provider_models[B].budgets[0].used == 900
    controller.release(lease, OK, usage_tokens=100)  # model a's settle frees room for model b
    await _settle()
    controller.release(waiter.result(), OK, usage_tokens=400)
    assert controller.pressure.snapshot().provider_models[A].budgets[0].used == 500


async def test_a_grant_cancelled_before_it_ran_takes_its_budget_charges_back() -> None:
    controller, _ = _controller(RequestBudgets(models={A: BudgetLimits(rpm=2)}), caps={A: 1})
    held = _lease(controller.try_acquire(_item()))
    first = asyncio.create_task(controller.acquire(_item()))
    await _settle()
    controller.release(held, OK)  # grants ``first``; it is cancelled before it can run
    first.cancel()
    await _settle()
    assert first.cancelled()
    stats = controller.statistics()
    assert stats.grants_returned_on_cancel == 1 and stats.live_leases == 0
    # Only ``held`` went out: one request of the two left.
    assert controller.pressure.snapshot().provider_models[A].budgets[0].used == 1
    _lease(controller.try_acquire(_item()))


async def test_a_queue_wait_timeout_names_the_spent_budget() -> None:
    controller, clock = _controller(RequestBudgets(models={A: BudgetLimits(rpm=1)}))
    controller.release(_lease(controller.try_acquire(_item())), OK)
    item = RequestAdmissionItem(resource=CHAT_A, queue_wait_timeout_seconds=0.5)
    waiter = asyncio.create_task(controller.acquire(item))
    await _settle()
    clock.advance(0.5)  # the queue-wait timeout runs on the controller's timers
    await _settle()
    with pytest.raises(RequestAdmissionError, match=r"budgets spent: p/a rpm 1/1"):
        waiter.result()


def test_negative_usage_is_refused_before_anything_changes() -> None:
    controller, _ = _controller(RequestBudgets(models={A: BudgetLimits(tpm=100)}))
    lease = _lease(controller.try_acquire(_item(tokens=10)))
    with pytest.raises(EngineError, match="usage_tokens=-1"):
        controller.release(lease, OK, usage_tokens=-1)
    assert controller.release(lease, OK, usage_tokens=5).released


def test_budgets_for_unknown_models_are_refused() -> None:
    with pytest.raises(EngineError, match="p/b"):
        RequestAdmissionController({A: 1}, budgets=RequestBudgets(models={B: BudgetLimits(rpm=1)}))


def test_budgets_from_config_per_model_and_per_account_key() -> None:
    providers = [
        ProviderConfig(name="p", type="simulated"),
        ProviderConfig(name="org1", type="simulated", budget_key="org"),
        ProviderConfig(name="org2", type="simulated", budget_key="org"),
    ]
    models = [
        ModelConfig(alias="a1", provider="p", model="a", rpm=100),
        ModelConfig(alias="a2", provider="p", model="a", rpm=60, tpm=5000),
        ModelConfig(alias="x", provider="org1", model="x", tpm=9000),
        ModelConfig(alias="y", provider="org2", model="y", rpm=30, tpm=7000),
        ModelConfig(alias="free", provider="p", model="free"),
    ]
    budgets = budgets_from_config(providers, models)
    assert budgets is not None
    assert dict(budgets.models) == {A: BudgetLimits(rpm=60, tpm=5000)}
    assert dict(budgets.accounts) == {"org": BudgetLimits(rpm=30, tpm=7000)}
    assert dict(budgets.account_of) == {
        ProviderModelKey(provider="org1", model_id="x"): "org",
        ProviderModelKey(provider="org2", model_id="y"): "org",
    }
    assert budgets_from_config(providers, [ModelConfig(alias="f", provider="p", model="f")]) is None


async def test_the_executor_reserves_an_estimate_and_settles_the_reported_usage() -> None:
    controller, _ = _controller(RequestBudgets(models={A: BudgetLimits(tpm=10_000)}))
    executor = ModelRequestExecutor(controller, retry=RetryPolicy(), rng=random.Random(3))
    request = ModelRequest(
        model_id="a",
        kind=GenerationKind.TEXT,
        messages=(ChatMessage(role="user", content="y" * 400),),
        parameters={"max_tokens": 900},
    )
    client = ScriptedProviderClient(
        [Reply(text="short", usage=TokenUsage(prompt_tokens=100, completion_tokens=20))]
    )
    await executor.execute(CHAT_A, client, request)
    (budget,) = controller.statistics().provider_models[A].budgets
    # 100 prompt + 900 completion tokens reserved at the grant, settled to the 120 reported.
    assert (budget.charged_total, budget.settled_total, budget.used) == (1000, -880, 120)


class _TickingClock(FakeClock):
    """A fake clock whose every reading is a microsecond after the last, as a real one is."""

    def __call__(self) -> float:
        self.now += 1e-6
        return self.now


async def test_waiters_granted_in_one_step_are_checked_at_the_instant_they_are_charged() -> None:
    clock = _TickingClock(start=1000.0)
    controller = RequestAdmissionController(
        {A: 8}, clock=clock, timers=clock, budgets=RequestBudgets(models={A: BudgetLimits(tpm=30)})
    )
    first = _lease(controller.try_acquire(_item(tokens=10)))
    second = _lease(controller.try_acquire(_item(tokens=10)))
    third = _lease(controller.try_acquire(_item(tokens=10)))
    waiters = [asyncio.create_task(controller.acquire(_item(tokens=10))) for _ in range(3)]
    await _settle()
    assert not any(waiter.done() for waiter in waiters)
    for lease in (first, second, third):
        controller.release(lease, OK, usage_tokens=10)
    clock.advance(61.2)  # the window's timer grants all three waiters in one step
    await _settle()
    leases = [waiter.result() for waiter in waiters]
    assert [lease.reserved_tokens for lease in leases] == [10, 10, 10]
    for lease in leases:
        controller.release(lease, OK, usage_tokens=10)
    assert controller.statistics().live_leases == 0
