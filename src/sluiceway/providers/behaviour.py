"""Behaviour of a simulated model endpoint: what to answer, how long to take, when to refuse.

Pure decisions shared by the in-process simulated provider and the loopback mock server: no
sleeping and no clock reads (callers pass ``now``). Content, latency and faults are functions of
a blake2b hash of the request content plus the seed, so the same request gets the same answer.
The limits (capacity, RPM, TPM) can change while the endpoint serves (:meth:`BehaviourModel.
set_limit`), and another client of the same endpoint can take its share of them
(:meth:`BehaviourModel.admit_other`), as the mock server's schedules and competing load do.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import random
import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from sluiceway.errors import BadRequestError, ConfigError, ConfigIssue, EngineError
from sluiceway.providers.base import (
    ChatMessage,
    GenerationKind,
    ModelRequest,
    ModelResponse,
    TokenUsage,
)
from sluiceway.providers.json_instances import WORDS, InstanceFactory, compile_instance_factory

RPM_WINDOW_SECONDS = 60.0
# Shape of the lognormal latency tail; its mean is SimulationSettings.latency_tail_seconds.
_TAIL_SIGMA = 1.0
_IDENTITY_CACHE_ENTRIES = 512
# Bucket levels are floats: a wait computed from a level refills it to within this of the need.
_LEVEL_EPSILON = 1e-9
_STANDARD_NORMAL = NormalDist()
_PUNCTUATION = ".,;:!?\"'()[]{}<>*`"
# Structured answers without a schema (JSON mode) and judge answers without a rubric schema.
_DEFAULT_SCHEMAS: Mapping[GenerationKind, Mapping[str, Any]] = {
    GenerationKind.STRUCTURED: {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    },
    GenerationKind.JUDGE: {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "minimum": 1, "maximum": 5},
            "reasoning": {"type": "string"},
        },
        "required": ["score", "reasoning"],
    },
}


class RateWindowKind(enum.Enum):
    """How ``rpm`` and ``tpm`` are enforced.

    ``ROLLING``: at most N in any 60 seconds (a log of admissions); a burst of N empties it and
    the next slot frees when the oldest admission leaves it. ``BUCKET``: a token bucket holding
    at most N, refilled continuously at N per 60 seconds, as OpenAI and Anthropic describe their
    limits; after a burst, one slot comes back every 60 / N seconds.
    """

    ROLLING = "rolling"
    BUCKET = "bucket"


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationSettings:
    """How a simulated endpoint behaves. Rates are shares of attempts in [0, 1].

    ``capacity`` bounds concurrent requests of one model, ``rpm`` admitted requests and ``tpm``
    admitted tokens (prompt plus answer, as the answer will report them) per model per rolling
    window of ``window_seconds`` (60 s, as providers count; ``rate_window`` says which kind);
    beyond any of them the endpoint answers rate-limited. With ``queueing`` the endpoint never
    refuses for capacity: like a batching server it slows down instead, latency growing by
    ``in_flight / capacity`` once in-flight exceeds ``capacity``.
    ``invalid_json_rate`` makes structured and judge answers unparseable, so re-ask logic can
    be exercised.
    """

    latency_seconds: float = 0.0
    latency_tail_seconds: float = 0.0
    capacity: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    retry_after_seconds: float = 1.0
    failure_rate: float = 0.0
    invalid_json_rate: float = 0.0
    embedding_dimensions: int = 16
    queueing: bool = False
    rate_window: RateWindowKind = RateWindowKind.ROLLING
    window_seconds: float = RPM_WINDOW_SECONDS

    def __post_init__(self) -> None:
        issues: list[ConfigIssue] = []

        def check(ok: bool, name: str, rule: str) -> None:
            if not ok:
                value = getattr(self, name)
                issues.append(
                    ConfigIssue(
                        path=f"simulation.{name}",
                        message=f"{name} is {value!r}; it must be {rule}",
                        hint=f"set simulation.{name} to {rule}",
                    )
                )

        check(self.latency_seconds >= 0.0, "latency_seconds", ">= 0")
        check(self.latency_tail_seconds >= 0.0, "latency_tail_seconds", ">= 0")
        check(self.capacity is None or self.capacity >= 1, "capacity", ">= 1 or unset")
        check(self.rpm is None or self.rpm >= 1, "rpm", ">= 1 or unset")
        check(self.tpm is None or self.tpm >= 1, "tpm", ">= 1 or unset")
        check(self.retry_after_seconds >= 0.0, "retry_after_seconds", ">= 0")
        check(0.0 <= self.failure_rate <= 1.0, "failure_rate", "between 0 and 1")
        check(0.0 <= self.invalid_json_rate <= 1.0, "invalid_json_rate", "between 0 and 1")
        check(self.embedding_dimensions >= 1, "embedding_dimensions", ">= 1")
        check(self.window_seconds > 0.0, "window_seconds", "> 0")
        if issues:
            raise ConfigError(issues, source="(simulation settings)")


class EndpointLimit(enum.Enum):
    """A limit of an endpoint that can change while it serves (:meth:`BehaviourModel.set_limit`)."""

    CAPACITY = "capacity"
    RPM = "rpm"
    TPM = "tpm"


class RefusalReason(enum.Enum):
    CAPACITY = "capacity"  # as many requests in flight as the endpoint serves at once
    RPM = "rpm"  # as many requests admitted in the last 60 seconds as the endpoint allows
    TPM = "tpm"  # this request's tokens would pass the tokens allowed in the last 60 seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """A rate-limited answer: why, and when trying again may succeed."""

    reason: RefusalReason
    retry_after_seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowState:
    """One rate window (requests or tokens) as a client can be told of it.

    ``limit`` is the limit in force, ``remaining`` what may still be admitted now (never below
    0 in this report, though a request larger than the whole window can overdraw it) and
    ``reset_seconds`` the time until the window is back to the full limit (0 when it is full).
    """

    limit: int
    remaining: int
    reset_seconds: float


class AttemptOutcome(enum.Enum):
    """How an admitted attempt ended; every admitted attempt ends with exactly one."""

    SUCCESS = "success"
    INVALID_JSON = "invalid_json"  # answered, but structured output that does not parse
    FAILURE = "failure"  # server error
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    REJECTED = "rejected"  # the request itself was invalid (bad schema, no inputs)


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationStatistics:
    """Counters of one endpoint.

    ``requests`` = ``rate_limited`` + ``in_flight`` + the sum of the outcome counters.
    ``in_flight_seconds`` is the integral of in-flight requests over time (from the first admit
    call to the last admit/finish), so mean concurrency = in_flight_seconds / elapsed.
    ``first_admitted_at`` and ``last_finished_at`` bound the busy time: the clock at the first
    admitted attempt and at the last finish (``None`` before either).
    """

    requests: int
    successes: int
    invalid_json: int
    rate_limited: int
    failures: int
    timeouts: int
    cancelled: int
    rejected: int
    in_flight: int
    max_in_flight: int
    in_flight_seconds: float
    first_admitted_at: float | None = None
    last_finished_at: float | None = None


def combine_statistics(parts: list[SimulationStatistics]) -> SimulationStatistics:
    """Counters of several endpoints (models) added up; ``max_in_flight`` is the largest one."""
    return SimulationStatistics(
        requests=sum(p.requests for p in parts),
        successes=sum(p.successes for p in parts),
        invalid_json=sum(p.invalid_json for p in parts),
        rate_limited=sum(p.rate_limited for p in parts),
        failures=sum(p.failures for p in parts),
        timeouts=sum(p.timeouts for p in parts),
        cancelled=sum(p.cancelled for p in parts),
        rejected=sum(p.rejected for p in parts),
        in_flight=sum(p.in_flight for p in parts),
        max_in_flight=max((p.max_in_flight for p in parts), default=0),
        in_flight_seconds=sum(p.in_flight_seconds for p in parts),
        first_admitted_at=min(
            (p.first_admitted_at for p in parts if p.first_admitted_at is not None), default=None
        ),
        last_finished_at=max(
            (p.last_finished_at for p in parts if p.last_finished_at is not None), default=None
        ),
    )


class AttemptLedger:
    """Attempt numbers per request key, so retries of the same request draw fresh faults.

    Bounded: a key is forgotten once answered; past ``max_keys`` the oldest key is dropped.
    """

    def __init__(self, max_keys: int = 65_536) -> None:
        self._max_keys = max_keys
        self._attempts: dict[bytes, int] = {}

    def begin(self, request_key: bytes) -> int:
        """Count one more attempt of this request and return its number (1 for the first)."""
        attempts = self._attempts
        number = attempts.get(request_key, 0) + 1
        attempts[request_key] = number
        if number == 1 and len(attempts) > self._max_keys:
            del attempts[next(iter(attempts))]
        return number

    def forget(self, request_key: bytes) -> None:
        self._attempts.pop(request_key, None)

    def __len__(self) -> int:
        return len(self._attempts)


class BehaviourModel:
    """Decides admission, latency, faults and content for one simulated endpoint.

    Call protocol per attempt: ``admit(now)``; if it returns ``None`` the attempt is in flight
    and must end with exactly one ``finish(now, outcome)``. Attempts of another client of the
    same endpoint use ``admit_other`` / ``finish_other`` instead: they take capacity and window
    room like any attempt but are not counted in :meth:`statistics`. Never blocks; raises
    :class:`EngineError` on a broken invariant (finish without admit, clock going backwards).
    """

    def __init__(self, settings: SimulationSettings, seed: int) -> None:
        self.settings = settings
        self.seed = seed
        self._seed_text = str(seed)
        self._tail_mu = (
            math.log(settings.latency_tail_seconds) - _TAIL_SIGMA**2 / 2
            if settings.latency_tail_seconds > 0
            else None
        )
        self._embedding_layout = struct.Struct(f"<{settings.embedding_dimensions}H")
        self._rng = random.Random()
        # id(object) -> (object, derived value); keeping the object pins its id.
        self._canonical_cache: dict[int, tuple[object, str]] = {}
        self._factory_cache: dict[int, tuple[object, InstanceFactory]] = {}
        # Limits in force (set_limit changes them).
        self._capacity = settings.capacity
        self._rpm = settings.rpm
        self._tpm = settings.tpm
        self._window_seconds = settings.window_seconds
        self._bucket = settings.rate_window is RateWindowKind.BUCKET
        # Mutable admission state.
        self._in_flight = 0
        self._other_in_flight = 0  # attempts of other clients (admit_other), not in statistics
        self._max_in_flight = 0
        # ROLLING windows: admissions inside the last 60 s.
        self._admitted_at: deque[float] = deque()  # admit times inside the RPM window
        self._tokens_at: deque[tuple[float, int]] = deque()  # (admit time, tokens) in the window
        self._tokens_in_window = 0
        # BUCKET windows: what each bucket holds at ``_refilled_at`` (at most the limit).
        self._request_level = float(settings.rpm or 0)
        self._token_level = float(settings.tpm or 0)
        self._refilled_at: float | None = None
        self._last_event_at: float | None = None
        self._in_flight_seconds = 0.0
        self._first_admitted_at: float | None = None
        self._last_finished_at: float | None = None
        self._requests = 0
        self._rate_limited = 0
        self._outcomes: dict[AttemptOutcome, int] = dict.fromkeys(AttemptOutcome, 0)

    @property
    def uses_attempt_numbers(self) -> bool:
        """Whether decisions depend on the attempt number (else callers may pass 1 always)."""
        settings = self.settings
        return (
            settings.failure_rate > 0.0
            or settings.invalid_json_rate > 0.0
            or settings.latency_tail_seconds > 0.0
        )

    # ----------------------------------------------------------------------------------------
    # Limits
    # ----------------------------------------------------------------------------------------

    @property
    def capacity(self) -> int | None:
        """The concurrency limit in force (``None``: unlimited)."""
        return self._capacity

    @property
    def rpm(self) -> int | None:
        return self._rpm

    @property
    def tpm(self) -> int | None:
        return self._tpm

    @property
    def has_rate_windows(self) -> bool:
        """Whether an RPM or a TPM window is in force."""
        return self._rpm is not None or self._tpm is not None

    def set_limit(self, now: float, limit: EndpointLimit, value: int | None) -> None:
        """Put ``value`` in force for ``limit`` from ``now`` on (``None``: unlimited).

        Attempts in flight are never ended: above a lowered capacity, new attempts are refused
        until enough of them finish. A window that appears starts full (no history); a BUCKET
        window keeps what it holds, up to a lowered limit.
        """
        if value is not None and value < 1:
            raise EngineError(
                f"simulated endpoint: {limit.value} limit {value} must be >= 1 or None (unlimited)"
            )
        if limit is EndpointLimit.CAPACITY:
            self._capacity = value
            return
        if self._bucket:
            self._refill(now)
        if limit is EndpointLimit.RPM:
            if self._rpm is None or value is None:
                self._admitted_at.clear()
                self._request_level = float(value or 0)
            else:
                self._request_level = min(self._request_level, float(value))
            self._rpm = value
        else:
            if self._tpm is None or value is None:
                self._tokens_at.clear()
                self._tokens_in_window = 0
                self._token_level = float(value or 0)
            else:
                self._token_level = min(self._token_level, float(value))
            self._tpm = value

    # ----------------------------------------------------------------------------------------
    # Admission
    # ----------------------------------------------------------------------------------------

    def admit(self, now: float, tokens: int = 0) -> Refusal | None:
        """Admit one attempt (``None``) or refuse it for capacity, the RPM or the TPM window.

        ``tokens`` is what the attempt costs against ``tpm`` (see :meth:`token_cost`). A request
        larger than the whole TPM budget is admitted into a full window only (an empty ROLLING
        window, a full BUCKET).
        """
        self._advance(now)
        self._requests += 1
        # As _charge, inline: this is the path of every request of the mock server.
        capacity = self._capacity
        if (
            capacity is not None
            and self._in_flight + self._other_in_flight >= capacity
            and not self.settings.queueing
        ):
            self._rate_limited += 1
            return Refusal(
                reason=RefusalReason.CAPACITY,
                retry_after_seconds=self.settings.retry_after_seconds,
            )
        if self._rpm is not None or self._tpm is not None:
            refusal = self._charge_windows(now, tokens)
            if refusal is not None:
                self._rate_limited += 1
                return refusal
        self._in_flight += 1
        if self._in_flight > self._max_in_flight:
            self._max_in_flight = self._in_flight
        if self._first_admitted_at is None:
            self._first_admitted_at = now
        return None

    def admit_other(self, now: float, tokens: int = 0) -> Refusal | None:
        """Admit an attempt of another client of this endpoint, as :meth:`admit` would, without
        counting it in :meth:`statistics`; an admitted one ends with :meth:`finish_other`."""
        refusal = self._charge(now, tokens)
        if refusal is None:
            self._other_in_flight += 1
        return refusal

    def finish_other(self) -> None:
        """End one attempt admitted by :meth:`admit_other`."""
        if self._other_in_flight <= 0:
            raise EngineError(
                "simulated endpoint: finish_other() without an attempt admitted by admit_other; "
                "call it exactly once per admit_other that returned None"
            )
        self._other_in_flight -= 1

    def _charge(self, now: float, tokens: int) -> Refusal | None:
        """The refusal for an attempt arriving at ``now``, or ``None`` after charging its
        request and ``tokens`` to the windows (refused attempts leave no trace in them)."""
        capacity = self._capacity
        if (
            capacity is not None
            and self._in_flight + self._other_in_flight >= capacity
            and not self.settings.queueing
        ):
            return Refusal(
                reason=RefusalReason.CAPACITY,
                retry_after_seconds=self.settings.retry_after_seconds,
            )
        if self._rpm is None and self._tpm is None:
            return None
        return self._charge_windows(now, tokens)

    def _charge_windows(self, now: float, tokens: int) -> Refusal | None:
        """The RPM / TPM refusal at ``now``, or ``None`` after charging the windows."""
        rpm = self._rpm
        tpm = self._tpm
        if self._bucket:
            return self._charge_buckets(now, tokens)
        horizon = now - self._window_seconds
        if rpm is not None:
            window = self._admitted_at
            while window and window[0] <= horizon:
                window.popleft()
            if len(window) >= rpm:
                # The honest wait: until the oldest admit leaves the window (always > 0).
                return Refusal(
                    reason=RefusalReason.RPM,
                    retry_after_seconds=window[0] + self._window_seconds - now,
                )
        if tpm is not None:
            spent = self._tokens_at
            while spent and spent[0][0] <= horizon:
                self._tokens_in_window -= spent.popleft()[1]
            excess = self._tokens_in_window + tokens - tpm
            if spent and excess > 0:
                return Refusal(
                    reason=RefusalReason.TPM,
                    retry_after_seconds=_tokens_free_at(spent, excess) + self._window_seconds - now,
                )
            spent.append((now, tokens))
            self._tokens_in_window += tokens
        if rpm is not None:
            self._admitted_at.append(now)
        return None

    def _charge_buckets(self, now: float, tokens: int) -> Refusal | None:
        self._refill(now)
        rpm = self._rpm
        tpm = self._tpm
        if rpm is not None and self._request_level < 1.0 - _LEVEL_EPSILON:
            return Refusal(
                reason=RefusalReason.RPM,
                retry_after_seconds=(1.0 - self._request_level) * self._window_seconds / rpm,
            )
        if tpm is not None:
            # A request above the whole bucket needs a full bucket (and overdraws it).
            needed = min(tokens, tpm)
            if self._token_level < needed - _LEVEL_EPSILON:
                return Refusal(
                    reason=RefusalReason.TPM,
                    retry_after_seconds=(needed - self._token_level) * self._window_seconds / tpm,
                )
            self._token_level -= tokens
        if rpm is not None:
            self._request_level -= 1.0
        return None

    def _refill(self, now: float) -> None:
        """Bring both buckets up to ``now`` (each refills at its limit per 60 s, up to it)."""
        last = self._refilled_at
        if last is not None and now <= last:
            return
        self._refilled_at = now
        if last is None:
            return
        elapsed = now - last
        if self._rpm is not None:
            rpm = float(self._rpm)
            self._request_level = min(
                rpm, self._request_level + elapsed * rpm / self._window_seconds
            )
        if self._tpm is not None:
            tpm = float(self._tpm)
            self._token_level = min(tpm, self._token_level + elapsed * tpm / self._window_seconds)

    def window_states(self, now: float) -> tuple[WindowState | None, WindowState | None]:
        """The RPM and the TPM window at ``now`` (``None`` for a limit not in force)."""
        rpm = self._rpm
        tpm = self._tpm
        requests = tokens = None
        if self._bucket:
            self._refill(now)
            if rpm is not None:
                level = self._request_level
                requests = WindowState(
                    limit=rpm,
                    remaining=max(0, math.floor(level + _LEVEL_EPSILON)),
                    reset_seconds=max(0.0, (rpm - level) * self._window_seconds / rpm),
                )
            if tpm is not None:
                level = self._token_level
                tokens = WindowState(
                    limit=tpm,
                    remaining=max(0, math.floor(level + _LEVEL_EPSILON)),
                    reset_seconds=max(0.0, (tpm - level) * self._window_seconds / tpm),
                )
            return requests, tokens
        horizon = now - self._window_seconds
        if rpm is not None:
            window = self._admitted_at
            while window and window[0] <= horizon:
                window.popleft()
            requests = WindowState(
                limit=rpm,
                remaining=max(0, rpm - len(window)),
                reset_seconds=window[-1] + self._window_seconds - now if window else 0.0,
            )
        if tpm is not None:
            spent = self._tokens_at
            while spent and spent[0][0] <= horizon:
                self._tokens_in_window -= spent.popleft()[1]
            tokens = WindowState(
                limit=tpm,
                remaining=max(0, tpm - self._tokens_in_window),
                reset_seconds=spent[-1][0] + self._window_seconds - now if spent else 0.0,
            )
        return requests, tokens

    def load_factor(self) -> float:
        """Latency multiplier of a request admitted now: ``max(1, in_flight / capacity)`` in
        queueing mode (the admitted request and other clients' attempts included), 1
        otherwise."""
        capacity = self._capacity
        if not self.settings.queueing or capacity is None:
            return 1.0
        in_flight = self._in_flight + self._other_in_flight
        return 1.0 if in_flight <= capacity else in_flight / capacity

    def finish(self, now: float, outcome: AttemptOutcome) -> None:
        """End one admitted attempt with its outcome."""
        if self._in_flight <= 0:
            raise EngineError(
                f"simulated endpoint: finish({outcome.value}) without an admitted attempt; "
                "call finish exactly once per admit that returned None"
            )
        self._advance(now)
        self._in_flight -= 1
        self._outcomes[outcome] += 1
        self._last_finished_at = now

    def observe(self, now: float) -> None:
        """Bring ``in_flight_seconds`` up to ``now`` (before reading statistics)."""
        self._advance(now)

    def _advance(self, now: float) -> None:
        last = self._last_event_at
        if last is not None:
            if now < last:
                raise EngineError(
                    f"simulated endpoint: clock went backwards from {last} to {now}; "
                    "pass a monotonic time (the event loop's clock)"
                )
            self._in_flight_seconds += self._in_flight * (now - last)
        self._last_event_at = now

    def statistics(self) -> SimulationStatistics:
        outcomes = self._outcomes
        return SimulationStatistics(
            requests=self._requests,
            successes=outcomes[AttemptOutcome.SUCCESS],
            invalid_json=outcomes[AttemptOutcome.INVALID_JSON],
            rate_limited=self._rate_limited,
            failures=outcomes[AttemptOutcome.FAILURE],
            timeouts=outcomes[AttemptOutcome.TIMEOUT],
            cancelled=outcomes[AttemptOutcome.CANCELLED],
            rejected=outcomes[AttemptOutcome.REJECTED],
            in_flight=self._in_flight,
            max_in_flight=self._max_in_flight,
            in_flight_seconds=self._in_flight_seconds,
            first_admitted_at=self._first_admitted_at,
            last_finished_at=self._last_finished_at,
        )

    # ----------------------------------------------------------------------------------------
    # Deterministic decisions
    # ----------------------------------------------------------------------------------------

    def request_key(self, request: ModelRequest) -> bytes:
        """A 16-byte blake2b hash of the request content and the seed (stable across runs).

        Covers model id, kind, messages, inputs, the canonical JSON of the schema and of the
        parameters; not the timeout. Raises :class:`BadRequestError` for parameters that are
        not JSON.
        """
        parts = [self._seed_text, request.model_id, request.kind.value]
        for message in request.messages:
            # Length prefixes keep the encoding unambiguous whatever the content holds.
            parts += (str(len(message.role)), message.role, str(len(message.content)))
            parts.append(message.content)
        parts.append("inputs")
        for text in request.inputs:
            parts += (str(len(text)), text)
        schema = request.json_schema
        parts.append("" if schema is None else self._canonical_json(schema, "json_schema"))
        parameters = request.parameters
        parts.append(self._canonical_json(parameters, "parameters") if parameters else "")
        data = "\x1f".join(parts).encode("utf-8", "surrogatepass")
        return hashlib.blake2b(data, digest_size=16).digest()

    def token_cost(self, request: ModelRequest, *, request_key: bytes | None = None) -> int:
        """Tokens a request costs against ``tpm``: the usage its (valid) answer reports; 0 for
        a request that will be rejected as invalid."""
        try:
            return self.respond(request, request_key=request_key).usage.total_tokens
        except BadRequestError:
            return 0

    def latency_seconds(self, request_key: bytes, attempt_number: int = 1) -> float:
        """Fixed latency plus a lognormal tail (mean ``latency_tail_seconds``) drawn per attempt."""
        fixed = self.settings.latency_seconds
        if self._tail_mu is None:
            return fixed
        u = _unit_draw(request_key, attempt_number, b"latency")
        return fixed + math.exp(self._tail_mu + _TAIL_SIGMA * _STANDARD_NORMAL.inv_cdf(u))

    def should_fail(self, request_key: bytes, attempt_number: int) -> bool:
        """Whether this attempt gets a server error (a share ``failure_rate`` of attempts)."""
        rate = self.settings.failure_rate
        if rate <= 0.0:
            return False
        return rate >= 1.0 or _unit_draw(request_key, attempt_number, b"failure") < rate

    def should_answer_invalid_json(
        self, kind: GenerationKind, request_key: bytes, attempt_number: int
    ) -> bool:
        """Whether a structured or judge answer is made unparseable on this attempt."""
        rate = self.settings.invalid_json_rate
        if rate <= 0.0 or kind is GenerationKind.TEXT or kind is GenerationKind.EMBEDDING:
            return False
        return rate >= 1.0 or _unit_draw(request_key, attempt_number, b"invalid") < rate

    # ----------------------------------------------------------------------------------------
    # Content
    # ----------------------------------------------------------------------------------------

    def respond(
        self, request: ModelRequest, *, request_key: bytes | None = None, invalid_json: bool = False
    ) -> ModelResponse:
        """The deterministic answer to ``request``.

        TEXT: a few sentences from a fixed vocabulary, naming words of the prompt, plus a
        reasoning sentence. STRUCTURED/JUDGE: JSON valid for ``json_schema`` (or, with
        ``invalid_json``, text that does not parse). EMBEDDING: one unit vector per input.
        Raises :class:`BadRequestError` for an unsatisfiable schema or an embedding request
        without inputs.
        """
        key = self.request_key(request) if request_key is None else request_key
        kind = request.kind
        if kind is GenerationKind.EMBEDDING:
            return self._embed(request)
        prompt_words = _count_words(request.messages)
        # The key is already a uniform hash of the request and the seed: its bytes pick the text.
        draw = key
        reasoning = _REASONING[(draw[9] << 8 | draw[10]) & _SENTENCE_MASK]
        if kind is GenerationKind.TEXT:
            text, words = self._text(request.messages, draw)
            return ModelResponse(
                text=text,
                reasoning=reasoning,
                usage=TokenUsage(
                    prompt_tokens=_tokens(prompt_words), completion_tokens=_tokens(words)
                ),
            )
        schema = request.json_schema
        if schema is None:
            schema = _DEFAULT_SCHEMAS[kind]
        self._rng.seed(int.from_bytes(key, "big"))
        text = json.dumps(self._factory(schema)(self._rng), ensure_ascii=False)
        if invalid_json:
            # Starts with prose and stops mid-value, so no JSON parser accepts it.
            text = "Here is the JSON you asked for: " + text[: len(text) // 2]
        return ModelResponse(
            text=text,
            reasoning=reasoning,
            usage=TokenUsage(
                prompt_tokens=_tokens(prompt_words),
                completion_tokens=_tokens(text.count(" ") + 1),
            ),
        )

    def _text(self, messages: tuple[ChatMessage, ...], draw: bytes) -> tuple[str, int]:
        """(answer, word count): two or three bank sentences picked by ``draw`` bytes."""
        bank = _SENTENCES
        mask = _SENTENCE_MASK
        first, words, first_lowered = bank[(draw[0] << 8 | draw[1]) & mask]
        second, more, _ = bank[(draw[2] << 8 | draw[3]) & mask]
        words += more
        topic = _topic_words(messages, draw[6], draw[7])
        if topic:
            first = f"Regarding {topic}, {first_lowered}"
            words += 2 + topic.count(" ")
        if draw[8] & 1:
            third, more, _ = bank[(draw[4] << 8 | draw[5]) & mask]
            text = f"{first} {second} {third}"
            words += more
        else:
            text = f"{first} {second}"
        return text, words

    def _embed(self, request: ModelRequest) -> ModelResponse:
        if not request.inputs:
            raise BadRequestError(
                f"simulated endpoint: embedding request for model {request.model_id!r} has "
                "no inputs; set ModelRequest.inputs to the texts to embed"
            )
        layout = self._embedding_layout
        prefix = f"{self._seed_text}\x1f{request.model_id}\x1f".encode()
        vectors: list[tuple[float, ...]] = []
        words = 0
        for text in request.inputs:
            raw = hashlib.shake_256(prefix + text.encode("utf-8", "surrogatepass")).digest(
                layout.size
            )
            # Centred values are never 0 (x - 32767.5), so the norm is always positive.
            values = [x - 32767.5 for x in layout.unpack(raw)]
            norm = math.sqrt(math.fsum(v * v for v in values))
            vectors.append(tuple(v / norm for v in values))
            words += text.count(" ") + 1
        return ModelResponse(
            embeddings=tuple(vectors), usage=TokenUsage(prompt_tokens=_tokens(words))
        )

    # ----------------------------------------------------------------------------------------
    # Per-object caches (schemas and parameter mappings are treated as immutable)
    # ----------------------------------------------------------------------------------------

    def _canonical_json(self, value: Mapping[str, Any], field_name: str) -> str:
        cache = self._canonical_cache
        entry = cache.get(id(value))
        if entry is not None and entry[0] is value:
            return entry[1]
        try:
            text = json.dumps(
                value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain
            )
        except (TypeError, ValueError) as error:
            raise BadRequestError(
                f"simulated endpoint: request {field_name} are not JSON ({error}); "
                "use only strings, numbers, booleans, null, lists and mappings"
            ) from None
        if len(cache) >= _IDENTITY_CACHE_ENTRIES:
            cache.clear()
        cache[id(value)] = (value, text)
        return text

    def _factory(self, schema: Mapping[str, Any]) -> InstanceFactory:
        cache = self._factory_cache
        entry = cache.get(id(schema))
        if entry is not None and entry[0] is schema:
            return entry[1]
        factory = compile_instance_factory(schema)
        if len(cache) >= _IDENTITY_CACHE_ENTRIES:
            cache.clear()
        cache[id(schema)] = (schema, factory)
        return factory


def _tokens_free_at(spent: deque[tuple[float, int]], excess: int) -> float:
    """Admit time of the charge whose leaving the window frees ``excess`` tokens."""
    freed = 0
    for at, amount in spent:
        freed += amount
        if freed >= excess:
            return at
    return spent[-1][0]


def _plain(value: object) -> object:
    """json.dumps fallback: read-only mappings become dicts; anything else is not JSON."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON")


