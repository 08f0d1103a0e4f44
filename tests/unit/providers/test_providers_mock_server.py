"""The mock server over real sockets: limits on a schedule, competing clients, the schedule
epoch, OpenAI rate-limit headers, 429s without Retry-After and the /stats it reports.

Steps that depend on the server's timers wait for the state they need (read from /stats), never
for a fixed time.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from sluiceway.errors import ConfigError, EngineError, ProviderTimeoutError, RateLimitedError
from sluiceway.providers.base import ChatMessage, GenerationKind, ModelRequest
from sluiceway.providers.behaviour import EndpointLimit, SimulationSettings
from sluiceway.providers.mock_competitor import CompetitorMode, CompetitorSettings
from sluiceway.providers.mock_openai import go_duration
from sluiceway.providers.mock_schedule import (
    LimitSchedule,
    ScheduleEpoch,
    ScheduleStep,
    parse_limit_schedule,
)
from sluiceway.providers.mock_server import (
    SERIES_COLUMNS,
    MockProviderServer,
    MockServerSettings,
    RetryAfterFormat,
)
from sluiceway.providers.openai import OpenAICompatibleClient

GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?\d+(\.\d+)?s$|^\d+ms$")
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Describe a lighthouse keeper"}]}


async def _until(server: MockProviderServer, condition: Callable[[], bool], what: str) -> None:
    """Wait, sample by sample of the server's statistics, until ``condition()`` holds."""
    async with asyncio.timeout(10):
        while not condition():
            await server.next_sample()
    assert condition(), what


def _capacity_schedule(text: str) -> LimitSchedule:
    return parse_limit_schedule(text, EndpointLimit.CAPACITY, source="test")


async def _serve(**settings: Any) -> MockProviderServer:
    settings.setdefault("stats_interval_seconds", 0.005)
    server = MockProviderServer(MockServerSettings(**settings))
    await server.start()
    return server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


class Holder:
    """Requests that hang at the server (``x-mock-fault: hang``), each on its own connection,
    holding a capacity slot until released (the server then ends them as cancelled)."""

    def __init__(self, server: MockProviderServer) -> None:
        self._server = server
        self._writers: list[asyncio.StreamWriter] = []

    async def hold(self, model: str = "m") -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", self._server.port)
        body = json.dumps({**CHAT, "model": model}).encode()
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-mock-fault: hang\r\n"
            + b"content-length: %d\r\n\r\n" % len(body)
            + body
        )
        await writer.drain()
        self._writers.append(writer)
        before = len(self._writers)
        await _until(
            self._server, lambda: _in_flight(self._server, model) >= before, "the hold is admitted"
        )

    async def release(self) -> None:
        writer = self._writers.pop()
        writer.close()
        await writer.wait_closed()

    async def release_all(self) -> None:
        while self._writers:
            await self.release()


def _request(timeout_seconds: float) -> ModelRequest:
    return ModelRequest(
        model_id="m",
        kind=GenerationKind.TEXT,
        messages=(ChatMessage(role="user", content="hello"),),
        timeout_seconds=timeout_seconds,
    )


def _model_stats(server: MockProviderServer, model: str = "m") -> dict[str, Any]:
    return server.stats(series=False)["models"].get(model, {})


def _in_flight(server: MockProviderServer, model: str = "m") -> int:
    return int(_model_stats(server, model).get("in_flight", 0))


# -- limits on a schedule ---------------------------------------------------------------------


