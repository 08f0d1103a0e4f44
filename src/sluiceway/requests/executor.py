"""The boundary around outbound model attempts: acquire, call, classify, release (SPEC §6.4).

One ``execute_attempt`` is one outbound attempt under one request lease. ``execute`` is the
retry loop around attempts, bounded by a :class:`RetryPolicy`; it holds no lease while it
sleeps between attempts. Where a tpm budget applies, each attempt reserves an estimate of its
tokens and its release reports the usage the provider answered with. It emits
``model_request_started`` / ``model_request_completed`` around each outbound call, timed on the
controller's clock like the admission events.

With :class:`~sluiceway.requests.latency.StragglerSettings`, ``execute`` gives each attempt a
deadline that follows the latency observed for its provider/model, domain and column (an
attempt past it is abandoned as a provider timeout and retried, with at least twice that
deadline), and may send a hedged attempt for an attempt far past its expected latency: the
hedge takes its own lease with ``try_acquire`` (only capacity that is free now, never ahead of
a waiter), within the hedge budget; the first answer wins and the other attempt is cancelled
(its lease released as ``local_cancelled``). Deadlines run on one
:class:`~sluiceway.requests.deadlines.DeadlineWheel` per executor, not a timer per attempt.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sluiceway.errors import (
    EngineError,
    NonRetryableGenerationError,
    ProviderCircuitOpenError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    RequestAdmissionError,
    RetryableGenerationError,
)
from sluiceway.observability import EventBus, EventKind
from sluiceway.observability.codes import HedgeResultCode, RequestOutcomeCode
from sluiceway.observability.request_events import (
    ModelRequestCompleted,
    ModelRequestStarted,
    RequestAdaptiveTimeout,
    RequestHedgeCompleted,
    RequestHedgeStarted,
)
from sluiceway.providers.base import ModelRequest, ModelResponse, ProviderClient
from sluiceway.rate_limits import RateLimitHeaders
from sluiceway.requests.admission import (
    DenialReason,
    RequestAdmissionController,
    RequestAdmissionItem,
    RequestAdmissionLease,
    request_event_tags,
)
from sluiceway.requests.budgets import estimate_request_tokens
from sluiceway.requests.deadlines import DeadlineWheel, Timers
from sluiceway.requests.keys import RequestResourceKey
from sluiceway.requests.latency import (
    HedgeBudget,
    HedgeResult,
    LatencyTracker,
    LatencyWindow,
    StragglerSettings,
)
from sluiceway.requests.outcomes import RequestReleaseOutcome, classify_exception
from sluiceway.requests.retry import RetryPolicy, retry_delay_seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRequestExecutorStatistics:
    """Counters of one executor. ``failures`` counts provider failures, provider and local
    timeouts (adaptive timeouts included) and unexpected exceptions; ``cancelled`` counts
    attempts released as ``local_cancelled`` (a hedged call's cancelled attempt included);
    ``retries`` counts sleeps between attempts. ``attempts`` includes hedged attempts.

    ``adaptive_timeouts``: attempts abandoned at their adaptive deadline. Hedges: ``started``
    (a lease was granted), then ``won`` (answered first), ``lost`` (cancelled: the other
    attempt answered first, or the call ended) or ``failed``; ``hedges_skipped`` counts hedge
    deadlines reached without a hedge (budget spent, or no capacity free at once)."""

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
    adaptive_timeouts: int = 0
    hedges_started: int = 0
    hedges_won: int = 0
    hedges_lost: int = 0
    hedges_failed: int = 0
    hedges_skipped: int = 0


class _HedgeRace:
    """One call's first attempt and its possible hedge. Filed on the deadline wheel at the
    first attempt's start plus ``hedge_after_seconds``; ``fire`` starts the hedge task."""

    __slots__ = (
        "cancelling",
        "client",
        "context",
        "executor",
        "finished",
        "hedge",
        "hedge_after_seconds",
        "item",
        "request",
        "response",
        "task",
        "timeout_seconds",
        "token",
        "window",
        "won",
    )

    def __init__(
        self,
        executor: ModelRequestExecutor,
        *,
        item: RequestAdmissionItem,
        client: ProviderClient,
        request: ModelRequest,
        window: LatencyWindow,
        timeout_seconds: float | None,
        hedge_after_seconds: float,
    ) -> None:
        task = asyncio.current_task()
        if task is None:
            raise EngineError("a hedged model call must run inside an asyncio task")
        self.executor = executor
        self.task: asyncio.Task[object] = task
        self.cancelling = task.cancelling()
        self.context = contextvars.copy_context()  # the call's correlation, for the hedge task
        self.item = item
        self.client = client
        self.request = request
        self.window = window
        self.timeout_seconds = timeout_seconds
        self.hedge_after_seconds = hedge_after_seconds
        self.token = 0  # on the deadline wheel, once the first attempt sends
        self.finished = False  # the first attempt has ended
        self.won = False  # the hedge answered first and cancelled the first attempt
        self.response: ModelResponse | None = None
        self.hedge: asyncio.Task[ModelResponse | None] | None = None

    def fire(self) -> None:
        if not self.finished:
            self.executor._start_hedge(self)


class ModelRequestExecutor:
    """Runs model calls as admitted attempts.

    ``execute_attempt`` blocks while waiting for a lease and while the provider answers;
    it re-raises whatever the attempt raised after releasing the lease. Cancelled after the
    lease was granted: the lease is released as ``local_cancelled`` and the cancellation
    propagates. ``execute`` raises :class:`NonRetryableGenerationError` for requests the
    provider rejects and for an exhausted retry budget, and :class:`RetryableGenerationError`
    when the admission queue wait timed out.

    ``stragglers`` turns on adaptive per-attempt timeouts and/or hedged attempts in
    ``execute`` (see the module docstring; default: neither). A hedge runs in its own task
    and never outlives its call: cancelling the call cancels the hedge and waits for it.
    ``timers`` schedule the deadlines on the controller's clock (default: the running loop).

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
        stragglers: StragglerSettings | None = None,
        timers: Timers | None = None,
    ) -> None:
        self._controller = controller
        self._controller_clock = controller.clock
        self._events = events if events is not None else EventBus()
        self._retry = retry
        self._rng = rng
        self._clock = clock
        self._sleep = sleep
        self._queue_wait_timeout_seconds = queue_wait_timeout_seconds
        self._attempt_ids = itertools.count(1)
        self._stragglers = stragglers
        self._latency: LatencyTracker | None = None
        self._adaptive_timeout = False
        self._hedge_budget: HedgeBudget | None = None
        self._wheel: DeadlineWheel | None = None
        # Deadlines on the wheel by token: the task an adaptive timeout cancels, or the race
        # whose hedge it starts. A token leaves when it fires or when its attempt ends.
        self._deadline_tokens = itertools.count(1)
        self._deadlines: dict[int, asyncio.Task[Any] | _HedgeRace] = {}
        if stragglers is not None and stragglers.enabled:
            self._latency = LatencyTracker(stragglers)
            self._adaptive_timeout = stragglers.adaptive_timeout
            if stragglers.hedging:
                self._hedge_budget = HedgeBudget(
                    stragglers.hedge_budget_ratio, stragglers.hedge_burst
                )
            # Deadlines fire up to one tick late: a tenth of the smallest adaptive timeout.
            self._wheel = DeadlineWheel(
                tick_seconds=stragglers.min_timeout_seconds / 10,
                clock=controller.clock,
                fire=self._deadline_reached,
                pending=self._deadlines,
                timers=timers,
            )
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
        self._adaptive_timeouts = 0
        self._hedges_started = 0
        self._hedges_won = 0
        self._hedges_lost = 0
        self._hedges_failed = 0
        self._hedges_skipped = 0

    @property
    def controller(self) -> RequestAdmissionController:
        return self._controller

    @property
    def stragglers(self) -> StragglerSettings | None:
        return self._stragglers

    @property
    def latency(self) -> LatencyTracker | None:
        """The latency windows behind adaptive timeouts and hedges (None when both are off)."""
        return self._latency

    async def execute_attempt(
        self, item: RequestAdmissionItem, client: ProviderClient, request: ModelRequest
    ) -> ModelResponse:
        """One outbound attempt under one lease; the lease is released on every path. No
        adaptive timeout or hedge: those belong to ``execute``."""
        return await self._attempt(item, client, request, None, None, None, None)

    async def _attempt(
        self,
        item: RequestAdmissionItem,
        client: ProviderClient,
        request: ModelRequest,
        lease: RequestAdmissionLease | None,
        window: LatencyWindow | None,
        timeout_seconds: float | None,
        race: _HedgeRace | None,
    ) -> ModelResponse:
        """One attempt: under ``lease`` (a hedge's, granted by ``try_acquire``) or one acquired
        here; ``window`` gets its latency if it succeeds; abandoned as a provider timeout after
        ``timeout_seconds``; ``race`` is filed to start a hedge after its delay."""
        controller = self._controller
        if lease is None:
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
        clock = self._controller_clock
        started_at = clock() if timed or window is not None else 0.0
        # An adaptive deadline cancels this task when it fires; ``cancelling`` is the task's
        # count of pending cancellations before it, so a cancellation from elsewhere that
        # comes with it stays the caller's to see.
        token = 0
        task: asyncio.Task[Any] | None = None
        cancelling = 0
        wheel = self._wheel
        if timeout_seconds is not None and wheel is not None:
            task = asyncio.current_task()
            if task is not None:
                cancelling = task.cancelling()
                token = next(self._deadline_tokens)
                self._deadlines[token] = task
                wheel.schedule(started_at + timeout_seconds, token)
        if race is not None and wheel is not None:
            race.token = next(self._deadline_tokens)
            self._deadlines[race.token] = race
            wheel.schedule(started_at + race.hedge_after_seconds, race.token)
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
            if token and task is not None and token not in self._deadlines:
                task.uncancel()  # the client answered in spite of the deadline's cancellation
            rate_limit = response.rate_limit
            outcome = RequestReleaseOutcome.SUCCESS
            self._successes += 1
            if window is not None:
                window.observe(clock() - started_at)
            return response
        except BaseException as exc:
            if (
                token
                and task is not None
                and token not in self._deadlines  # the deadline fired: withdraw its cancel
                and task.uncancel() <= cancelling
                and window is not None
                and timeout_seconds is not None
            ):
                outcome = RequestReleaseOutcome.PROVIDER_TIMEOUT
                self._failures += 1
                self._adaptive_timeouts += 1
                raise self._expired(item, lease, request, window, timeout_seconds) from None
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
            if token:
                self._deadlines.pop(token, None)
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

    def _deadline_reached(self, token: int) -> None:
        """The wheel's callback: cancel the attempt, or start the hedge, still waiting on it."""
        target = self._deadlines.pop(token, None)
        if isinstance(target, _HedgeRace):
            target.fire()
        elif target is not None:
            target.cancel()

    def _expired(
        self,
        item: RequestAdmissionItem,
        lease: RequestAdmissionLease,
        request: ModelRequest,
        window: LatencyWindow,
        timeout_seconds: float,
    ) -> ProviderTimeoutError:
        """Account for an attempt abandoned at its adaptive deadline; the error to raise."""
        source = window.in_force()
        quantile = source.timeout_quantile_seconds
        samples = min(source.observed_total, self._settings().window)
        window.on_expiry(timeout_seconds)
        events = self._events
        if events.wants(EventKind.REQUEST_ADAPTIVE_TIMEOUT):
            events.emit(
                RequestAdaptiveTimeout(
                    **request_event_tags(item.resource),
                    attempt_id=item.attempt_id,
                    lease_id=lease.lease_id,
                    timeout_seconds=timeout_seconds,
                    configured_timeout_seconds=request.timeout_seconds,
                    quantile_seconds=quantile,
                    samples=samples,
                    captured_at=self._controller_clock(),
                )
            )
        settings = self._settings()
        key = item.resource.provider_model
        column = item.correlation.column if item.correlation is not None else None
        where = f" column {column!r}" if column is not None else ""
        basis = ""
        if quantile is not None:
            basis = (
                f"{settings.timeout_factor:g} x the p{100 * settings.timeout_quantile:g} "
                f"latency {quantile:.3g} s of its last {samples} successes, "
            )
        return ProviderTimeoutError(
            f"provider {key.provider!r} model {key.model_id!r}{where}: no answer within the "
            f"adaptive timeout of {timeout_seconds:.3g} s ({basis}floor "
            f"{settings.min_timeout_seconds:g} s, timeout_seconds={request.timeout_seconds}); "
            "the attempt was abandoned and is retried with a longer deadline. If this model "
            "legitimately answers this slowly at times, raise run.stragglers.timeout_factor or "
            "min_timeout_seconds, or set run.stragglers.adaptive_timeout: false"
        )

    def _settings(self) -> StragglerSettings:
        settings = self._stragglers
        if settings is None:
            raise EngineError("straggler settings are needed here; none were given")
        return settings

    # -- hedging -------------------------------------------------------------------------------

    def _start_hedge(self, race: _HedgeRace) -> None:
        """At a race's hedge deadline (a timer callback): start the hedge task if the budget
        and free capacity allow one now; it takes its lease when it first runs."""
        if not self._hedge_possible(race.item.resource):
            self._hedges_skipped += 1
            return
        race.hedge = race.task.get_loop().create_task(self._run_hedge(race), context=race.context)

    def _hedge_possible(self, resource: RequestResourceKey) -> bool:
        budget = self._hedge_budget
        return budget is not None and budget.can_spend() and self._controller.has_capacity(resource)

    async def _hedged(
        self,
        item: RequestAdmissionItem,
        client: ProviderClient,
        request: ModelRequest,
        window: LatencyWindow,
        timeout_seconds: float | None,
        hedge_after_seconds: float,
    ) -> ModelResponse:
        """The first attempt, with a hedge filed to start ``hedge_after_seconds`` after it
        started sending; the first answer wins."""
        race = _HedgeRace(
            self,
            item=item,
            client=client,
            request=request,
            window=window,
            timeout_seconds=timeout_seconds,
            hedge_after_seconds=hedge_after_seconds,
        )
        try:
            response = await self._attempt(
                item, client, request, None, window, timeout_seconds, race
            )
        except BaseException as error:
            self._finish_race(race)
            hedge = race.hedge
            if race.won:
                # The hedge answered first and cancelled this attempt: its answer is the call's,
                # unless someone else cancelled the call as well.
                if race.task.uncancel() <= race.cancelling and race.response is not None:
                    return race.response
                raise
            if hedge is None:
                raise
            if not isinstance(error, Exception):
                await self._stop_hedge(hedge)  # the call is cancelled: the hedge goes with it
                raise
            # The first attempt failed while its hedge runs: the hedge may still answer. If
            # the call is cancelled meanwhile, awaiting the hedge task cancels it too.
            answer = await hedge
            if answer is not None:
                return answer
            raise
        self._finish_race(race)
        if race.won:
            # Both answered: the hedge cancelled this attempt, whose client answered anyway.
            race.task.uncancel()
        if race.hedge is not None and not race.hedge.done():
            await self._stop_hedge(race.hedge)
        return response

    def _finish_race(self, race: _HedgeRace) -> None:
        """The first attempt ended: no hedge starts from now on."""
        race.finished = True
        self._deadlines.pop(race.token, None)

    @staticmethod
    async def _stop_hedge(hedge: asyncio.Task[ModelResponse | None]) -> None:
        """Cancel a hedge and wait until it has released its lease; an error of the hedge
        task itself (not of its attempt, which it keeps) is an engine bug and propagates."""
        hedge.cancel()
        await asyncio.wait((hedge,))
        if not hedge.cancelled() and (error := hedge.exception()) is not None:
            raise error

    async def _run_hedge(self, race: _HedgeRace) -> ModelResponse | None:
        """The hedge task: a second attempt under a lease from ``try_acquire``. Returns its
        answer, or None when it was skipped or failed (the first attempt's outcome stands)."""
        primary = race.item
        budget = self._hedge_budget
        if race.finished or budget is None or not self._hedge_possible(primary.resource):
            self._hedges_skipped += 1
            return None
        item = RequestAdmissionItem(
            resource=primary.resource,
            group=primary.group,
            weight=primary.weight,
            correlation=primary.correlation,
            attempt_id=next(self._attempt_ids),
            estimated_tokens=primary.estimated_tokens,
        )
        lease = self._controller.try_acquire(item)
        if not isinstance(lease, RequestAdmissionLease):
            self._hedges_skipped += 1
            return None
        budget.try_spend()
        self._hedges_started += 1
        events = self._events
        tags = request_event_tags(primary.resource)
        if events.wants(EventKind.REQUEST_HEDGE_STARTED):
            events.emit(
                RequestHedgeStarted(
                    **tags,
                    attempt_id=item.attempt_id,
                    lease_id=lease.lease_id,
                    primary_attempt_id=primary.attempt_id,
                    hedge_after_seconds=race.hedge_after_seconds,
                    captured_at=self._controller_clock(),
                )
            )
        result = HedgeResult.LOST
        try:
            response = await self._attempt(
                item, race.client, race.request, lease, race.window, race.timeout_seconds, None
            )
        except Exception:
            result = HedgeResult.FAILED
            return None
        else:
            result = HedgeResult.WON
            if not race.finished:
                # The first attempt is still out: it is cancelled, and the call answers this.
                race.won = True
                race.response = response
                race.task.cancel()
            return response
        finally:
            if result is HedgeResult.WON:
                self._hedges_won += 1
            elif result is HedgeResult.LOST:
                self._hedges_lost += 1
            else:
                self._hedges_failed += 1
            if events.wants(EventKind.REQUEST_HEDGE_COMPLETED):
                events.emit(
                    RequestHedgeCompleted(
                        **tags,
                        attempt_id=item.attempt_id,
                        primary_attempt_id=primary.attempt_id,
                        result=HedgeResultCode(result.value),
                        captured_at=self._controller_clock(),
                    )
                )

    # -- calls ---------------------------------------------------------------------------------

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
        latency = self._latency
        at_least_seconds = 0.0  # after an adaptive timeout: twice the deadline that expired
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
            window: LatencyWindow | None = None
            timeout_seconds: float | None = None
            hedge_after_seconds: float | None = None
            if latency is not None:
                correlation = item.correlation
                window = latency.window(
                    resource, correlation.column if correlation is not None else None
                )
                configured = request.timeout_seconds
                if self._adaptive_timeout:
                    timeout_seconds = window.attempt_timeout(configured, at_least_seconds)
                budget = self._hedge_budget
                if budget is not None:
                    budget.earn()
                    hedge_after_seconds = window.hedge_delay_seconds()
                    limit = timeout_seconds if timeout_seconds is not None else configured
                    if (
                        hedge_after_seconds is not None
                        and limit is not None
                        and hedge_after_seconds >= limit
                    ):
                        hedge_after_seconds = None
            try:
                if hedge_after_seconds is None or window is None:
                    return await self._attempt(
                        item, client, request, None, window, timeout_seconds, None
                    )
                return await self._hedged(
                    item, client, request, window, timeout_seconds, hedge_after_seconds
                )
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
                if timeout_seconds is not None and isinstance(exc, ProviderTimeoutError):
                    at_least_seconds = 2.0 * timeout_seconds
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
            adaptive_timeouts=self._adaptive_timeouts,
            hedges_started=self._hedges_started,
            hedges_won=self._hedges_won,
            hedges_lost=self._hedges_lost,
            hedges_failed=self._hedges_failed,
            hedges_skipped=self._hedges_skipped,
        )

    @property
    def events(self) -> EventBus:
        return self._events

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()
