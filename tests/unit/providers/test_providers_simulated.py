"""The in-process simulated provider: answers, refusals, faults, timeouts and cancellation."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jsonschema
import pytest

from sluiceway.errors import (
    BadRequestError,
    EngineError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
)
from sluiceway.providers.base import ChatMessage, GenerationKind, ModelRequest, ProviderClient
from sluiceway.providers.behaviour import SimulationSettings
from sluiceway.providers.simulated import SimulatedProvider

HOUR_SECONDS = 3600.0
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["title", "rating"],
    "additionalProperties": False,
}


class SteppingClock:
    """A clock that counts its reads, so tests can wait until a send has been admitted."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        self.reads += 1
        for waiter in [w for w in self._waiters if w[0] <= self.reads]:
            self._waiters.remove(waiter)
            if not waiter[1].done():
                waiter[1].set_result(None)
        return self.now

    async def wait_for_reads(self, count: int) -> None:
        if self.reads >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((count, future))
        await future


def _request(
    prompt: str = "Name a river.",
    *,
    kind: GenerationKind = GenerationKind.TEXT,
    schema: dict[str, Any] | None = None,
    timeout_seconds: float | None = None,
) -> ModelRequest:
    return ModelRequest(
        model_id="sim-model",
        kind=kind,
        messages=(ChatMessage(role="user", content=prompt),),
        json_schema=schema,
        timeout_seconds=timeout_seconds,
    )


def _provider(
    seed: int = 3, *, clock: SteppingClock | None = None, track: bool = False, **settings: Any
) -> SimulatedProvider:
    return SimulatedProvider(
        "sim", SimulationSettings(**settings), seed=seed, clock=clock, track_requests=track
    )


async def test_text_answers_are_deterministic_per_seed() -> None:
    first = await _provider(seed=3).send(_request())
    assert first.text
    assert first == await _provider(seed=3).send(_request())
    assert first.text != (await _provider(seed=4).send(_request())).text


async def test_zero_latency_send_completes_without_yielding_to_the_loop() -> None:
    provider = _provider()
    coroutine = provider.send(_request())
    with pytest.raises(StopIteration) as finished:
        coroutine.send(None)  # one step runs the whole attempt: no asyncio.sleep on this path
    assert finished.value.value.text
    assert provider.statistics().successes == 1


async def test_structured_answers_validate_against_the_request_schema() -> None:
    provider = _provider()
    for index in range(20):
        response = await provider.send(
            _request(f"Review {index}", kind=GenerationKind.STRUCTURED, schema=SCHEMA)
        )
        jsonschema.validate(json.loads(response.text or ""), SCHEMA)


async def test_capacity_refuses_the_third_concurrent_send_and_cancellation_frees_slots() -> None:
    clock = SteppingClock()
    provider = _provider(clock=clock, capacity=2, latency_seconds=HOUR_SECONDS)
    slow = [asyncio.create_task(provider.send(_request(f"slow {i}"))) for i in range(2)]
    await clock.wait_for_reads(2)  # both admitted (the admit read) and now waiting out latency
    with pytest.raises(RateLimitedError, match="capacity") as refused:
        await provider.send(_request("third"))
    assert refused.value.retry_after_seconds == 1.0
    stats = provider.statistics()
    assert (stats.in_flight, stats.rate_limited, stats.max_in_flight) == (2, 1, 2)

    for task in slow:
        task.cancel()
    for task in slow:
        with pytest.raises(asyncio.CancelledError):
            await task
    stats = provider.statistics()
    assert (stats.in_flight, stats.cancelled) == (0, 2)


async def test_cancelled_send_gives_its_slot_to_the_next_request() -> None:
    clock = SteppingClock()
    provider = _provider(clock=clock, capacity=1, latency_seconds=HOUR_SECONDS)
    blocked = asyncio.create_task(provider.send(_request("blocked")))
    await clock.wait_for_reads(1)
    with pytest.raises(RateLimitedError):
        await provider.send(_request("refused"))
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert provider.statistics().in_flight == 0
    retry = asyncio.create_task(provider.send(_request("admitted")))
    await clock.wait_for_reads(clock.reads + 1)
    assert provider.statistics().in_flight == 1
    retry.cancel()
    with pytest.raises(asyncio.CancelledError):
        await retry


async def test_rpm_window_refuses_with_the_time_until_a_slot_frees() -> None:
    clock = SteppingClock()
    provider = _provider(clock=clock, rpm=2)
    await provider.send(_request("one"))
    clock.now = 15.0
    await provider.send(_request("two"))
    clock.now = 20.0
    with pytest.raises(RateLimitedError, match="rpm") as refused:
        await provider.send(_request("three"))
    assert refused.value.retry_after_seconds == pytest.approx(40.0)
    clock.now = 60.0
    assert (await provider.send(_request("three"))).text