async def test_a_lowered_capacity_keeps_requests_in_flight_and_refuses_new_ones_until_below(
    http: httpx.AsyncClient,
) -> None:
    server = await _serve(
        simulation=SimulationSettings(capacity=2),
        schedules=(_capacity_schedule("0:2,0.05:1"),),
        schedule_epoch=ScheduleEpoch.FIRST_REQUEST,
    )
    holder = Holder(server)
    url = f"{server.base_url}/chat/completions"
    try:
        await holder.hold()
        await holder.hold()
        await _until(server, lambda: _model_stats(server)["limits"]["capacity"] == 1, "capacity 1")
        assert _in_flight(server) == 2  # nothing in flight was ended
        assert (await http.post(url, json=CHAT)).status_code == 429
        await holder.release()
        await _until(server, lambda: _in_flight(server) == 1, "one hold ended")
        assert (await http.post(url, json=CHAT)).status_code == 429  # 1 >= capacity 1
        await holder.release()
        await _until(server, lambda: _in_flight(server) == 0, "both holds ended")
        assert (await http.post(url, json=CHAT)).status_code == 200
        stats = server.stats()
    finally:
        await holder.release_all()
        await server.aclose()
    assert [(c["limit"], c["value"]) for c in stats["limit_changes"]] == [
        ("capacity", 2),
        ("capacity", 1),
    ]
    assert stats["limit_changes"][1]["since_epoch_seconds"] >= 0.05
    assert stats["models"]["m"]["rate_limited_by_reason"] == {"capacity": 2}
    assert stats["schedules"] == [
        {"model": None, "limit": "capacity", "steps": [[0.0, 2], [0.05, 1]]}
    ]


async def test_the_epoch_waits_for_the_first_request_and_a_reset_restarts_the_schedule(
    http: httpx.AsyncClient,
) -> None:
    server = await _serve(
        simulation=SimulationSettings(capacity=5),
        schedules=(_capacity_schedule("30:1"),),  # the configured 5 until 30 s
        schedule_epoch=ScheduleEpoch.FIRST_REQUEST,
    )
    try:
        assert server.stats()["schedule_epoch_at"] is None
        assert (await http.post(f"{server.base_url}/chat/completions", json=CHAT)).is_success
        first = server.stats()["schedule_epoch_at"]
        assert first is not None
        reset = await http.post(f"{server.base_url}/mock/epoch")
        stats = server.stats()
    finally:
        await server.aclose()
    assert reset.json()["schedule_epoch_at"] == stats["schedule_epoch_at"] >= first
    # Each epoch put the value before the first step (the configured 5) in force again.
    assert [(c["value"], c["since_epoch_seconds"]) for c in stats["limit_changes"]] == [
        (5, 0.0),
        (5, 0.0),
    ]
    assert stats["models"]["m"]["limits"]["capacity"] == 5


async def test_an_armed_epoch_starts_again_at_the_next_request(http: httpx.AsyncClient) -> None:
    server = await _serve(
        simulation=SimulationSettings(capacity=2),
        schedules=(_capacity_schedule("0:1"),),
        competitors=(_competitor(slots=1),),
    )
    url = f"{server.base_url}/chat/completions"
    try:
        first = await http.post(url, json=CHAT)  # the competitor holds the one slot
        armed = await http.post(f"{server.base_url}/mock/epoch?at=next-request")
        waiting = server.stats(series=False)
        await _until(server, lambda: _model_stats(server)["competitor"]["in_flight"] == 0, "")
        again = await http.post(url, json=CHAT)  # second 0 again: the competitor is first
        bad = await http.post(f"{server.base_url}/mock/epoch?at=later")
        stats = server.stats(series=False)
    finally:
        await server.aclose()
    assert (first.status_code, again.status_code, bad.status_code) == (429, 429, 400)
    assert armed.json() == {"schedule_epoch_at": None} and waiting["schedule_epoch_at"] is None
    assert waiting["models"]["m"]["limits"]["capacity"] == 2  # configured until second 0
    assert stats["schedule_epoch_at"] > 0
    assert [(c["value"], c["since_epoch_seconds"]) for c in stats["limit_changes"]] == [
        (1, 0.0),
        (2, None),
        (1, 0.0),
    ]


async def test_a_model_schedule_overrides_the_one_for_every_model_and_new_models_get_it(
    http: httpx.AsyncClient,
) -> None:
    server = await _serve(
        simulation=SimulationSettings(rpm=100),
        schedules=(
            _capacity_schedule("0:5"),
            _capacity_schedule("m2=0:1"),
            parse_limit_schedule("0:7", EndpointLimit.RPM, source="test"),
        ),
    )
    try:
        for model in ("m1", "m2"):  # both created after the schedule took effect
            response = await http.post(
                f"{server.base_url}/chat/completions", json={**CHAT, "model": model}
            )
            assert response.status_code == 200
        models = server.stats()["models"]
    finally:
        await server.aclose()
    assert models["m1"]["limits"] == {"capacity": 5, "rpm": 7, "tpm": None}
    assert models["m2"]["limits"] == {"capacity": 1, "rpm": 7, "tpm": None}
    assert response.headers["x-ratelimit-limit-requests"] == "7"


