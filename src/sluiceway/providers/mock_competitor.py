"""A competing client inside the mock server: another client of the same account on one model.

For ``duration_seconds`` from ``start_seconds`` after the schedule epoch it keeps ``slots``
requests going, each holding a capacity slot (and its share of the RPM / TPM windows) for one
latency; its attempts go through the model's :class:`BehaviourModel` (``admit_other`` /
``finish_other``), so capacity accounting cannot tell them from the client's, while
:meth:`BehaviourModel.statistics` and the server's per-model counters leave them out. No
sockets: one timer per attempt in flight and one for its retry.

- ``polite``: after a 429 it sends nothing until the Retry-After the server gave has passed
  (one backoff for the whole client), then every idle slot asks again.
- ``retry-at-once``: after a 429 every idle slot asks again ``retry_interval_seconds`` later
  (the round trip of a 429 on loopback), so it takes most slots that free up.

The text form, used by the command line, is comma-separated ``key=value`` pairs:
``start=0,duration=10,slots=24,mode=polite`` and optionally ``model=ID`` (default: every
model), ``latency=SECONDS`` (default: the server's latency), ``interval=SECONDS`` and
``tokens=N`` (what each of its requests costs against a TPM window, default 0).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sluiceway.errors import ConfigError, ConfigIssue, EngineError
from sluiceway.providers.behaviour import BehaviourModel

DEFAULT_RETRY_INTERVAL_SECONDS = 0.002


class CompetitorMode(enum.Enum):
    POLITE = "polite"
    RETRY_AT_ONCE = "retry-at-once"


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """What the competitor needs of a clock: the running loop satisfies it; tests pass a fake."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class CompetitorSettings:
    """One competing client: when, how long, how many slots, how it treats a 429."""

    duration_seconds: float
    slots: int
    start_seconds: float = 0.0
    mode: CompetitorMode = CompetitorMode.POLITE
    model: str | None = None  # None: every model the server serves
    latency_seconds: float | None = None  # None: the server's latency_seconds
    retry_interval_seconds: float = DEFAULT_RETRY_INTERVAL_SECONDS
    tokens_per_request: int = 0

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not (math.isfinite(self.start_seconds) and self.start_seconds >= 0.0):
            problems.append(f"start {self.start_seconds} must be finite and >= 0")
        if not self.duration_seconds > 0.0:
            problems.append(f"duration {self.duration_seconds} must be > 0 (inf: until stopped)")
        if self.slots < 1:
            problems.append(f"slots {self.slots} must be >= 1")
        if self.latency_seconds is not None and not (
            math.isfinite(self.latency_seconds) and self.latency_seconds > 0.0
        ):
            problems.append(f"latency {self.latency_seconds} must be finite and > 0")
        if not (math.isfinite(self.retry_interval_seconds) and self.retry_interval_seconds > 0):
            problems.append(f"interval {self.retry_interval_seconds} must be finite and > 0")
        if self.tokens_per_request < 0:
            problems.append(f"tokens {self.tokens_per_request} must be >= 0")
        if self.model == "":
            problems.append("model must not be empty")
        if problems:
            raise ConfigError(
                [
                    ConfigIssue(
                        path="mock server competitor",
                        message=problem,
                        hint="e.g. start=0,duration=10,slots=24,mode=polite",
                    )
                    for problem in problems
                ]
            )

    def describe(self) -> dict[str, object]:
        """The settings as JSON-ready data (``/stats``)."""
        return {
            "model": self.model,
            "start_seconds": self.start_seconds,
            "duration_seconds": self.duration_seconds,
            "slots": self.slots,
            "mode": self.mode.value,
            "latency_seconds": self.latency_seconds,
            "retry_interval_seconds": self.retry_interval_seconds,
            "tokens_per_request": self.tokens_per_request,
        }


_KEYS = ("start", "duration", "slots", "mode", "model", "latency", "interval", "tokens")


