"""Request admission: may this concrete model request go now (SPEC §6.2).

Each provider/model has a static aggregate cap over all its domains and one weighted-fair
waiter queue; each domain has a limit read from a :class:`RequestLimit`. Every state change
that hands out capacity goes through ``_assign`` (synchronous), which resolves waiter futures
with their lease before the waiters run. Every lease is released exactly once.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sluiceway.context import TaskCorrelation, current_task
from sluiceway.errors import EngineError, RequestAdmissionError
from sluiceway.fair_queue import QueueEntry, WeightedFairQueue
from sluiceway.requests.keys import ProviderModelKey, RequestDomain, RequestResourceKey
from sluiceway.requests.limits import RequestLimit, RequestLimitFactory, static_limits
from sluiceway.requests.outcomes import RequestReleaseOutcome

DEFAULT_GROUP = "default"


class DenialReason(enum.Enum):
    NO_CAPACITY = "no_capacity"
    QUEUED_WAITERS_AHEAD = "queued_waiters_ahead"
    SHUTDOWN = "shutdown"
    TIMEOUT = "timeout"
    UNKNOWN_RESOURCE = "unknown_resource"


class ReleaseResult(enum.Enum):
    """What ``release`` did. Only ``OK`` changed capacity; the others are diagnostics."""

    OK = "ok"
    DUPLICATE = "duplicate"
    FOREIGN = "foreign"
    UNKNOWN = "unknown"

    @property
    def released(self) -> bool:
        return self is ReleaseResult.OK


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestAdmissionItem:
    """One request asking for a lease: resource, fairness group and weight, correlation."""

    resource: RequestResourceKey
    group: str = DEFAULT_GROUP
    weight: int = 1
    queue_wait_timeout_seconds: float | None = None
    correlation: TaskCorrelation | None = None
    attempt_id: int = 0

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise EngineError(
                f"request admission item for {self.resource} has weight {self.weight}; "
                "fairness weights must be >= 1"
            )
        if self.queue_wait_timeout_seconds is not None and self.queue_wait_timeout_seconds < 0:
            raise EngineError(
                f"request admission item for {self.resource} has queue_wait_timeout_seconds="
                f"{self.queue_wait_timeout_seconds}; use None (wait forever) or a value >= 0"
            )

    @classmethod
    def capture(
        cls,
        resource: RequestResourceKey,
        *,
        attempt_id: int,
        group: str | None = None,
        weight: int | None = None,
        queue_wait_timeout_seconds: float | None = None,
    ) -> RequestAdmissionItem:
        """Build an item for the task running now (``sluiceway.context.current_task``).

        Explicit ``group``/``weight`` win; otherwise the task's group is used, and outside any
        task the group is ``"default"`` with weight 1.
        """
        correlation = current_task.get()
        if correlation is not None:
            group = correlation.group_key if group is None else group
            weight = correlation.group_weight if weight is None else weight
        return cls(
            resource=resource,
            group=DEFAULT_GROUP if group is None else group,
            weight=1 if weight is None else weight,
            queue_wait_timeout_seconds=queue_wait_timeout_seconds,
            correlation=correlation,
            attempt_id=attempt_id,
        )


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class RequestAdmissionLease:
    """Proof that one request may be in flight. Identity-compared; released exactly once."""

    lease_id: int
    resource: RequestResourceKey
    group: str
    attempt_id: int
    granted_at: float
    limit_at_grant: int
    owner: int = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestAdmissionDenied:
    reason: DenialReason
    queued_waiters_ahead: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestDomainStatistics:
    resource: RequestResourceKey
    limit: int
    in_flight: int
    waiters: int
    granted_total: int
    released_total: int
    max_in_flight: int
    max_waiters: int
    outcomes: Mapping[RequestReleaseOutcome, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderModelStatistics:
    provider_model: ProviderModelKey
    static_cap: int
    in_flight: int
    waiters: int
    granted_total: int
    released_total: int
    max_in_flight: int
    max_waiters: int
    domains: Mapping[RequestDomain, RequestDomainStatistics]


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestAdmissionStatistics:
    provider_models: Mapping[ProviderModelKey, ProviderModelStatistics]
    live_leases: int
    in_flight: int
    waiters: int
    granted_total: int
    released_total: int
    release_diagnostics: int
    waiters_cancelled: int
    waiters_timed_out: int
    waiters_shut_down: int
    grants_returned_on_cancel: int
    shutting_down: bool


class _Pool:
    """Mutable state of one provider/model: aggregate cap, in flight, waiter queue."""

    __slots__ = (
        "cap",
        "granted_total",
        "in_flight",
        "key",
        "max_in_flight",
        "max_waiters",
        "queue",
        "released_total",
    )

    def __init__(self, key: ProviderModelKey, cap: int) -> None:
        self.key = key
        self.cap = cap
        self.in_flight = 0
        self.max_in_flight = 0
        self.max_waiters = 0
        self.granted_total = 0
        self.released_total = 0
        self.queue: WeightedFairQueue[_Waiter] = WeightedFairQueue()


class _Domain:
    """Mutable state of one request resource (provider/model + domain)."""

    __slots__ = (
        "granted_total",
        "in_flight",
        "limit",
        "limit_source",
        "max_in_flight",
        "max_waiters",
        "outcomes",
        "pool",
        "released_total",
        "resource",
        "waiting",
    )

    def __init__(self, resource: RequestResourceKey, pool: _Pool, limit: RequestLimit) -> None:
        self.resource = resource
        self.pool = pool
        self.limit_source = limit
        self.limit = _checked_limit(resource, limit.limit)
        self.in_flight = 0
        self.waiting = 0
        self.max_in_flight = 0
        self.max_waiters = 0
        self.granted_total = 0
        self.released_total = 0
        self.outcomes = dict.fromkeys(RequestReleaseOutcome, 0)

    def has_capacity(self) -> bool:
        return self.in_flight < self.limit and self.pool.in_flight < self.pool.cap


class _Waiter:
    __slots__ = ("domain", "future", "item", "timer", "waiter_id")

    def __init__(
        self,
        waiter_id: int,
        item: RequestAdmissionItem,
        domain: _Domain,
        future: asyncio.Future[RequestAdmissionLease],
    ) -> None:
        self.waiter_id = waiter_id
        self.item = item
        self.domain = domain
        self.future = future
        self.timer: asyncio.TimerHandle | None = None


def _checked_limit(resource: RequestResourceKey, limit: int) -> int:
    if limit < 1:
        raise EngineError(f"the request limit of {resource} must be >= 1, got {limit}")
    return limit


def _is_eligible(entry: QueueEntry[_Waiter]) -> bool:
    return entry.item.domain.has_capacity()


_owner_ids = itertools.count(1)
_DENIED_SHUTDOWN = RequestAdmissionDenied(reason=DenialReason.SHUTDOWN)
_DENIED_NO_CAPACITY = RequestAdmissionDenied(reason=DenialReason.NO_CAPACITY)
_DENIED_UNKNOWN = RequestAdmissionDenied(reason=DenialReason.UNKNOWN_RESOURCE)


class RequestAdmissionController:
    """Grants request leases per provider/model (aggregate cap) and domain (limit).

    ``try_acquire`` never blocks and never jumps queued waiters. ``acquire`` waits in the
    provider/model's weighted-fair queue (fair across groups, FIFO within one) and raises
    :class:`RequestAdmissionError` on queue-wait timeout, shutdown or an unknown resource.
    Cancelled while waiting: the waiter leaves the queue and ``CancelledError`` propagates.
    Cancelled after being granted but before running: the lease is released as
    ``local_cancelled`` (waking the next waiter) and ``CancelledError`` propagates.
    """

    def __init__(
        self,
        static_caps: Mapping[ProviderModelKey, int],
        *,
        clock: Callable[[], float] = time.monotonic,
        limits: RequestLimitFactory = static_limits,
    ) -> None:
        for key, cap in static_caps.items():
            if cap < 1:
                raise EngineError(
                    f"the static cap of {key} must be >= 1, got {cap}; set "
                    "max_parallel_requests >= 1 on every alias of this model"
                )
        # Mutable state, all of it:
        self._pools = {key: _Pool(key, cap) for key, cap in static_caps.items()}
        self._domains: dict[RequestResourceKey, _Domain] = {}
        self._live: dict[int, RequestAdmissionLease] = {}
        self._next_lease_id = 0
        self._next_waiter_id = 0
        self._release_diagnostics = 0
        self._waiters_cancelled = 0
        self._waiters_timed_out = 0
        self._waiters_shut_down = 0
        self._grants_returned = 0
        self._shutting_down = False
        # Collaborators:
        self._owner = next(_owner_ids)
        self._clock = clock
        self._limits = limits

    # -- acquiring ---------------------------------------------------------------------------

    def try_acquire(
        self, item: RequestAdmissionItem
    ) -> RequestAdmissionLease | RequestAdmissionDenied:
        """Grant a lease now or say why not; never waits and never overtakes a queued waiter."""
        if self._shutting_down:
            return _DENIED_SHUTDOWN
        domain = self._domains.get(item.resource)
        if domain is None:
            domain = self._register(item.resource)
            if domain is None:
                return _DENIED_UNKNOWN
        pool = domain.pool
        queued = len(pool.queue)
        if queued:
            return RequestAdmissionDenied(
                reason=DenialReason.QUEUED_WAITERS_AHEAD, queued_waiters_ahead=queued
            )
        if pool.in_flight >= pool.cap or domain.in_flight >= domain.limit:
            return _DENIED_NO_CAPACITY
        return self._grant(domain, item)

    async def acquire(self, item: RequestAdmissionItem) -> RequestAdmissionLease:
        """Wait for a lease; see the class docstring for what raises and what cancellation does."""
        result = self.try_acquire(item)
        if isinstance(result, RequestAdmissionLease):
            return result
        if result.reason is DenialReason.SHUTDOWN:
            raise self._shutdown_error(item.resource)
        if result.reason is DenialReason.UNKNOWN_RESOURCE:
            known = ", ".join(str(key) for key in self._pools) or "none"
            raise RequestAdmissionError(
                DenialReason.UNKNOWN_RESOURCE.value,
                f"no request admission is registered for {item.resource}; known provider/models: "
                f"{known} (every model alias must be given to the resolver the controller is "
                "built from)",
            )
        timeout_seconds = item.queue_wait_timeout_seconds
        domain = self._domains[item.resource]
        if timeout_seconds == 0:
            self._waiters_timed_out += 1
            raise self._timeout_error(domain, 0.0)
        loop = asyncio.get_running_loop()
        self._next_waiter_id += 1
        waiter = _Waiter(self._next_waiter_id, item, domain, loop.create_future())
        self._enqueue(waiter)
        if domain.pool.in_flight < domain.pool.cap:
            # Free capacity with queued waiters means they are held by their domain limits;
            # the newcomer may still be eligible, in fair order.
            self._assign(domain.pool)
        if timeout_seconds is not None and not waiter.future.done():
            waiter.timer = loop.call_later(timeout_seconds, self._expire, waiter, timeout_seconds)
        try:
            return await waiter.future
        except BaseException:
            self._abandon(waiter)
            raise
        finally:
            if waiter.timer is not None:
                waiter.timer.cancel()

    # -- releasing ---------------------------------------------------------------------------

    def release(
        self,
        lease: RequestAdmissionLease,
        outcome: RequestReleaseOutcome,
        *,
        retry_after_seconds: float | None = None,
    ) -> ReleaseResult:
        """Return a lease's capacity and report its outcome to the domain's limit.

        Never raises for misuse: a second release, a lease of another controller or an unknown
        lease returns a diagnostic result and changes nothing. Raises :class:`EngineError` only
        when the controller's own counts are broken.
        """
        if lease.owner != self._owner:
            self._release_diagnostics += 1
            return ReleaseResult.FOREIGN
        live = self._live.pop(lease.lease_id, None)
        if live is not lease:
            self._release_diagnostics += 1
            if live is not None:
                self._live[lease.lease_id] = live
                return ReleaseResult.UNKNOWN
            if lease.lease_id <= self._next_lease_id:
                return ReleaseResult.DUPLICATE
            return ReleaseResult.UNKNOWN
        domain = self._domains[lease.resource]
        pool = domain.pool
        if domain.in_flight < 1 or pool.in_flight < 1:
            raise EngineError(
                f"releasing lease {lease.lease_id} of {lease.resource} found in-flight counts "
                f"{domain.in_flight} (domain) / {pool.in_flight} (provider/model) below 1"
            )
        domain.in_flight -= 1
        pool.in_flight -= 1
        domain.released_total += 1
        pool.released_total += 1
        domain.outcomes[outcome] += 1
        source = domain.limit_source
        source.on_outcome(
            outcome,
            now=self._clock(),
            limit_at_grant=lease.limit_at_grant,
            retry_after_seconds=retry_after_seconds,
        )
        limit = source.limit
        if limit != domain.limit:
            domain.limit = _checked_limit(domain.resource, limit)
        if pool.queue:
            self._assign(pool)
        return ReleaseResult.OK

    def shutdown(self) -> None:
        """Deny further acquisitions and fail every waiter; live leases can still be released."""
        if self._shutting_down:
            return
        self._shutting_down = True
        for pool in self._pools.values():
            queue = pool.queue
            while (selection := queue.select_next()) is not None:
                waiter = queue.commit(selection)
                if waiter is None:
                    raise EngineError("a fresh waiter selection was stale during shutdown")
                waiter.domain.waiting -= 1
                if not waiter.future.done():
                    self._waiters_shut_down += 1
                    waiter.future.set_exception(self._shutdown_error(waiter.item.resource))

    # -- reading -----------------------------------------------------------------------------

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def has_capacity(self, resource: RequestResourceKey) -> bool:
        """True when a ``try_acquire`` for ``resource`` would be granted now."""
        domain = self._domains.get(resource)
        if domain is None:
            pool = self._pools.get(resource.provider_model)
            return pool is not None and not self._shutting_down and pool.in_flight < pool.cap
        return not self._shutting_down and not domain.pool.queue and domain.has_capacity()

    def statistics(self) -> RequestAdmissionStatistics:
        domains_by_pool: dict[ProviderModelKey, dict[RequestDomain, RequestDomainStatistics]] = {
            key: {} for key in self._pools
        }
        for resource, domain in self._domains.items():
            domains_by_pool[resource.provider_model][resource.domain] = RequestDomainStatistics(
                resource=resource,
                limit=domain.limit,
                in_flight=domain.in_flight,
                waiters=domain.waiting,
                granted_total=domain.granted_total,
                released_total=domain.released_total,
                max_in_flight=domain.max_in_flight,
                max_waiters=domain.max_waiters,
                outcomes=MappingProxyType(dict(domain.outcomes)),
            )
        pools = {
            key: ProviderModelStatistics(
                provider_model=key,
                static_cap=pool.cap,
                in_flight=pool.in_flight,
                waiters=len(pool.queue),
                granted_total=pool.granted_total,
                released_total=pool.released_total,
                max_in_flight=pool.max_in_flight,
                max_waiters=pool.max_waiters,
                domains=MappingProxyType(domains_by_pool[key]),
            )
            for key, pool in self._pools.items()
        }
        return RequestAdmissionStatistics(
            provider_models=MappingProxyType(pools),
            live_leases=len(self._live),
            in_flight=sum(pool.in_flight for pool in self._pools.values()),
            waiters=sum(len(pool.queue) for pool in self._pools.values()),
            granted_total=sum(pool.granted_total for pool in self._pools.values()),
            released_total=sum(pool.released_total for pool in self._pools.values()),
            release_diagnostics=self._release_diagnostics,
            waiters_cancelled=self._waiters_cancelled,
            waiters_timed_out=self._waiters_timed_out,
            waiters_shut_down=self._waiters_shut_down,
            grants_returned_on_cancel=self._grants_returned,
            shutting_down=self._shutting_down,
        )

    # -- the synchronous core ----------------------------------------------------------------

    def _assign(self, pool: _Pool) -> None:
        """Hand free capacity to waiters in fair order; the only place waiters are granted.

        Invariant on return: no queued waiter of ``pool`` is eligible (capacity is not free
        for it), so nobody waits while capacity it could use is idle.
        """
        queue = pool.queue
        while queue and pool.in_flight < pool.cap:
            selection = queue.select_next(_is_eligible)
            if selection is None:
                return
            waiter = queue.commit(selection)
            if waiter is None:
                raise EngineError("a fresh waiter selection was stale inside one synchronous step")
            waiter.domain.waiting -= 1
            if waiter.future.done():
                # Cancelled but not yet resumed: its own cleanup counts it; it gets nothing.
                continue
            waiter.future.set_result(self._grant(waiter.domain, waiter.item))

    def _grant(self, domain: _Domain, item: RequestAdmissionItem) -> RequestAdmissionLease:
        pool = domain.pool
        self._next_lease_id += 1
        lease = RequestAdmissionLease(
            lease_id=self._next_lease_id,
            resource=domain.resource,
            group=item.group,
            attempt_id=item.attempt_id,
            granted_at=self._clock(),
            limit_at_grant=domain.limit,
            owner=self._owner,
        )
        self._live[self._next_lease_id] = lease
        in_flight = pool.in_flight + 1
        pool.in_flight = in_flight
        if in_flight > pool.max_in_flight:
            pool.max_in_flight = in_flight
        in_flight = domain.in_flight + 1
        domain.in_flight = in_flight
        if in_flight > domain.max_in_flight:
            domain.max_in_flight = in_flight
        pool.granted_total += 1
        domain.granted_total += 1
        return lease

    def _enqueue(self, waiter: _Waiter) -> None:
        item = waiter.item
        pool = waiter.domain.pool
        pool.queue.enqueue(
            (
                QueueEntry(
                    item_id=waiter.waiter_id, group=item.group, weight=item.weight, item=waiter
                ),
            )
        )
        domain = waiter.domain
        domain.waiting += 1
        if domain.waiting > domain.max_waiters:
            domain.max_waiters = domain.waiting
        if len(pool.queue) > pool.max_waiters:
            pool.max_waiters = len(pool.queue)

    def _withdraw(self, waiter: _Waiter) -> bool:
        """Take a still-queued waiter out of its queue; False if it had already left."""
        pool = waiter.domain.pool
        if pool.queue.remove(waiter.waiter_id) is None:
            return False
        waiter.domain.waiting -= 1
        # A withdrawn head may have blocked eligible waiters behind it in its group.
        self._assign(pool)
        return True

    def _abandon(self, waiter: _Waiter) -> None:
        """Clean up after a waiter whose ``acquire`` is exiting with an exception."""
        future = waiter.future
        if not future.done():
            future.cancel()
        if future.cancelled():
            self._waiters_cancelled += 1
            self._withdraw(waiter)
            return
        if future.exception() is None:
            # Granted, but cancelled before it could run: give the lease back (wakes the next).
            self._grants_returned += 1
            self.release(future.result(), RequestReleaseOutcome.LOCAL_CANCELLED)

    def _expire(self, waiter: _Waiter, timeout_seconds: float) -> None:
        if waiter.future.done():
            return
        if not self._withdraw(waiter):
            raise EngineError(
                f"waiter {waiter.waiter_id} of {waiter.item.resource} is pending but not queued"
            )
        self._waiters_timed_out += 1
        waiter.future.set_exception(self._timeout_error(waiter.domain, timeout_seconds))

    def _register(self, resource: RequestResourceKey) -> _Domain | None:
        pool = self._pools.get(resource.provider_model)
        if pool is None:
            return None
        domain = _Domain(resource, pool, self._limits(resource, pool.cap))
        self._domains[resource] = domain
        return domain

    def _timeout_error(self, domain: _Domain, timeout_seconds: float) -> RequestAdmissionError:
        pool = domain.pool
        return RequestAdmissionError(
            DenialReason.TIMEOUT.value,
            f"a request for {domain.resource} waited {timeout_seconds:g}s for a lease without "
            f"getting one (static cap {pool.cap}, limit {domain.limit}, {pool.in_flight} in "
            f"flight, {len(pool.queue)} waiting); raise queue_wait_timeout_seconds or lower "
            "the work in flight for this model",
        )

    def _shutdown_error(self, resource: RequestResourceKey) -> RequestAdmissionError:
        return RequestAdmissionError(
            DenialReason.SHUTDOWN.value,
            f"request admission is shut down; the request for {resource} was not sent",
        )
