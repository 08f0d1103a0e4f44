"""The loopback mock provider server (SPEC §7.3): OpenAI- and Anthropic-style HTTP on 127.0.0.1.

It reuses the simulated provider's :class:`BehaviourModel`, one per model id, so capacity, RPM
and TPM are per model: beyond them it answers 429 with ``Retry-After`` (seconds, HTTP-date,
``retry-after-ms`` or none at all) and the dialect's rate-limit headers, or, in queueing mode,
slows down instead. ``/v1/chat/completions`` and ``/v1/embeddings`` speak OpenAI
(:mod:`sluiceway.providers.mock_openai`), ``/v1/messages`` speaks Anthropic
(:mod:`sluiceway.providers.mock_anthropic`); the same model id shares one behaviour across
both. Faults (500, 503, 529, hang, connection reset, malformed body) are injected by rate or
forced per request with the ``x-mock-fault`` header.

Limits can follow a schedule (:mod:`sluiceway.providers.mock_schedule`) and competing clients
can take slots of a model (:mod:`sluiceway.providers.mock_competitor`), both timed from the
schedule epoch (server start or first model request; ``POST /mock/epoch`` resets it to now,
``POST /mock/epoch?at=next-request`` to the next model request).
Timers apply them: with neither configured a request costs nothing more.

``GET /stats`` returns counters per model (the client's requests; a competitor's are counted
apart), the limits in force and their changes, and time series sampled every
``stats_interval_seconds`` (``?series=0`` leaves the series out). With ``count_by_content`` it
also counts the requests received per content hash (:func:`content_hash`), so a test can tell
whether the same request was sent twice.

The HTTP/1.1 layer is a small ``asyncio.Protocol`` (keep-alive, Content-Length bodies only):
answers are written from ``loop.call_later`` callbacks, with no task per request.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import hashlib
import json
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sluiceway.errors import BadRequestError, EngineError
from sluiceway.providers.base import ModelRequest
from sluiceway.providers.behaviour import (
    AttemptOutcome,
    BehaviourModel,
    EndpointLimit,
    Refusal,
    RefusalReason,
    SimulationSettings,
    combine_statistics,
)
from sluiceway.providers.mock_anthropic import AnthropicDialect
from sluiceway.providers.mock_competitor import (
    CompetingClient,
    CompetitorLedger,
    CompetitorSettings,
)
from sluiceway.providers.mock_dialect import Dialect, ErrorKind, json_bytes
from sluiceway.providers.mock_openai import OpenAIDialect
from sluiceway.providers.mock_schedule import LimitSchedule, ScheduleEpoch

LOOPBACK = "127.0.0.1"
_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 32 * 1024 * 1024
_SERIES_POINTS = 36_000
_OPENAI = OpenAIDialect()
_ROUTES: dict[str, Dialect] = {
    "/v1/chat/completions": _OPENAI,
    "/v1/embeddings": _OPENAI,
    "/chat/completions": _OPENAI,
    "/embeddings": _OPENAI,
    "/v1/messages": AnthropicDialect(),
    "/messages": AnthropicDialect(),
}
_NO_HEADERS: Mapping[str, str] = {}
# Columns of a model's time series in /stats: counters are cumulative, the rest sampled.
SERIES_COLUMNS = (
    "at_seconds",
    "in_flight",
    "requests",
    "rate_limited",
    "successes",
    "capacity",
    "competitor_in_flight",
    "competitor_rate_limited",
)


class RetryAfterFormat(enum.Enum):
    SECONDS = "seconds"
    HTTP_DATE = "http-date"
    MILLISECONDS = "ms"
    NONE = "none"  # 429s carry neither Retry-After nor retry-after-ms


class Fault(enum.Enum):
    """Faults the server can inject (``x-mock-fault: <value>`` forces one per request)."""

    RATE_LIMIT = "429"
    SERVER_ERROR = "500"
    OVERLOADED = "503"
    OVERLOADED_529 = "529"  # Anthropic's overloaded_error
    HANG = "hang"
    RESET = "reset"
    MALFORMED = "malformed"


_FAULT_STATUS = {Fault.SERVER_ERROR: 500, Fault.OVERLOADED: 503, Fault.OVERLOADED_529: 529}


@dataclass(frozen=True, slots=True, kw_only=True)
class MockServerSettings:
    """Behaviour of the mock server; fault rates are shares of admitted requests in [0, 1].

    ``schedules`` change limits over time (at most one per model and limit; one without a
    model applies to every model without its own), ``competitors`` add competing load; both
    count from the ``schedule_epoch``.
    """

    simulation: SimulationSettings = field(default_factory=SimulationSettings)
    seed: int = 0
    # When set, OpenAI requests need ``Authorization: Bearer <key>``, Anthropic ones
    # ``x-api-key: <key>``.
    api_key: str | None = None
    retry_after_format: RetryAfterFormat = RetryAfterFormat.SECONDS
    error_500_rate: float = 0.0
    error_503_rate: float = 0.0
    error_529_rate: float = 0.0
    hang_rate: float = 0.0
    # None: a hang is never answered and holds its slot until the client disconnects; else it
    # is answered after this long and holds its slot that long, even if the client leaves.
    hang_seconds: float | None = None
    reset_rate: float = 0.0
    malformed_rate: float = 0.0
    stats_interval_seconds: float = 0.1
    count_by_content: bool = False  # /stats gains ``requests_by_content``
    schedules: tuple[LimitSchedule, ...] = ()
    competitors: tuple[CompetitorSettings, ...] = ()
    schedule_epoch: ScheduleEpoch = ScheduleEpoch.START

    def __post_init__(self) -> None:
        for name in (
            "error_500_rate",
            "error_503_rate",
            "error_529_rate",
            "hang_rate",
            "reset_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise EngineError(f"MockServerSettings.{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.malformed_rate <= 1.0 or self.stats_interval_seconds <= 0:
            raise EngineError(
                "MockServerSettings needs malformed_rate in [0, 1] and stats_interval_seconds "
                f"> 0, got {self.malformed_rate} and {self.stats_interval_seconds}"
            )
        if self.hang_seconds is not None and not self.hang_seconds > 0:
            raise EngineError(
                f"MockServerSettings.hang_seconds must be > 0 or None, got {self.hang_seconds}"
            )
        seen: set[tuple[str | None, EndpointLimit]] = set()
        for schedule in self.schedules:
            key = (schedule.model, schedule.limit)
            if key in seen:
                raise EngineError(
                    f"MockServerSettings.schedules has two {schedule.limit.value} schedules for "
                    f"{'every model' if schedule.model is None else repr(schedule.model)}; "
                    "merge their steps into one schedule"
                )
            seen.add(key)
        for competitor in self.competitors:
            if competitor.latency_seconds is None and self.simulation.latency_seconds <= 0:
                raise EngineError(
                    "MockServerSettings.competitors: a competitor without its own latency takes "
                    "the server's, which is 0; give it latency=SECONDS or set the server's "
                    "latency_seconds"
                )


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _Counters:
    __slots__ = ("by_content", "faults", "http_requests", "responses_by_status")

    def __init__(self) -> None:
        self.http_requests = 0
        self.by_content: dict[str, int] = {}
        self.responses_by_status: dict[int, int] = {}
        self.faults: dict[str, int] = {}


class _ModelState:
    """One model id: its behaviour, its competitors' ledger, refusals and time series."""

    __slots__ = ("behaviour", "competitors", "refusals", "series")

    def __init__(self, behaviour: BehaviourModel) -> None:
        self.behaviour = behaviour
        self.competitors = CompetitorLedger()
        self.refusals: dict[str, int] = {}
        self.series: dict[str, deque[Any]] = {
            name: deque(maxlen=_SERIES_POINTS) for name in SERIES_COLUMNS
        }

    def sample(self, at_seconds: float) -> None:
        stats = self.behaviour.statistics()
        row = (
            at_seconds,
            stats.in_flight,
            stats.requests,
            stats.rate_limited,
            stats.successes,
            self.behaviour.capacity,
            self.competitors.in_flight,
            self.competitors.rate_limited,
        )
        for column, value in zip(self.series.values(), row, strict=True):
            column.append(value)