async def test_a_rate_window_on_a_schedule_changes_the_headers_limit(
    http: httpx.AsyncClient,
) -> None:
    server = await _serve(
        schedules=(parse_limit_schedule("0:none,0.05:3", EndpointLimit.RPM, source="test"),)
    )
    url = f"{server.base_url}/chat/completions"
    try:
        assert "x-ratelimit-limit-requests" not in (await http.post(url, json=CHAT)).headers
        await _until(server, lambda: _model_stats(server)["limits"]["rpm"] == 3, "rpm 3")
        statuses = [(await http.post(url, json=CHAT)) for _ in range(4)]
    finally:
        await server.aclose()
    # The window appeared empty: three admitted, then refused.
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in statuses] == ["2", "1", "0", "0"]


# -- competing clients ------------------------------------------------------------------------


def _competitor(**overrides: Any) -> CompetitorSettings:
    values: dict[str, Any] = {"duration_seconds": 60.0, "slots": 2, "latency_seconds": 0.02}
    values.update(overrides)
    return CompetitorSettings(**values)


async def test_a_competitor_holds_its_slots_and_is_counted_apart(http: httpx.AsyncClient) -> None:
    server = await _serve(
        simulation=SimulationSettings(capacity=3),
        competitors=(_competitor(model="m"),),
    )
    holder = Holder(server)
    try:
        await holder.hold()  # the client's one slot; the competitor keeps the other two
        refused = await http.post(f"{server.base_url}/chat/completions", json=CHAT)
        stats = server.stats()
    finally:
        await holder.release_all()
        await server.aclose()
    # It re-sends as each answer comes, so its two slots are never free for the client.
    assert refused.status_code == 429
    model = stats["models"]["m"]
    assert (model["requests"], model["in_flight"], model["rate_limited"]) == (2, 1, 1)
    assert model["competitor"]["in_flight"] == 2
    assert model["competitor"]["requests"] >= 2 and model["competitor"]["rate_limited"] == 0
    assert stats["competitors"][0]["mode"] == "polite"


async def test_a_competitor_for_every_model_leaves_after_its_duration(
    http: httpx.AsyncClient,
) -> None:
    server = await _serve(
        simulation=SimulationSettings(capacity=2, latency_seconds=0.01),
        competitors=(_competitor(duration_seconds=0.1, latency_seconds=None),),
        schedule_epoch=ScheduleEpoch.FIRST_REQUEST,
    )
    url = f"{server.base_url}/chat/completions"
    try:
        # The first request starts the epoch; the competitor takes both slots before it.
        assert (await http.post(url, json=CHAT)).status_code == 429
        await _until(
            server, lambda: _model_stats(server)["competitor"]["in_flight"] == 0, "it left"
        )
        answers = await asyncio.gather(*(http.post(url, json=CHAT) for _ in range(2)))
        competitor = _model_stats(server)["competitor"]
    finally:
        await server.aclose()
    assert [a.status_code for a in answers] == [200, 200]
    assert competitor["requests"] == competitor["completed"] > 2


async def test_a_retry_at_once_competitor_takes_the_slot_the_client_frees(
    http: httpx.AsyncClient,
) -> None:
    server = await _serve(
        simulation=SimulationSettings(capacity=1),
        competitors=(
            _competitor(
                start_seconds=0.02, slots=2, mode=CompetitorMode.RETRY_AT_ONCE, latency_seconds=5
            ),
        ),
        schedule_epoch=ScheduleEpoch.FIRST_REQUEST,
    )
    holder = Holder(server)
    try:
        await holder.hold()
        await _until(
            server, lambda: _model_stats(server)["competitor"]["rate_limited"] >= 10, "retries"
        )
        await holder.release()
        await _until(
            server, lambda: _model_stats(server)["competitor"]["in_flight"] == 1, "it took it"
        )
        refused = await http.post(f"{server.base_url}/chat/completions", json=CHAT)
        model = _model_stats(server)
    finally:
        await holder.release_all()
        await server.aclose()
    assert refused.status_code == 429
    assert model["rate_limited"] == 1  # the client's own refusals only
    assert model["competitor"]["rate_limited"] >= 10