def _unit_draw(request_key: bytes, attempt_number: int, purpose: bytes) -> float:
    """A uniform draw in (0, 1) from the key, the attempt number and the decision it serves."""
    digest = hashlib.blake2b(
        request_key + attempt_number.to_bytes(8, "big"), digest_size=8, person=purpose
    ).digest()
    return ((int.from_bytes(digest, "big") >> 11) + 0.5) / 2.0**53


def _count_words(messages: tuple[ChatMessage, ...]) -> int:
    if len(messages) == 1:
        return messages[0].content.count(" ") + 1
    return sum(message.content.count(" ") + 1 for message in messages)


def _tokens(words: int) -> int:
    """Approximate tokens from words (4 tokens per 3 words)."""
    return (words * 4 + 2) // 3


def _topic_words(messages: tuple[ChatMessage, ...], first: int, second: int) -> str:
    """Up to two distinct words (over three letters) of the last user message, or ''."""
    if not messages:
        return ""
    content = messages[-1].content
    if messages[-1].role != "user":
        for message in reversed(messages):
            if message.role == "user":
                content = message.content
                break
    tokens = content[:400].split()
    count = len(tokens)
    picked = ""
    for start in (first % count, second % count) if count else ():
        for index in range(start, start + min(count, 12)):
            word = tokens[index % count]
            if len(word) < 4:
                continue
            if not word.isalpha():
                word = word.strip(_PUNCTUATION)
                if len(word) < 4 or not word.isalpha():
                    continue
            word = word.lower()
            if word != picked:
                if picked:
                    return f"{picked} and {word}"
                picked = word
                break
    return picked


def _sentence_bank(seed: int, opening: str, size: int) -> tuple[tuple[str, int, str], ...]:
    """``size`` sentences of 5 to 10 vocabulary words, fixed by ``seed``: each with its word
    count and its form with a lower-case first letter (to follow an opening clause)."""
    rng = random.Random(seed)
    bank: list[tuple[str, int, str]] = []
    for _ in range(size):
        words = [WORDS[rng.getrandbits(8)] for _ in range(rng.randint(5, 10))]
        text = f"{opening} {' '.join(words)}." if opening else " ".join(words).capitalize() + "."
        bank.append((text, len(words) + len(opening.split()), text[0].lower() + text[1:]))
    return tuple(bank)


# Text answers are two or three sentences of this bank (over a billion combinations), so a
# TEXT answer costs a few dictionary-free lookups instead of assembling words one by one.
_SENTENCE_MASK = 0x3FF
_SENTENCES = _sentence_bank(20_240_601, "", _SENTENCE_MASK + 1)
_REASONING = tuple(
    text for text, _, _ in _sentence_bank(20_240_602, "First consider the", _SENTENCE_MASK + 1)
)