def parse_competitor(text: str, *, source: str) -> CompetitorSettings:
    """Read ``start=0,duration=10,slots=24,mode=polite[,model=ID,latency=S,interval=S,
    tokens=N]``; ``source`` names where the text came from in the :class:`ConfigError`."""

    def issue(message: str) -> ConfigError:
        return ConfigError(
            [
                ConfigIssue(
                    path=source,
                    message=f"{message} in {text!r}",
                    hint="write e.g. start=0,duration=10,slots=24,mode=polite (keys: "
                    + ", ".join(_KEYS)
                    + "; mode polite or retry-at-once)",
                )
            ]
        )

    pairs: dict[str, str] = {}
    for part in text.split(","):
        key, sep, raw = part.strip().partition("=")
        key = key.strip().lower()
        if not sep or key not in _KEYS:
            raise issue(f"{part.strip()!r} is not one of the KEY=VALUE pairs")
        pairs[key] = raw.strip()
    missing = [key for key in ("duration", "slots") if key not in pairs]
    if missing:
        raise issue(f"{' and '.join(missing)} missing")
    key = ""
    try:
        key = "mode"
        mode = CompetitorMode(pairs.get(key, CompetitorMode.POLITE.value))
        key = "slots"
        slots = int(pairs[key])
        key = "tokens"
        tokens = int(pairs.get(key, "0"))
        key = "latency"
        latency = float(pairs[key]) if key in pairs else None
        key = "interval"
        interval = float(pairs.get(key, DEFAULT_RETRY_INTERVAL_SECONDS))
        key = "start"
        start = float(pairs.get(key, "0"))
        key = "duration"
        duration = float(pairs[key])
    except ValueError:
        raise issue(f"{key}={pairs.get(key)!r} is not a valid value") from None
    return CompetitorSettings(
        duration_seconds=duration,
        slots=slots,
        start_seconds=start,
        mode=mode,
        model=pairs.get("model"),
        latency_seconds=latency,
        retry_interval_seconds=interval,
        tokens_per_request=tokens,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CompetitorStatistics:
    """The competing clients' attempts on one model.

    ``requests`` = ``rate_limited`` + ``completed`` + ``in_flight``; ``in_flight_seconds`` is
    the integral of ``in_flight`` over time (from its first attempt to its last change).
    """

    requests: int
    rate_limited: int
    completed: int
    in_flight: int
    max_in_flight: int
    in_flight_seconds: float


class CompetitorLedger:
    """Counters of the competing clients of one model (every competitor of it adds here)."""

    def __init__(self) -> None:
        self.requests = 0
        self.rate_limited = 0
        self.completed = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._in_flight_seconds = 0.0
        self._last_change_at: float | None = None

    def refused(self, count: int) -> None:
        self.requests += count
        self.rate_limited += count

    def admitted(self, now: float) -> None:
        self._advance(now)
        self.requests += 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight

    def completed_one(self, now: float) -> None:
        if self.in_flight <= 0:
            raise EngineError("competitor ledger: an attempt ended that was never admitted")
        self._advance(now)
        self.in_flight -= 1
        self.completed += 1

    def _advance(self, now: float) -> None:
        last = self._last_change_at
        if last is not None:
            self._in_flight_seconds += self.in_flight * (now - last)
        self._last_change_at = now

    def statistics(self, now: float | None = None) -> CompetitorStatistics:
        """Counters, with ``in_flight_seconds`` brought up to ``now`` when given."""
        seconds = self._in_flight_seconds
        last = self._last_change_at
        if now is not None and last is not None and now > last:
            seconds += self.in_flight * (now - last)
        return CompetitorStatistics(
            requests=self.requests,
            rate_limited=self.rate_limited,
            completed=self.completed,
            in_flight=self.in_flight,
            max_in_flight=self.max_in_flight,
            in_flight_seconds=seconds,
        )


class CompetingClient:
    """One competitor's load on one model until ``end_at`` (a time of ``timers``).

    ``start()`` sends a request for every slot at once; each answered one is followed by the
    next at once (``polite`` waits out a pending backoff first). From ``end_at`` on, or after
    ``stop()``, it sends nothing more; attempts in flight still end at their time, so their
    slots stay taken until then. Never blocks.
    """

    def __init__(
        self,
        settings: CompetitorSettings,
        behaviour: BehaviourModel,
        ledger: CompetitorLedger,
        timers: Timers,
        *,
        end_at: float,
        latency_seconds: float,
    ) -> None:
        if not latency_seconds > 0.0:
            raise EngineError(
                f"competing client: latency {latency_seconds} s must be > 0, or its requests "
                "would end as they start; set the competitor's latency or the server's"
            )
        self.settings = settings
        self._behaviour = behaviour
        self._ledger = ledger
        self._timers = timers
        self._end_at = end_at
        self._latency_seconds = latency_seconds
        self._polite = settings.mode is CompetitorMode.POLITE
        self._idle = 0  # slots with no request in flight that want one
        self._retry: TimerHandle | None = None
        self._stopped = False

    def start(self) -> None:
        self._idle = self.settings.slots
        self._issue()

    def stop(self) -> None:
        self._stopped = True
        self._idle = 0
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def _issue(self) -> None:
        """Every idle slot sends a request now; after the first refusal the rest are refused
        too (nothing changed in between) and the client waits for its retry."""
        timers = self._timers
        now = timers.time()
        if self._stopped or now >= self._end_at:
            self._idle = 0
            return
        behaviour = self._behaviour
        ledger = self._ledger
        tokens = self.settings.tokens_per_request
        while self._idle > 0:
            refusal = behaviour.admit_other(now, tokens)
            if refusal is not None:
                ledger.refused(self._idle)
                if self._retry is None:
                    interval = self.settings.retry_interval_seconds
                    wait = max(refusal.retry_after_seconds, interval) if self._polite else interval
                    self._retry = timers.call_at(now + wait, self._on_retry)
                return
            self._idle -= 1
            ledger.admitted(now)
            timers.call_at(now + self._latency_seconds, self._on_answer)

    def _on_retry(self) -> None:
        self._retry = None
        self._issue()

    def _on_answer(self) -> None:
        now = self._timers.time()
        self._behaviour.finish_other()
        self._ledger.completed_one(now)
        if self._stopped:
            return
        self._idle += 1
        if self._retry is not None and self._polite:
            return  # backing off: the retry timer sends it
        self._issue()