# -- hangs of a fixed length ------------------------------------------------------------------


async def test_a_timed_hang_keeps_its_slot_after_the_client_gives_up(
    http: httpx.AsyncClient,
) -> None:
    server = await _serve(simulation=SimulationSettings(capacity=1), hang_seconds=1.0)
    client = OpenAICompatibleClient(
        "mock", base_url=server.base_url, headers={"x-mock-fault": "hang"}
    )
    url = f"{server.base_url}/chat/completions"
    try:
        with pytest.raises(ProviderTimeoutError):
            await client.send(_request(timeout_seconds=0.05))
        refused = await http.post(url, json=CHAT)  # the hang still holds the only slot
        await _until(server, lambda: _in_flight(server) == 0, "the hang ended")
        answered = await http.post(url, json=CHAT)
        model = _model_stats(server)
    finally:
        await client.aclose()
        await server.aclose()
    assert (refused.status_code, answered.status_code) == (429, 200)
    assert (model["cancelled"], model["successes"], model["rate_limited"]) == (1, 1, 1)


async def test_a_timed_hang_is_answered_to_a_client_that_waits() -> None:
    server = await _serve(hang_seconds=0.05)
    client = OpenAICompatibleClient(
        "mock", base_url=server.base_url, headers={"x-mock-fault": "hang"}
    )
    try:
        response = await client.send(_request(timeout_seconds=5.0))
        stats = server.stats()
    finally:
        await client.aclose()
        await server.aclose()
    assert response.text and stats["models"]["m"]["successes"] == 1
    assert stats["faults"] == {"hang": 1}


# -- OpenAI rate-limit headers and Retry-After ------------------------------------------------


async def test_every_answer_carries_consistent_openai_rate_headers(
    http: httpx.AsyncClient,
) -> None:
    server = await _serve(simulation=SimulationSettings(rpm=5, tpm=10_000))
    spent = 0
    try:
        for sent in range(1, 4):
            response = await http.post(f"{server.base_url}/chat/completions", json=CHAT)
            spent += response.json()["usage"]["total_tokens"]
            headers = response.headers
            assert headers["x-ratelimit-limit-requests"] == "5"
            assert headers["x-ratelimit-remaining-requests"] == str(5 - sent)
            assert headers["x-ratelimit-limit-tokens"] == "10000"
            assert headers["x-ratelimit-remaining-tokens"] == str(10_000 - spent)
            for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
                assert GO_DURATION.match(headers[name]), headers[name]
    finally:
        await server.aclose()


async def test_an_rpm_refusal_reports_an_empty_window_and_the_wait(
    http: httpx.AsyncClient,
) -> None:
    server = await _serve(simulation=SimulationSettings(rpm=2))
    try:
        answers = [await http.post(f"{server.base_url}/chat/completions", json=CHAT)]
        answers += [await http.post(f"{server.base_url}/chat/completions", json=CHAT)]
        refused = await http.post(f"{server.base_url}/chat/completions", json=CHAT)
    finally:
        await server.aclose()
    assert [a.status_code for a in answers] == [200, 200]
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["retry-after"] == "60"  # the oldest admit leaves in under 60 s
    assert "x-ratelimit-limit-tokens" not in refused.headers


async def test_a_capacity_refusal_has_no_request_window_headers(http: httpx.AsyncClient) -> None:
    server = await _serve(simulation=SimulationSettings(capacity=1))
    holder = Holder(server)
    try:
        await holder.hold()
        refused = await http.post(f"{server.base_url}/chat/completions", json=CHAT)
    finally:
        await holder.release_all()
        await server.aclose()
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert not [name for name in refused.headers if name.startswith("x-ratelimit")]