class MockProviderServer:
    """The server; ``await start()`` binds 127.0.0.1 (port 0 picks a free port)."""

    def __init__(self, settings: MockServerSettings) -> None:
        self.settings = settings
        self._behaviours: dict[str, BehaviourModel] = {}
        self._models: dict[str, _ModelState] = {}
        self._rng = random.Random(settings.seed)
        self._server: asyncio.Server | None = None
        self._counters = _Counters()
        self._series: deque[tuple[float, int]] = deque(maxlen=_SERIES_POINTS)
        self._sampler: asyncio.TimerHandle | None = None
        self._sample_waiters: list[asyncio.Future[None]] = []
        self._started_at = 0.0
        self._connections: set[_HttpProtocol] = set()
        # Schedules and competitors.
        self._epoch_pending = False  # the first model request sets the epoch
        self._epoch: float | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._in_force: dict[tuple[str | None, EndpointLimit], int | None] = {}
        self._own_schedules = {(s.model, s.limit) for s in settings.schedules if s.model}
        self._limit_changes: list[dict[str, Any]] = []
        self._competing: list[CompetingClient] = []
        self._open_competitors: list[tuple[CompetitorSettings, float]] = []  # every model

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, port: int = 0) -> int:
        """Listen on 127.0.0.1:``port`` and return the bound port; with the ``START`` epoch
        the schedules and competitors start counting now."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _HttpProtocol(self), host=LOOPBACK, port=port, reuse_address=True
        )
        self._started_at = loop.time()
        if self.settings.schedule_epoch is ScheduleEpoch.START:
            self.reset_schedule_epoch()
        else:
            self._epoch_pending = True
        self._sample()
        return self.port

    @property
    def port(self) -> int:
        if self._server is None:
            raise EngineError("the mock server is not started; await start() first")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/v1"

    async def aclose(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        for waiter in self._sample_waiters:
            waiter.cancel()
        self._sample_waiters.clear()
        self._stop_timed()
        server = self._server
        if server is None:
            return
        server.close()
        for connection in list(self._connections):
            connection.close()
        await server.wait_closed()
        self._server = None

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    # -- schedules and competitors -----------------------------------------------------------

    def reset_schedule_epoch(self) -> float:
        """Make now second 0 of the schedules and competitors, and return it in seconds since
        the server started (the clock of ``/stats``).

        Timers of the previous epoch are cancelled and its competitors stop sending (their
        requests in flight end at their time); scheduled limits restart from their values at
        second 0 (the server's configured value where a schedule starts later)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._stop_timed()
        self._epoch_pending = False
        self._epoch = now
        for schedule in self.settings.schedules:
            first = schedule.steps[0]
            initial = first.value if first.at_seconds == 0.0 else self._configured(schedule.limit)
            self._put_in_force(schedule, initial, now)
            for step in schedule.steps:
                if step.at_seconds > 0.0:
                    self._timers.append(
                        loop.call_at(
                            now + step.at_seconds, self._put_in_force, schedule, step.value
                        )
                    )
        for competitor in self.settings.competitors:
            if competitor.start_seconds == 0.0:
                self._open_competitor(competitor)
            else:
                self._timers.append(
                    loop.call_at(now + competitor.start_seconds, self._open_competitor, competitor)
                )
        return round(now - self._started_at, 6)

    def arm_schedule_epoch(self) -> None:
        """Make the next model request second 0 of the schedules and competitors (before it is
        admitted). Until then the previous epoch's timers and competitors are stopped (their
        requests in flight end at their time) and scheduled limits have their configured
        values."""
        now = asyncio.get_running_loop().time()
        self._stop_timed()
        self._epoch = None
        self._epoch_pending = True
        for schedule in self.settings.schedules:
            self._put_in_force(schedule, self._configured(schedule.limit), now)

    def _configured(self, limit: EndpointLimit) -> int | None:
        simulation = self.settings.simulation
        if limit is EndpointLimit.CAPACITY:
            return simulation.capacity
        return simulation.rpm if limit is EndpointLimit.RPM else simulation.tpm

    def _stop_timed(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for client in self._competing:
            client.stop()
        self._competing.clear()
        self._open_competitors.clear()

    def _put_in_force(
        self, schedule: LimitSchedule, value: int | None, now: float | None = None
    ) -> None:
        if now is None:
            now = asyncio.get_running_loop().time()
        limit = schedule.limit
        self._in_force[(schedule.model, limit)] = value
        for model, state in self._models.items():
            if model == schedule.model or (
                schedule.model is None and (model, limit) not in self._own_schedules
            ):
                state.behaviour.set_limit(now, limit, value)
        epoch = self._epoch
        self._limit_changes.append(
            {
                "at_seconds": round(now - self._started_at, 6),
                "since_epoch_seconds": None if epoch is None else round(now - epoch, 6),
                "model": schedule.model,
                "limit": limit.value,
                "value": value,
            }
        )

    def _open_competitor(self, competitor: CompetitorSettings) -> None:
        assert self._epoch is not None
        end_at = self._epoch + competitor.start_seconds + competitor.duration_seconds
        if competitor.model is not None:
            self._compete(competitor, self._model_state(competitor.model), end_at)
            return
        self._open_competitors.append((competitor, end_at))
        for state in list(self._models.values()):
            self._compete(competitor, state, end_at)

    def _compete(self, competitor: CompetitorSettings, state: _ModelState, end_at: float) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() >= end_at:
            return
        latency = competitor.latency_seconds or self.settings.simulation.latency_seconds
        client = CompetingClient(
            competitor,
            state.behaviour,
            state.competitors,
            loop,
            end_at=end_at,
            latency_seconds=latency,
        )
        self._competing.append(client)
        client.start()

    # -- statistics --------------------------------------------------------------------------

    def behaviour(self, model_id: str) -> BehaviourModel:
        behaviour = self._behaviours.get(model_id)
        if behaviour is None:
            behaviour = self._model_state(model_id).behaviour
        return behaviour

    def _model_state(self, model_id: str) -> _ModelState:
        state = self._models.get(model_id)
        if state is not None:
            return state
        behaviour = BehaviourModel(self.settings.simulation, self.settings.seed)
        state = _ModelState(behaviour)
        self._models[model_id] = state
        self._behaviours[model_id] = behaviour
        if self._in_force:
            now = asyncio.get_running_loop().time()
            for (model, limit), value in self._in_force.items():
                if model == model_id or (
                    model is None and (model_id, limit) not in self._own_schedules
                ):
                    behaviour.set_limit(now, limit, value)
        for competitor, end_at in self._open_competitors:
            self._compete(competitor, state, end_at)
        return state

    def _in_flight(self) -> int:
        return sum(b.statistics().in_flight for b in self._behaviours.values())

    def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        at = round(loop.time() - self._started_at, 3)
        self._series.append((at, self._in_flight()))
        for state in self._models.values():
            state.sample(at)
        waiters, self._sample_waiters = self._sample_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._sampler = loop.call_later(self.settings.stats_interval_seconds, self._sample)

    async def next_sample(self) -> None:
        """Return after the server's next time-series sample (every ``stats_interval_seconds``),
        so in-process callers can wait for a state of ``stats()`` without polling on their own
        clock. Raises :class:`EngineError` when the server is not started."""
        if self._sampler is None:
            raise EngineError("the mock server is not started; await start() first")
        waiter = asyncio.get_running_loop().create_future()
        self._sample_waiters.append(waiter)
        await waiter

    def stats(self, *, series: bool = True) -> dict[str, Any]:
        """Counters per model and in total, status counts, faults, limits in force and their
        changes, competitors, and (with ``series``) the time series; times are seconds since
        the server started."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        per_model = {}
        for model, state in self._models.items():
            behaviour = state.behaviour
            behaviour.observe(now)
            entry = self._relative(asdict(behaviour.statistics()))
            entry["limits"] = {
                "capacity": behaviour.capacity,
                "rpm": behaviour.rpm,
                "tpm": behaviour.tpm,
            }
            entry["rate_limited_by_reason"] = dict(state.refusals)
            entry["competitor"] = asdict(state.competitors.statistics(now))
            if series:
                entry["series"] = {name: list(values) for name, values in state.series.items()}
            per_model[model] = entry
        total = combine_statistics([b.statistics() for b in self._behaviours.values()])
        counters = self._counters
        extra: dict[str, Any] = {}
        if self.settings.count_by_content:
            extra["requests_by_content"] = dict(counters.by_content)
        if series:
            extra["in_flight_series"] = list(self._series)
        epoch = self._epoch
        return {
            **extra,
            "uptime_seconds": now - self._started_at,
            "http_requests": counters.http_requests,
            "responses_by_status": {str(k): v for k, v in counters.responses_by_status.items()},
            "faults": dict(counters.faults),
            "models": per_model,
            "total": self._relative(asdict(total)),
            "schedule_epoch_at": None if epoch is None else round(epoch - self._started_at, 6),
            "schedules": [schedule.describe() for schedule in self.settings.schedules],
            "limit_changes": list(self._limit_changes),
            "competitors": [competitor.describe() for competitor in self.settings.competitors],
        }

    def _relative(self, statistics: dict[str, Any]) -> dict[str, Any]:
        """``first_admitted_at`` / ``last_finished_at`` in seconds since the server started, the
        clock of ``in_flight_series``."""
        for name in ("first_admitted_at", "last_finished_at"):
            if statistics[name] is not None:
                statistics[name] = round(statistics[name] - self._started_at, 6)
        return statistics

    # -- request handling --------------------------------------------------------------------

    def handle(self, connection: _HttpProtocol, request: _Request) -> None:
        """Answer one request now or schedule its answer; exactly one answer per request."""
        self._counters.http_requests += 1
        dialect = _ROUTES.get(request.path) if request.method == "POST" else None
        if dialect is None:
            self._control(connection, request)
            return
        refused = dialect.refusal(request.headers, self.settings.api_key)
        if refused is not None:
            connection.respond(refused[0], refused[1], request.keep_alive)
            return
        try:
            model_request, extra = dialect.parse(request.path, request.body)
        except BadRequestError as exc:
            body = dialect.error(ErrorKind.INVALID_REQUEST, str(exc))
            connection.respond(400, body, request.keep_alive)
            return
        if self._epoch_pending:
            self.reset_schedule_epoch()
        if self.settings.count_by_content:
            by_content = self._counters.by_content
            digest = content_hash(model_request)
            by_content[digest] = by_content.get(digest, 0) + 1
        forced = request.headers.get("x-mock-fault")
        fault = self._fault(forced)
        loop = asyncio.get_running_loop()
        behaviour = self.behaviour(model_request.model_id)
        if fault is Fault.RATE_LIMIT:
            forced_refusal = Refusal(reason=RefusalReason.CAPACITY, retry_after_seconds=1.0)
            self._refuse(connection, request, dialect, behaviour, forced_refusal, model=None)
            return
        tokens = 0
        windows = behaviour.has_rate_windows
        if windows and behaviour.tpm is not None:
            tokens = behaviour.token_cost(model_request)
        admitted_at = loop.time()
        refusal = behaviour.admit(admitted_at, tokens)
        if refusal is not None:
            self._refuse(
                connection, request, dialect, behaviour, refusal, model=model_request.model_id
            )
            return
        if fault is Fault.HANG and self.settings.hang_seconds is None:
            self._count_fault(fault)
            connection.hold(behaviour)  # finished as cancelled when the client gives up
            return
        if fault is Fault.RESET:
            self._count_fault(fault)
            behaviour.finish(loop.time(), AttemptOutcome.FAILURE)
            connection.reset()
            return
        try:
            request_key = behaviour.request_key(model_request)
            latency = behaviour.latency_seconds(request_key) * behaviour.load_factor()
            response = behaviour.respond(model_request, request_key=request_key)
        except BadRequestError as exc:
            behaviour.finish(loop.time(), AttemptOutcome.REJECTED)
            body = dialect.error(ErrorKind.INVALID_REQUEST, str(exc))
            connection.respond(400, body, request.keep_alive)
            return
        headers: Mapping[str, str] | Callable[[], Mapping[str, str]] = _NO_HEADERS
        if windows:
            headers = _WindowHeaders(dialect, behaviour, loop)
        status = None if fault is None else _FAULT_STATUS.get(fault)
        if status is not None:
            assert fault is not None
            self._count_fault(fault)
            if status == 500:
                body = dialect.error(
                    ErrorKind.SERVER, "The server had an error processing your request."
                )
            else:
                body = dialect.error(ErrorKind.OVERLOADED, "Overloaded")
            connection.answer_at(
                admitted_at + latency, behaviour, AttemptOutcome.FAILURE, status, body, headers
            )
            return
        if fault is Fault.MALFORMED:
            self._count_fault(fault)
            body = dialect.malformed()
        else:
            body = dialect.answer(model_request, extra, response, request_key)
        if fault is Fault.HANG:
            assert self.settings.hang_seconds is not None
            self._count_fault(fault)
            loop.call_at(
                admitted_at + self.settings.hang_seconds,
                self._end_hang,
                connection,
                behaviour,
                body,
                headers,
            )
            return
        # The latency runs from admission: making the answer is part of it, not added to it.
        connection.answer_at(
            admitted_at + latency, behaviour, AttemptOutcome.SUCCESS, 200, body, headers
        )

    def _end_hang(
        self,
        connection: _HttpProtocol,
        behaviour: BehaviourModel,
        body: bytes,
        headers: Mapping[str, str] | Callable[[], Mapping[str, str]],
    ) -> None:
        """The end of a hang of ``hang_seconds``: its slot frees now, whether or not the client
        waited for the answer (then it is sent)."""
        now = asyncio.get_running_loop().time()
        if connection.is_open:
            behaviour.finish(now, AttemptOutcome.SUCCESS)
            connection.respond(200, body, True, headers() if callable(headers) else headers)
        else:
            behaviour.finish(now, AttemptOutcome.CANCELLED)

    def _control(self, connection: _HttpProtocol, request: _Request) -> None:
        """Routes that are not model calls: stats, health, the schedule epoch, or 404."""
        path = request.path.removeprefix("/v1")
        if request.method == "GET" and path == "/stats":
            series = request.query not in ("series=0", "series=false")
            connection.respond(200, json_bytes(self.stats(series=series)), request.keep_alive)
        elif request.method == "GET" and path == "/health":
            connection.respond(200, b'{"status":"ok"}', request.keep_alive)
        elif request.method == "POST" and path == "/mock/epoch":
            epoch: float | None = None
            if request.query == "at=next-request":
                self.arm_schedule_epoch()
            elif request.query in ("", "at=now"):
                epoch = self.reset_schedule_epoch()
            else:
                body = _OPENAI.error(
                    ErrorKind.INVALID_REQUEST,
                    f"POST /mock/epoch takes ?at=now or ?at=next-request, got ?{request.query}",
                )
                connection.respond(400, body, request.keep_alive)
                return
            connection.respond(200, json_bytes({"schedule_epoch_at": epoch}), request.keep_alive)
        else:
            body = _OPENAI.error(ErrorKind.NOT_FOUND, f"no route {request.method} {request.path}")
            connection.respond(404, body, False)

    def _fault(self, forced: str | None) -> Fault | None:
        if forced is not None:
            try:
                return Fault(forced)
            except ValueError:
                return None
        settings = self.settings
        rates = (
            (Fault.SERVER_ERROR, settings.error_500_rate),
            (Fault.OVERLOADED, settings.error_503_rate),
            (Fault.OVERLOADED_529, settings.error_529_rate),
            (Fault.HANG, settings.hang_rate),
            (Fault.RESET, settings.reset_rate),
            (Fault.MALFORMED, settings.malformed_rate),
        )
        if not any(rate for _, rate in rates):
            return None
        draw = self._rng.random()
        for fault, rate in rates:
            if draw < rate:
                return fault
            draw -= rate
        return None

    def _count_fault(self, fault: Fault) -> None:
        faults = self._counters.faults
        faults[fault.value] = faults.get(fault.value, 0) + 1

    def _refuse(
        self,
        connection: _HttpProtocol,
        request: _Request,
        dialect: Dialect,
        behaviour: BehaviourModel,
        refusal: Refusal,
        *,
        model: str | None,
    ) -> None:
        """Answer 429: Retry-After in the configured form (or the ``x-mock-retry-after-format``
        header's), the dialect's rate-limit headers for the windows in force. Refusals of a
        ``model`` (not forced ones) count per reason in its ``/stats``."""
        wait = refusal.retry_after_seconds
        form = request.headers.get("x-mock-retry-after-format")
        try:
            fmt = RetryAfterFormat(form) if form else self.settings.retry_after_format
        except ValueError:
            fmt = self.settings.retry_after_format
        headers: dict[str, str] = {}
        if fmt is RetryAfterFormat.SECONDS:
            headers["retry-after"] = str(max(0, int(wait + 0.999)))
        elif fmt is RetryAfterFormat.MILLISECONDS:
            headers["retry-after-ms"] = str(max(0, round(wait * 1000)))
        elif fmt is RetryAfterFormat.HTTP_DATE:
            # HTTP-dates have whole seconds: round up so the client never retries early.
            headers["retry-after"] = email.utils.formatdate(time.time() + wait + 1.0, usegmt=True)
        if behaviour.has_rate_windows:
            now = asyncio.get_running_loop().time()
            headers.update(dialect.rate_headers(*behaviour.window_states(now), time.time()))
        reason = refusal.reason.value
        if model is not None:
            refusals = self._models[model].refusals
            refusals[reason] = refusals.get(reason, 0) + 1
        hint = "" if fmt is RetryAfterFormat.NONE else f"; retry after {wait:.3f}s"
        body = dialect.error(ErrorKind.RATE_LIMIT, f"Rate limit reached ({reason}){hint}.")
        connection.respond(429, body, request.keep_alive, headers)

    def count_status(self, status: int) -> None:
        by_status = self._counters.responses_by_status
        by_status[status] = by_status.get(status, 0) + 1


class _WindowHeaders:
    """The dialect's rate-limit headers, made when the answer is sent (not when admitted), so
    they describe the windows as the client reads them."""

    __slots__ = ("_behaviour", "_dialect", "_loop")

    def __init__(
        self, dialect: Dialect, behaviour: BehaviourModel, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._dialect = dialect
        self._behaviour = behaviour
        self._loop = loop

    def __call__(self) -> Mapping[str, str]:
        windows = self._behaviour.window_states(self._loop.time())
        return self._dialect.rate_headers(*windows, time.time())


class _HttpProtocol(asyncio.Protocol):
    """One keep-alive connection; requests are answered in order, one at a time."""

    def __init__(self, server: MockProviderServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._busy = False
        self._pending: asyncio.TimerHandle | None = None
        self._held: tuple[BehaviourModel, AttemptOutcome] | None = None
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        self._transport = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._held is not None:
            behaviour, _ = self._held
            self._held = None
            behaviour.finish(asyncio.get_running_loop().time(), AttemptOutcome.CANCELLED)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._next()

    def _next(self) -> None:
        while not self._busy and self._transport is not None and not self._closing:
            request = self._parse()
            if request is None:
                return
            self._busy = True
            self._server.handle(self, request)

    def _parse(self) -> _Request | None:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEADER_BYTES:
                self._busy = True
                self.respond(431, _OPENAI.error(_BAD, "headers too large"), False)
            return None
        head = bytes(buffer[:end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            self._busy = True
            self.respond(400, _OPENAI.error(_BAD, "bad request line"), False)
            return None
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > _MAX_BODY_BYTES:
            self._busy = True
            self.respond(400, _OPENAI.error(_BAD, "bad content-length"), False)
            return None
        start = end + 4
        if len(buffer) < start + length:
            return None
        body = bytes(buffer[start : start + length])
        del buffer[: start + length]
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        path, _, query = target.partition("?")
        return _Request(
            method=method,
            path=path,
            query=query,
            headers=headers,
            body=body,
            keep_alive=keep_alive,
        )

    def respond(
        self,
        status: int,
        body: bytes,
        keep_alive: bool,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        transport = self._transport
        self._server.count_status(status)
        if transport is None:
            return
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            "content-type: application/json",
            f"content-length: {len(body)}",
        ]
        if not keep_alive:
            lines.append("connection: close")
        if headers:
            lines.extend(f"{name}: {value}" for name, value in headers.items())
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        if not keep_alive:
            self._closing = True
            transport.close()
            return
        self._busy = False
        if self._buffer:
            self._next()

    def answer_at(
        self,
        when: float,
        behaviour: BehaviourModel,
        outcome: AttemptOutcome,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | Callable[[], Mapping[str, str]],
    ) -> None:
        """Answer at loop time ``when`` (at once if it has passed); ``headers`` may be made
        then, by calling it."""
        self._held = (behaviour, outcome)
        loop = asyncio.get_running_loop()
        if when <= loop.time():
            self._finish(status, body, headers)
            return
        self._pending = loop.call_at(when, self._finish, status, body, headers)

    def _finish(
        self,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | Callable[[], Mapping[str, str]],
    ) -> None:
        self._pending = None
        held = self._held
        self._held = None
        if held is not None:
            behaviour, outcome = held
            behaviour.finish(asyncio.get_running_loop().time(), outcome)
        self.respond(status, body, True, headers() if callable(headers) else headers)

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._closing

    def hold(self, behaviour: BehaviourModel) -> None:
        self._held = (behaviour, AttemptOutcome.CANCELLED)

    def reset(self) -> None:
        transport = self._transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0: close sends RST instead of FIN, like a crashed or cut-off server.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._server.count_status(0)
        transport.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


_BAD = ErrorKind.INVALID_REQUEST
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    529: "Overloaded",
}


def content_hash(request: ModelRequest) -> str:
    """Hash of what a request asks (model, kind, messages, inputs, schema), not how it is sent."""
    content = {
        "model": request.model_id,
        "kind": request.kind.value,
        "messages": [[message.role, message.content] for message in request.messages],
        "inputs": list(request.inputs),
        "schema": request.json_schema,
    }
    encoded = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:32]


async def serve(settings: MockServerSettings, *, port: int, on_ready: Any = None) -> None:
    """Run a mock server on 127.0.0.1:``port`` until cancelled; ``on_ready(server)`` once bound."""
    server = MockProviderServer(settings)
    await server.start(port)
    try:
        if on_ready is not None:
            on_ready(server)
        await server.serve_forever()
    finally:
        await server.aclose()
