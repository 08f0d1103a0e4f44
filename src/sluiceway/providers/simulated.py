"""The in-process simulated provider: the behaviour model behind an async ``send``, no sockets.

It answers offline and deterministically (``type: simulated`` providers), with the latency,
capacity, rate limits and faults of :mod:`sluiceway.providers.behaviour`. Capacity, RPM and
TPM apply per model id, like a real endpoint's per-model limits. With a ``request_log`` every
answered attempt appends the hex of its request key (a hash of the request content and the seed)
as one line to that file, written through at once, so a killed process leaves a complete count.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sluiceway.errors import (
    BadRequestError,
    EngineError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
)
from sluiceway.providers.base import ModelRequest, ModelResponse
from sluiceway.providers.behaviour import (
    AttemptLedger,
    AttemptOutcome,
    BehaviourModel,
    SimulationSettings,
    SimulationStatistics,
    combine_statistics,
)


class SimulatedProvider:
    """A :class:`sluiceway.providers.base.ProviderClient` backed by a :class:`BehaviourModel`.

    ``send`` blocks only for the simulated latency (never with zero latency) and raises
    :class:`RateLimitedError` (capacity or RPM), :class:`ProviderUnavailableError` (injected
    server error), :class:`ProviderTimeoutError` (latency above ``request.timeout_seconds``,
    raised after waiting the timeout) or :class:`BadRequestError`. Cancelling ``send`` frees
    its capacity slot at once.
    """

    def __init__(
        self,
        name: str,
        settings: SimulationSettings,
        *,
        seed: int,
        clock: Callable[[], float] | None = None,
        track_requests: bool = False,
        request_log: Path | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.seed = seed
        # The behaviour (and its capacity) of the first model; one more per further model id.
        self.behaviour = BehaviourModel(settings, seed)
        self._behaviours: dict[str, BehaviourModel] = {}
        self._clock = clock  # None: the running loop's time
        self._attempts: AttemptLedger | None = (
            AttemptLedger() if self.behaviour.uses_attempt_numbers else None
        )
        self._completed: Counter[str] | None = Counter() if track_requests else None
        # One write(2) per answer on an O_APPEND descriptor: lines never interleave or tear.
        self._log_fd: int | None = None
        if request_log is not None:
            try:
                self._log_fd = os.open(
                    request_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
                )
            except OSError as error:
                raise EngineError(
                    f"simulated provider {name!r}: cannot open its request log {request_log} "
                    f"({error.strerror}); fix simulation.request_log or the directory"
                ) from None

    def _now(self) -> float:
        clock = self._clock
        return asyncio.get_running_loop().time() if clock is None else clock()

    def behaviour_for(self, model_id: str) -> BehaviourModel:
        """The behaviour model (capacity, RPM window, counters) of one model id."""
        behaviour = self._behaviours.get(model_id)
        if behaviour is None:
            behaviour = self.behaviour if not self._behaviours else None
            if behaviour is None:
                behaviour = BehaviourModel(self.settings, self.seed)
            self._behaviours[model_id] = behaviour
        return behaviour

    async def send(self, request: ModelRequest) -> ModelResponse:
        behaviour = self.behaviour_for(request.model_id)
        tokens = behaviour.token_cost(request) if self.settings.tpm is not None else 0
        refusal = behaviour.admit(self._now(), tokens)
        if refusal is not None:
            raise RateLimitedError(
                f"simulated provider {self.name!r}: model {request.model_id!r} refused the "
                f"request ({refusal.reason.value} limit reached); retry after "
                f"{refusal.retry_after_seconds:.3f} s or lower the concurrency",
                retry_after_seconds=refusal.retry_after_seconds,
            )
        outcome = AttemptOutcome.CANCELLED
        try:
            key = behaviour.request_key(request)
            attempts = self._attempts
            attempt = 1 if attempts is None else attempts.begin(key)
            if behaviour.should_fail(key, attempt):
                outcome = AttemptOutcome.FAILURE
                raise ProviderUnavailableError(
                    f"simulated provider {self.name!r}: injected server error for model "
                    f"{request.model_id!r} (attempt {attempt}, failure_rate "
                    f"{self.settings.failure_rate}); retry the request"
                )
            latency = behaviour.latency_seconds(key, attempt) * behaviour.load_factor()
            timeout = request.timeout_seconds
            if timeout is not None and latency > timeout:
                if timeout > 0:
                    await asyncio.sleep(timeout)
                outcome = AttemptOutcome.TIMEOUT
                raise ProviderTimeoutError(
                    f"simulated provider {self.name!r}: model {request.model_id!r} took longer "
                    f"than timeout_seconds={timeout} (latency {latency:.3f} s); raise the "
                    "model timeout or lower the simulated latency"
                )
            if latency > 0:
                await asyncio.sleep(latency)
            invalid_json = behaviour.should_answer_invalid_json(request.kind, key, attempt)
            response = behaviour.respond(request, request_key=key, invalid_json=invalid_json)
            if invalid_json:
                outcome = AttemptOutcome.INVALID_JSON
            else:
                outcome = AttemptOutcome.SUCCESS
                if attempts is not None:
                    attempts.forget(key)
            if self._completed is not None:
                self._completed[key.hex()] += 1
            if self._log_fd is not None:
                os.write(self._log_fd, key.hex().encode() + b"\n")
            return response
        except BadRequestError:
            outcome = AttemptOutcome.REJECTED
            raise
        finally:
            behaviour.finish(self._now(), outcome)

    def statistics(self) -> SimulationStatistics:
        """Counters summed over every model (``max_in_flight`` is the largest per model)."""
        behaviours = list(self._behaviours.values()) or [self.behaviour]
        return combine_statistics([b.statistics() for b in behaviours])

    def statistics_by_model(self) -> dict[str, SimulationStatistics]:
        return {model: b.statistics() for model, b in self._behaviours.items()}

    def completed_request_keys(self) -> Counter[str]:
        """Answered attempts per request key (hex of ``request_key``), as a copy.

        Counts every answer delivered, including deliberately invalid JSON. Raises
        :class:`EngineError` unless the provider was built with ``track_requests=True``.
        """
        if self._completed is None:
            raise EngineError(
                f"simulated provider {self.name!r} does not track requests; "
                "construct it with track_requests=True"
            )
        return Counter(self._completed)

    def request_key_hex(self, request: ModelRequest) -> str:
        """The key under which ``completed_request_keys`` counts ``request``."""
        return self.behaviour.request_key(request).hex()

    async def aclose(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