async def test_a_429_without_retry_after_leaves_the_client_no_wait() -> None:
    server = await _serve(
        simulation=SimulationSettings(capacity=1), retry_after_format=RetryAfterFormat.NONE
    )
    holder = Holder(server)
    client = OpenAICompatibleClient("mock", base_url=server.base_url)
    seen: list[httpx.Response] = []
    try:
        await holder.hold()
        with pytest.raises(RateLimitedError) as caught:
            await client.send(_request(timeout_seconds=5.0))
        async with httpx.AsyncClient() as http:
            seen.append(await http.post(f"{server.base_url}/chat/completions", json=CHAT))
    finally:
        await client.aclose()
        await holder.release_all()
        await server.aclose()
    assert caught.value.retry_after_seconds is None
    assert "retry-after" not in seen[0].headers and "retry-after-ms" not in seen[0].headers
    assert "retry after" not in seen[0].text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.0001, "1ms"),
        (0.02, "20ms"),
        (0.999, "999ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (59.866, "59.866s"),
        (60.0, "1m0s"),
        (360.0, "6m0s"),
        (90.25, "1m30.25s"),
        (3600.0, "1h0m0s"),
    ],
)
def test_go_durations_round_up_to_the_millisecond(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


# -- /stats -----------------------------------------------------------------------------------


async def test_stats_series_line_up_and_can_be_left_out(http: httpx.AsyncClient) -> None:
    server = await _serve(
        simulation=SimulationSettings(capacity=4, latency_seconds=0.01),
        stats_interval_seconds=0.01,
        schedules=(_capacity_schedule("0:4,0.2:2"),),
        competitors=(_competitor(slots=1, duration_seconds=0.2),),
        schedule_epoch=ScheduleEpoch.FIRST_REQUEST,
    )
    try:
        assert (await http.post(f"{server.base_url}/chat/completions", json=CHAT)).is_success
        await _until(server, lambda: 2 in server.stats()["models"]["m"]["series"]["capacity"], "2")
        full = (await http.get(f"{server.base_url}/stats")).json()
        short = (await http.get(f"{server.base_url}/stats?series=0")).json()
    finally:
        await server.aclose()
    series = full["models"]["m"]["series"]
    assert tuple(series) == SERIES_COLUMNS
    assert len({len(column) for column in series.values()}) == 1
    assert series["at_seconds"] == sorted(series["at_seconds"])
    assert set(series["capacity"]) == {4, 2}
    assert max(series["competitor_in_flight"]) == 1
    assert series["requests"][-1] == 1 and series["successes"][-1] == 1
    assert "series" not in short["models"]["m"] and "in_flight_series" not in short
    assert short["models"]["m"]["competitor"]["completed"] >= 1


# -- settings ---------------------------------------------------------------------------------


def test_two_schedules_of_one_limit_and_model_are_an_error() -> None:
    with pytest.raises(EngineError, match="two capacity schedules for 'm'"):
        MockServerSettings(schedules=(_capacity_schedule("m=0:1"), _capacity_schedule("m=5:2")))


def test_a_competitor_needs_a_latency() -> None:
    with pytest.raises(EngineError, match="latency=SECONDS"):
        MockServerSettings(competitors=(CompetitorSettings(duration_seconds=1, slots=1),))


def test_the_schedule_text_form() -> None:
    assert parse_limit_schedule("m-1=0:32, 10:8, 20:none", EndpointLimit.RPM, source="x") == (
        LimitSchedule(
            limit=EndpointLimit.RPM,
            model="m-1",
            steps=(
                ScheduleStep(at_seconds=0.0, value=32),
                ScheduleStep(at_seconds=10.0, value=8),
                ScheduleStep(at_seconds=20.0, value=None),
            ),
        )
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0:32,10", "'10' in '0:32,10' is not SECONDS:VALUE"),
        ("0:32,x:8", "'x:8'"),
        ("10:8,5:32", "step times must increase, got 5.0 after 10.0"),
        ("0:0", "value 0 at 0.0 s must be >= 1 or none"),
        ("=0:1", "empty model id"),
    ],
)
def test_a_bad_schedule_is_a_config_error_naming_it(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_limit_schedule(text, EndpointLimit.CAPACITY, source="--capacity-schedule")
    assert "schedule" in str(caught.value)