async def test_failure_rate_one_always_fails() -> None:
    provider = _provider(failure_rate=1.0)
    for _ in range(5):
        with pytest.raises(ProviderUnavailableError, match="injected server error"):
            await provider.send(_request())
    stats = provider.statistics()
    assert (stats.failures, stats.successes, stats.in_flight) == (5, 0, 0)


async def test_retries_of_a_failing_request_draw_fresh_faults() -> None:
    provider = _provider(failure_rate=0.5)
    request = _request()
    outcomes = []
    for _ in range(30):
        try:
            await provider.send(request)
        except ProviderUnavailableError:
            outcomes.append("fail")
        else:
            outcomes.append("ok")
            break
    assert outcomes[-1] == "ok"
    # The same seed replays the same sequence of attempts.
    replay = _provider(failure_rate=0.5)
    for expected in outcomes:
        if expected == "fail":
            with pytest.raises(ProviderUnavailableError):
                await replay.send(request)
        else:
            assert (await replay.send(request)).text


async def test_invalid_json_until_an_attempt_answers_valid_json() -> None:
    provider = _provider(invalid_json_rate=0.5)
    request = _request(kind=GenerationKind.STRUCTURED, schema=SCHEMA)
    invalid = 0
    for _ in range(40):
        text = (await provider.send(request)).text or ""
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            invalid += 1
            continue
        jsonschema.validate(value, SCHEMA)
        break
    else:
        pytest.fail("no valid JSON answer in 40 attempts at invalid_json_rate=0.5")
    assert provider.statistics().invalid_json == invalid
    assert provider.statistics().successes == 1


async def test_latency_above_the_timeout_waits_the_timeout_then_raises() -> None:
    provider = _provider(latency_seconds=HOUR_SECONDS)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ProviderTimeoutError, match=r"timeout_seconds=0\.01\b"):
        await provider.send(_request(timeout_seconds=0.01))
    # The loop may run a timer up to its clock resolution early.
    assert loop.time() - started >= 0.01 - time.get_clock_info("monotonic").resolution
    with pytest.raises(ProviderTimeoutError):
        await provider.send(_request(timeout_seconds=0.0))
    stats = provider.statistics()
    assert (stats.timeouts, stats.in_flight) == (2, 0)


async def test_bad_requests_are_rejected_and_release_their_slot() -> None:
    provider = _provider(capacity=1)
    with pytest.raises(BadRequestError):
        await provider.send(ModelRequest(model_id="e", kind=GenerationKind.EMBEDDING))
    stats = provider.statistics()
    assert (stats.rejected, stats.in_flight) == (1, 0)


async def test_embeddings_through_send() -> None:
    provider = _provider(embedding_dimensions=8)
    response = await provider.send(
        ModelRequest(model_id="e", kind=GenerationKind.EMBEDDING, inputs=("a", "b"))
    )
    assert [len(vector) for vector in response.embeddings] == [8, 8]


async def test_completed_request_keys_count_answers_by_content_hash() -> None:
    provider = _provider(track=True)
    first, second = _request("first"), _request("second")
    for request in (first, second, first):
        await provider.send(request)
    counts = provider.completed_request_keys()
    assert counts == {provider.request_key_hex(first): 2, provider.request_key_hex(second): 1}
    counts.clear()  # a copy: the provider's record is untouched
    assert sum(provider.completed_request_keys().values()) == 3


async def test_completed_request_keys_need_tracking() -> None:
    provider = _provider()
    await provider.send(_request())
    with pytest.raises(EngineError, match="track_requests=True"):
        provider.completed_request_keys()


async def test_is_a_provider_client() -> None:
    client: ProviderClient = _provider()
    assert client.name == "sim"
    assert (await client.send(_request())).text
    await client.aclose()


async def test_the_request_log_gets_one_key_per_answered_attempt(tmp_path: Any) -> None:
    log = tmp_path / "answered.log"
    provider = SimulatedProvider(
        "sim", SimulationSettings(capacity=1), seed=3, request_log=log, track_requests=True
    )
    first = ModelRequest(
        model_id="m", kind=GenerationKind.TEXT, messages=(ChatMessage(role="user", content="a"),)
    )
    second = ModelRequest(
        model_id="m", kind=GenerationKind.TEXT, messages=(ChatMessage(role="user", content="b"),)
    )
    await provider.send(first)
    await provider.send(second)
    await provider.send(first)
    # Written through at once: readable before the provider is closed.
    lines = log.read_text().split()
    assert lines == [
        provider.request_key_hex(first),
        provider.request_key_hex(second),
        provider.request_key_hex(first),
    ]
    assert sorted(lines) == sorted(provider.completed_request_keys().elements())
    await provider.aclose()


def test_an_unwritable_request_log_is_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(EngineError, match="cannot open its request log"):
        SimulatedProvider(
            "sim", SimulationSettings(), seed=3, request_log=tmp_path / "missing" / "x.log"
        )
