"""The boundary around outbound model attempts: acquire, call, classify, release (SPEC §6.4).

One ``execute_attempt`` is one outbound attempt under one request lease. ``execute`` is the
retry loop around attempts, bounded by a :class:`RetryPolicy`; it holds no lease while it
sleeps between attempts. Where a tpm budget applies, each attempt reserves an estimate of its
tokens and its release reports the usage the provider answered with. It emits
``model_request_started`` / ``model_request_completed`` around each outbound call, timed on the
controller's clock like the admission events.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sluiceway.errors import (
    NonRetryableGenerationError,
    ProviderCircuitOpenError,
    ProviderError,
    RateLimitedError,
    RequestAdmissionError,
    RetryableGenerationError,
)
from sluiceway.observability import EventBus, EventKind
from sluiceway.observability.codes import RequestOutcomeCode
from sluiceway.observability.request_events import ModelRequestCompleted, ModelRequestStarted
from sluiceway.providers.base import ModelRequest, ModelResponse, ProviderClient
from sluiceway.rate_limits import RateLimitHeaders
from sluiceway.requests.admission import (
    DenialReason,
    RequestAdmissionController,
    RequestAdmissionItem,
    request_event_tags,
)
from sluiceway.requests.budgets import estimate_request_tokens
from sluiceway.requests.keys import RequestResourceKey
from sluiceway.requests.outcomes import RequestReleaseOutcome, classify_exception
from sluiceway.requests.retry import RetryPolicy, retry_delay_seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRequestExecutorStatistics:
    """Counters of one executor. ``failures`` counts provider failures, provider and local
    timeouts and unexpected exceptions; ``retries`` counts sleeps between attempts."""

    calls: int
    attempts: int
    successes: int
    rate_limited: int
    failures: int
    cancelled: int
    retries: int
    non_retryable: int
    budgets_exhausted: int
    release_diagnostics: int


class ModelRequestExecutor:
    """Runs model calls as admitted attempts.

    ``execute_attempt`` blocks while waiting for a lease and while the provider answers;
    it re-raises whatever the attempt raised after releasing the lease. Cancelled after the
    lease was granted: the lease is released as ``local_cancelled`` and the cancellation
    propagates. ``execute`` raises :class:`NonRetryableGenerationError` for requests the
    provider rejects and for an exhausted retry budget, and :class:`RetryableGenerationError`
    when the admission queue wait timed out.

    ``events`` receives the model call events (default: a bus with no sinks); pass the
    controller's bus so both share one stream.
    """

    def __init__(
        self,
        controller: RequestAdmissionController,
        *,
        retry: RetryPolicy,
        rng: random.Random,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        queue_wait_timeout_seconds: float | None = None,
        events: EventBus | None = None,
    ) -> None:
        self._controller = controller
        self._events = events if events is not None else EventBus()
        self._retry = retry
        self._rng = rng
        self._clock = clock
        self._sleep = sleep
        self._queue_wait_timeout_seconds = queue_wait_timeout_seconds
        self._attempt_ids = itertools.count(1)
        # Counters:
        self._calls = 0
        self._attempts = 0
        self._successes = 0
        self._rate_limited = 0
        self._failures = 0
        self._cancelled = 0
        self._retries = 0
        self._non_retryable = 0
        self._budgets_exhausted = 0
        self._release_diagnostics = 0

    @property
    def controller(self) -> RequestAdmissionController:
        return self._controller

    async def execute_attempt(
        self, item: RequestAdmissionItem, client: ProviderClient, request: ModelRequest
    ) -> ModelResponse:
        """One outbound attempt under one lease; the lease is released on every path."""
        controller = self._controller
        lease = await controller.acquire(item)
        # No suspension point between the grant and ``try``: the lease cannot be orphaned.
        self._attempts += 1
        outcome = RequestReleaseOutcome.UNEXPECTED_EXCEPTION
        retry_after_seconds: float | None = None
        rate_limit: RateLimitHeaders | None = None  # the windows the answer reported
        response: ModelResponse | None = None
        events = self._events
        # Trace sampling: both events are detail of a task attempt outside the sample unless
        # the attempt is traced (or runs outside any task).
        correlation = item.correlation
        timed = (correlation is None or correlation.traced) and (
            events.wants(EventKind.MODEL_REQUEST_STARTED)
            or events.wants(EventKind.MODEL_REQUEST_COMPLETED)
        )
        started_at = controller.clock() if timed else 0.0
        try:
            if timed and events.wants(EventKind.MODEL_REQUEST_STARTED):
                events.emit(
                    ModelRequestStarted(
                        **request_event_tags(item.resource),
                        attempt_id=item.attempt_id,
                        lease_id=lease.lease_id,
                        captured_at=started_at,
                    )
                )
            response = await client.send(request)
            rate_limit = response.rate_limit
            outcome = RequestReleaseOutcome.SUCCESS
            self._successes += 1
            return response
        except BaseException as exc:
            outcome, retry_after_seconds = classify_exception(exc)
            if isinstance(exc, RateLimitedError):
                rate_limit = exc.rate_limit
            if outcome is RequestReleaseOutcome.RATE_LIMITED:
                self._rate_limited += 1
            elif outcome is RequestReleaseOutcome.LOCAL_CANCELLED:
                self._cancelled += 1
            else:
                self._failures += 1
            raise
        finally:
            if timed and events.wants(EventKind.MODEL_REQUEST_COMPLETED):
                completed_at = controller.clock()
                usage = response.usage if response is not None else None
                events.emit(
                    ModelRequestCompleted(
                        **request_event_tags(item.resource),
                        attempt_id=item.attempt_id,
                        lease_id=lease.lease_id,
                        outcome=RequestOutcomeCode(outcome.value),
                        latency_seconds=completed_at - started_at,
                        input_tokens=None if usage is None else usage.prompt_tokens,
                        output_tokens=None if usage is None else usage.completion_tokens,
                        captured_at=completed_at,
                    )
                )
            usage_tokens = None
            if response is not None and response.usage.total_tokens > 0:
                usage_tokens = response.usage.total_tokens  # settles a tpm reservation
            result = controller.release(
                lease,
                outcome,
                retry_after_seconds=retry_after_seconds,
                usage_tokens=usage_tokens,
                rate_limit=rate_limit,
            )
            if not result.released:
                self._release_diagnostics += 1

    async def execute(
        self,
        resource: RequestResourceKey,
        client: ProviderClient,
        request: ModelRequest,
        *,
        group: str | None = None,
        weight: int | None = None,
    ) -> ModelResponse:
        """Attempts until one succeeds or the retry budget is spent.

        ``group``/``weight`` default to the running task's (``sluiceway.context``), else
        ``"default"`` with weight 1.
        """
        self._calls += 1
        policy = self._retry
        now = self._now
        started_at = now()
        attempt = 0
        # A token estimate for a tpm budget, or for the token window a provider may report
        # (its report can arrive while this request waits for a lease).
        estimated_tokens = (
            estimate_request_tokens(request)
            if getattr(client, "reports_rate_limits", False)
            or self._controller.reserves_tokens(resource)
            else 0
        )
        while True:
            attempt += 1
            item = RequestAdmissionItem.capture(
                resource,
                attempt_id=next(self._attempt_ids),
                group=group,
                weight=weight,
                queue_wait_timeout_seconds=self._queue_wait_timeout_seconds,
                estimated_tokens=estimated_tokens,
            )
            try:
                return await self.execute_attempt(item, client, request)
            except RateLimitedError as exc:
                last_error: Exception = exc
                retry_after_seconds = exc.retry_after_seconds
            except ProviderError as exc:
                if not exc.retryable:
                    self._non_retryable += 1
                    raise NonRetryableGenerationError(
                        f"provider {resource.provider_model.provider!r} model "
                        f"{resource.provider_model.model_id!r} rejected the request "
                        f"({type(exc).__name__}: {exc}); retrying the same request cannot help, "
                        "fix the request parameters or the credentials"
                    ) from exc
                last_error = exc
                retry_after_seconds = None
            except TimeoutError as exc:
                last_error = exc
                retry_after_seconds = None
            except RequestAdmissionError as exc:
                if exc.reason == DenialReason.TIMEOUT.value:
                    raise RetryableGenerationError(str(exc)) from exc
                if exc.reason == DenialReason.BREAKER_OPEN.value:
                    key = resource.provider_model
                    raise ProviderCircuitOpenError(
                        str(exc), provider=key.provider, model_id=key.model_id
                    ) from exc
                raise
            elapsed_seconds = now() - started_at
            delay_seconds = 0.0
            if attempt < policy.max_attempts:
                delay_seconds = retry_delay_seconds(
                    policy,
                    retry_number=attempt,
                    retry_after_seconds=retry_after_seconds,
                    rng=self._rng,
                )
            if (
                attempt >= policy.max_attempts
                or elapsed_seconds + delay_seconds > policy.max_wall_seconds
            ):
                self._budgets_exhausted += 1
                raise NonRetryableGenerationError(
                    f"provider {resource.provider_model.provider!r} model "
                    f"{resource.provider_model.model_id!r}: gave up after {attempt} attempt(s) "
                    f"over {elapsed_seconds:.1f}s (retry budget: {policy.max_attempts} attempts, "
                    f"{policy.max_wall_seconds:g}s); last error: {type(last_error).__name__}: "
                    f"{last_error}"
                ) from last_error
            self._retries += 1
            await self._sleep(delay_seconds)

    def statistics(self) -> ModelRequestExecutorStatistics:
        return ModelRequestExecutorStatistics(
            calls=self._calls,
            attempts=self._attempts,
            successes=self._successes,
            rate_limited=self._rate_limited,
            failures=self._failures,
            cancelled=self._cancelled,
            retries=self._retries,
            non_retryable=self._non_retryable,
            budgets_exhausted=self._budgets_exhausted,
            release_diagnostics=self._release_diagnostics,
        )

    @property
    def events(self) -> EventBus:
        return self._events

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()
