"""The loopback mock provider server (SPEC §7.3): an OpenAI-compatible HTTP endpoint on 127.0.0.1.

It reuses the simulated provider's :class:`BehaviourModel`, one per model id, so capacity, RPM
and TPM are per model: beyond them it answers 429 with ``Retry-After`` (seconds, HTTP-date or
``retry-after-ms``) and ``x-ratelimit-*`` headers, or, in queueing mode, slows down instead.
Faults (500, 503, hang, connection reset, malformed body) are injected by rate or forced per
request with the ``x-mock-fault`` header. ``GET /stats`` returns counters per model and an
in-flight time series, so utilization is measured at the server. With ``count_by_content`` it
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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sluiceway.errors import BadRequestError, EngineError
from sluiceway.providers.base import ChatMessage, GenerationKind, ModelRequest
from sluiceway.providers.behaviour import (
    AttemptOutcome,
    BehaviourModel,
    Refusal,
    RefusalReason,
    SimulationSettings,
    combine_statistics,
)

LOOPBACK = "127.0.0.1"
_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 32 * 1024 * 1024
_SERIES_POINTS = 36_000


class RetryAfterFormat(enum.Enum):
    SECONDS = "seconds"
    HTTP_DATE = "http-date"
    MILLISECONDS = "ms"


class Fault(enum.Enum):
    """Faults the server can inject (``x-mock-fault: <value>`` forces one per request)."""

    RATE_LIMIT = "429"
    SERVER_ERROR = "500"
    OVERLOADED = "503"
    HANG = "hang"
    RESET = "reset"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True, kw_only=True)
class MockServerSettings:
    """Behaviour of the mock server; fault rates are shares of admitted requests in [0, 1]."""

    simulation: SimulationSettings = field(default_factory=SimulationSettings)
    seed: int = 0
    api_key: str | None = None  # when set, requests need ``Authorization: Bearer <key>``
    retry_after_format: RetryAfterFormat = RetryAfterFormat.SECONDS
    error_500_rate: float = 0.0
    error_503_rate: float = 0.0
    hang_rate: float = 0.0
    reset_rate: float = 0.0
    malformed_rate: float = 0.0
    stats_interval_seconds: float = 0.1
    count_by_content: bool = False  # /stats gains ``requests_by_content``

    def __post_init__(self) -> None:
        for name in ("error_500_rate", "error_503_rate", "hang_rate", "reset_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise EngineError(f"MockServerSettings.{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.malformed_rate <= 1.0 or self.stats_interval_seconds <= 0:
            raise EngineError(
                "MockServerSettings needs malformed_rate in [0, 1] and stats_interval_seconds "
                f"> 0, got {self.malformed_rate} and {self.stats_interval_seconds}"
            )


@dataclass(slots=True)
class _Request:
    method: str
    path: str
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


class MockProviderServer:
    """The server; ``await start()`` binds 127.0.0.1 (port 0 picks a free port)."""

    def __init__(self, settings: MockServerSettings) -> None:
        self.settings = settings
        self._behaviours: dict[str, BehaviourModel] = {}
        self._rng = random.Random(settings.seed)
        self._server: asyncio.Server | None = None
        self._counters = _Counters()
        self._series: deque[tuple[float, int]] = deque(maxlen=_SERIES_POINTS)
        self._sampler: asyncio.TimerHandle | None = None
        self._started_at = 0.0
        self._connections: set[_HttpProtocol] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, port: int = 0) -> int:
        """Listen on 127.0.0.1:``port`` and return the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _HttpProtocol(self), host=LOOPBACK, port=port, reuse_address=True
        )
        self._started_at = loop.time()
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

    # -- statistics --------------------------------------------------------------------------

    def behaviour(self, model_id: str) -> BehaviourModel:
        behaviour = self._behaviours.get(model_id)
        if behaviour is None:
            behaviour = BehaviourModel(self.settings.simulation, self.settings.seed)
            self._behaviours[model_id] = behaviour
        return behaviour

    def _in_flight(self) -> int:
        return sum(b.statistics().in_flight for b in self._behaviours.values())

    def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        self._series.append((round(loop.time() - self._started_at, 3), self._in_flight()))
        self._sampler = loop.call_later(self.settings.stats_interval_seconds, self._sample)

    def stats(self) -> dict[str, Any]:
        """Counters per model and in total, status counts, faults and the in-flight series."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        per_model = {}
        for model, behaviour in self._behaviours.items():
            behaviour.observe(now)
            per_model[model] = self._relative(asdict(behaviour.statistics()))
        total = combine_statistics([b.statistics() for b in self._behaviours.values()])
        counters = self._counters
        extra = {"requests_by_content": dict(counters.by_content)}
        return {
            **(extra if self.settings.count_by_content else {}),
            "uptime_seconds": now - self._started_at,
            "http_requests": counters.http_requests,
            "responses_by_status": {str(k): v for k, v in counters.responses_by_status.items()},
            "faults": dict(counters.faults),
            "models": per_model,
            "total": self._relative(asdict(total)),
            "in_flight_series": list(self._series),
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
        if request.method == "GET" and request.path in ("/stats", "/v1/stats"):
            connection.respond(200, _json(self.stats()), request.keep_alive)
            return
        if request.method == "GET" and request.path in ("/health", "/v1/health"):
            connection.respond(200, b'{"status":"ok"}', request.keep_alive)
            return
        if request.method != "POST" or request.path not in (
            "/v1/chat/completions",
            "/v1/embeddings",
            "/chat/completions",
            "/embeddings",
        ):
            connection.respond(
                404, _error("not_found", f"no route {request.method} {request.path}"), False
            )
            return
        key = self.settings.api_key
        if key is not None and request.headers.get("authorization") != f"Bearer {key}":
            connection.respond(
                401, _error("invalid_api_key", "Incorrect API key provided."), request.keep_alive
            )
            return
        try:
            model_request = _model_request(request)
        except BadRequestError as exc:
            connection.respond(400, _error("invalid_request_error", str(exc)), request.keep_alive)
            return
        if self.settings.count_by_content:
            by_content = self._counters.by_content
            digest = content_hash(model_request)
            by_content[digest] = by_content.get(digest, 0) + 1
        forced = request.headers.get("x-mock-fault")
        fault = self._fault(forced)
        if fault is Fault.RATE_LIMIT:
            self._refuse(
                connection, request, Refusal(reason=RefusalReason.CAPACITY, retry_after_seconds=1.0)
            )
            return
        loop = asyncio.get_running_loop()
        behaviour = self.behaviour(model_request.model_id)
        tokens = 0
        if self.settings.simulation.tpm is not None:
            tokens = behaviour.token_cost(model_request)
        admitted_at = loop.time()
        refusal = behaviour.admit(admitted_at, tokens)
        if refusal is not None:
            self._refuse(connection, request, refusal)
            return
        if fault is Fault.HANG:
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
            connection.respond(400, _error("invalid_request_error", str(exc)), request.keep_alive)
            return
        if fault is Fault.SERVER_ERROR or fault is Fault.OVERLOADED:
            self._count_fault(fault)
            status = 500 if fault is Fault.SERVER_ERROR else 503
            body = _error("server_error", "The server had an error processing your request.")
            connection.answer_at(
                admitted_at + latency, behaviour, AttemptOutcome.FAILURE, status, body, {}
            )
            return
        if fault is Fault.MALFORMED:
            self._count_fault(fault)
            body = b'{"id": "chatcmpl-mock", "choices": [{"message": {"content": "trunc'
        else:
            body = _json(_openai_body(model_request, response))
        # The latency runs from admission: making the answer is part of it, not added to it.
        connection.answer_at(
            admitted_at + latency, behaviour, AttemptOutcome.SUCCESS, 200, body, {}
        )

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

    def _refuse(self, connection: _HttpProtocol, request: _Request, refusal: Refusal) -> None:
        wait = refusal.retry_after_seconds
        form = request.headers.get("x-mock-retry-after-format")
        try:
            fmt = RetryAfterFormat(form) if form else self.settings.retry_after_format
        except ValueError:
            fmt = self.settings.retry_after_format
        headers: dict[str, str] = {}
        if fmt is RetryAfterFormat.MILLISECONDS:
            headers["retry-after-ms"] = str(max(0, round(wait * 1000)))
        elif fmt is RetryAfterFormat.HTTP_DATE:
            # HTTP-dates have whole seconds: round up so the client never retries early.
            headers["retry-after"] = email.utils.formatdate(time.time() + wait + 1.0, usegmt=True)
        else:
            headers["retry-after"] = str(max(0, int(wait + 0.999)))
        simulation = self.settings.simulation
        if refusal.reason is RefusalReason.TPM:
            headers["x-ratelimit-limit-tokens"] = str(simulation.tpm)
            headers["x-ratelimit-remaining-tokens"] = "0"
            headers["x-ratelimit-reset-tokens"] = f"{wait:.3f}s"
        else:
            limit = (
                simulation.capacity if refusal.reason is RefusalReason.CAPACITY else simulation.rpm
            )
            if limit is not None:
                headers["x-ratelimit-limit-requests"] = str(limit)
                headers["x-ratelimit-remaining-requests"] = "0"
                headers["x-ratelimit-reset-requests"] = f"{wait:.3f}s"
        body = _error(
            "rate_limit_exceeded",
            f"Rate limit reached ({refusal.reason.value}); retry after {wait:.3f}s.",
        )
        connection.respond(429, body, request.keep_alive, headers)

    def count_status(self, status: int) -> None:
        by_status = self._counters.responses_by_status
        by_status[status] = by_status.get(status, 0) + 1


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
                self.respond(431, _error("invalid_request_error", "headers too large"), False)
            return None
        head = bytes(buffer[:end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            self._busy = True
            self.respond(400, _error("invalid_request_error", "bad request line"), False)
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
            self.respond(400, _error("invalid_request_error", "bad content-length"), False)
            return None
        start = end + 4
        if len(buffer) < start + length:
            return None
        body = bytes(buffer[start : start + length])
        del buffer[: start + length]
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        return _Request(
            method=method,
            path=target.split("?", 1)[0],
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
        headers: Mapping[str, str],
    ) -> None:
        """Answer at loop time ``when`` (at once if it has passed)."""
        self._held = (behaviour, outcome)
        loop = asyncio.get_running_loop()
        if when <= loop.time():
            self._finish(status, body, headers)
            return
        self._pending = loop.call_at(when, self._finish, status, body, headers)

    def _finish(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self._pending = None
        held = self._held
        self._held = None
        if held is not None:
            behaviour, outcome = held
            behaviour.finish(asyncio.get_running_loop().time(), outcome)
        self.respond(status, body, True, headers)

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


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _error(code: str, message: str) -> bytes:
    return _json({"error": {"message": message, "type": code, "code": code}})


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


def _model_request(request: _Request) -> ModelRequest:
    try:
        data = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequestError("the request body is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        raise BadRequestError("the request body needs a string 'model'")
    model = data["model"]
    if request.path.endswith("/embeddings"):
        inputs = data.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
            raise BadRequestError("'input' must be a string or a list of strings")
        return ModelRequest(model_id=model, kind=GenerationKind.EMBEDDING, inputs=tuple(inputs))
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise BadRequestError("'messages' must be a non-empty list")
    messages = []
    for message in raw_messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise BadRequestError("every message needs a string 'content'")
        messages.append(
            ChatMessage(role=str(message.get("role", "user")), content=message["content"])
        )
    kind = GenerationKind.TEXT
    schema = None
    response_format = data.get("response_format")
    if isinstance(response_format, dict):
        kind = GenerationKind.STRUCTURED
        json_schema = response_format.get("json_schema")
        if isinstance(json_schema, dict) and isinstance(json_schema.get("schema"), dict):
            schema = json_schema["schema"]
    return ModelRequest(model_id=model, kind=kind, messages=tuple(messages), json_schema=schema)


def _openai_body(request: ModelRequest, response: Any) -> dict[str, Any]:
    usage = {
        "prompt_tokens": response.usage.prompt_tokens,
        "completion_tokens": response.usage.completion_tokens,
        "total_tokens": response.usage.total_tokens,
    }
    if request.kind is GenerationKind.EMBEDDING:
        return {
            "object": "list",
            "model": request.model_id,
            "data": [
                {"object": "embedding", "index": i, "embedding": list(vector)}
                for i, vector in enumerate(response.embeddings)
            ],
            "usage": usage,
        }
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "model": request.model_id,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": response.text,
                    "reasoning_content": response.reasoning,
                },
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


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
