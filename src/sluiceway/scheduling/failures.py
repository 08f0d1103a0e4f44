"""Failure classes, per-task retry budgets and the early-shutdown error window (SPEC §5.4).

Every error a task raises falls in one class:

- ``retryable``: rate limited, provider timeout, 5xx/overload, connection error, request-admission
  timeout (``RetryableGenerationError`` or a retryable ``ProviderError``). The task re-enters
  through the tracker while its budget lasts (attempts and wall time since its first start).
- ``non_retryable``: bad request, authentication, content policy, parse failure after re-asks,
  user code error (``NonRetryableGenerationError`` or a non-retryable ``ProviderError``). The row
  (cell task) or the row group's live rows (group task) are dropped with the reason.
- ``stop``: the run must stop in an orderly way (``RunStoppedError``, e.g. an open circuit).
- ``fatal``: anything else (engine bug, storage failure, config error at run time); it propagates.

``ErrorRateWindow`` is pure: it keeps the last ``window`` terminal task outcomes and says when the
share of non-retryable failures among them passes the threshold (only once ``min_outcomes`` have
been seen, so the first failures of a run do not stop it).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from sluiceway.errors import (
    NonRetryableGenerationError,
    ProviderError,
    RequestAdmissionError,
    RetryableGenerationError,
    RunStoppedError,
)


class TaskErrorClass(enum.Enum):
    RETRYABLE = "retryable"
    NON_RETRYABLE = "non_retryable"
    STOP = "stop"
    FATAL = "fatal"


def classify_task_error(error: BaseException) -> TaskErrorClass:
    """The class of an error raised by a task's generator (see the module docstring)."""
    if isinstance(error, RunStoppedError):
        return TaskErrorClass.STOP
    if isinstance(error, NonRetryableGenerationError):
        return TaskErrorClass.NON_RETRYABLE
    if isinstance(error, RetryableGenerationError):
        return TaskErrorClass.RETRYABLE
    if isinstance(error, ProviderError):
        return TaskErrorClass.RETRYABLE if error.retryable else TaskErrorClass.NON_RETRYABLE
    if isinstance(error, RequestAdmissionError) and error.reason == "timeout":
        return TaskErrorClass.RETRYABLE
    return TaskErrorClass.FATAL


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRetryBudget:
    """How much one task may spend on retries: attempts, and seconds since its first start."""

    max_attempts: int
    max_wall_seconds: float | None = None

    def exhausted_reason(self, *, attempt: int, elapsed_seconds: float) -> str | None:
        """Why no further attempt may start after attempt number ``attempt`` failed, or None."""
        if attempt >= self.max_attempts:
            return f"retry budget of {self.max_attempts} attempts exhausted"
        if self.max_wall_seconds is not None and elapsed_seconds >= self.max_wall_seconds:
            return (
                f"retry budget of {self.max_wall_seconds:g}s exhausted after {attempt} "
                f"attempt(s) over {elapsed_seconds:.1f}s"
            )
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class EarlyShutdownSettings:
    window: int = 200
    min_outcomes: int = 50
    max_error_rate: float = 0.5


class ErrorRateWindow:
    """Sliding window over the last terminal task outcomes (True = non-retryable failure)."""

    def __init__(self, settings: EarlyShutdownSettings) -> None:
        if settings.window < 1 or not 1 <= settings.min_outcomes <= settings.window:
            raise ValueError(
                f"early shutdown needs window >= 1 and 1 <= min_outcomes <= window, got "
                f"window={settings.window}, min_outcomes={settings.min_outcomes}"
            )
        self._settings = settings
        self._outcomes: deque[bool] = deque(maxlen=settings.window)
        self._failures = 0

    @property
    def settings(self) -> EarlyShutdownSettings:
        return self._settings

    def record(self, *, failed: bool) -> None:
        outcomes = self._outcomes
        if len(outcomes) == outcomes.maxlen and outcomes[0]:
            self._failures -= 1
        outcomes.append(failed)
        if failed:
            self._failures += 1

    @property
    def error_rate(self) -> float:
        return self._failures / len(self._outcomes) if self._outcomes else 0.0

    @property
    def observed(self) -> int:
        return len(self._outcomes)

    def is_tripped(self) -> bool:
        return (
            len(self._outcomes) >= self._settings.min_outcomes
            and self.error_rate > self._settings.max_error_rate
        )
