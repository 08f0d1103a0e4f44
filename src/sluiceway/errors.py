"""The exception tree of Sluiceway.

    SluicewayError
    ├── ConfigError                  the user's config is wrong (carries every issue at once)
    ├── SchedulingMetadataError      a generator declared invalid scheduling metadata
    ├── GenerationError              a column generator could not produce a value
    │   ├── RetryableGenerationError     try again later (same task, new attempt)
    │   └── NonRetryableGenerationError  drop the row (cell) or the affected rows (batch)
    ├── ProviderError                a model provider answered with an error (mapped at the client)
    │   ├── RateLimitedError             429 / overload; carries retry_after_seconds, rate_limit
    │   │   └── ProviderOverloadedError      503 / 529 overload, counted as rate pressure
    │   ├── ProviderTimeoutError         the attempt started but no answer came in time
    │   ├── ProviderUnavailableError     5xx, connection reset, malformed body
    │   ├── BadRequestError              the request itself is invalid (non-retryable)
    │   │   └── ContextLengthError           the prompt does not fit the model's context
    │   ├── QuotaExceededError           the account's quota or credit is spent (non-retryable)
    │   ├── ProviderRedirectError        a 3xx answer: base_url is wrong (non-retryable)
    │   └── AuthenticationError          bad or missing credentials (non-retryable)
    ├── RequestAdmissionError        a request lease could not be granted (timeout, shutdown)
    ├── StorageError                 the output could not be written (fatal)
    ├── EngineError                  an engine invariant broke (a bug; fatal)
    └── RunStoppedError              the run stopped before finishing; completed row groups kept
        ├── RunCancelledError            cancel() or Ctrl-C
        │   └── RunInterruptedError          a task raised KeyboardInterrupt or SystemExit
        ├── EarlyShutdownError           too many non-retryable failures in the sliding window
        └── ProviderCircuitOpenError     a provider/model failed with no success for too long

Messages state the rule, the offending value, and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluiceway.rate_limits import RateLimitHeaders


class SluicewayError(Exception):
    """Root of every error Sluiceway raises on purpose."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigIssue:
    """One problem in a config: where it is, what is wrong, and how to fix it."""

    path: str
    message: str
    hint: str | None = None

    def render(self) -> str:
        text = f"{self.path or '<config>'}: {self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


class ConfigError(SluicewayError):
    """The config is invalid; ``issues`` lists every problem found, not just the first."""

    def __init__(
        self, issues: list[ConfigIssue] | tuple[ConfigIssue, ...], source: str | None = None
    ):
        self.issues = tuple(issues)
        self.source = source
        head = f"invalid config {source}" if source else "invalid config"
        lines = [f"{head}: {len(self.issues)} problem(s)"]
        lines.extend(f"  - {issue.render()}" for issue in self.issues)
        super().__init__("\n".join(lines))


class SchedulingMetadataError(SluicewayError):
    """A generator's ``get_scheduling_metadata()`` returned something invalid.

    With a ``fallback`` the resolver uses it and records a diagnostic; without one the run
    fails before scheduling starts.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        fallback: object | None = None,
        diagnostics: dict[str, str] | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.fallback = fallback
        self.diagnostics = dict(diagnostics or {})
        super().__init__(f"[{code}] {message}")


class GenerationError(SluicewayError):
    """A column generator failed to produce a value."""


class RetryableGenerationError(GenerationError):
    """The failure is transient; the task may be retried within its budget."""


class NonRetryableGenerationError(GenerationError):
    """The failure is permanent for this row: the row is dropped and the reason recorded."""


class ProviderError(SluicewayError):
    """A provider answered with an error; subclasses say which kind."""

    retryable: bool = True


class RateLimitedError(ProviderError):
    """The provider refused the request for rate or overload reasons.

    ``rate_limit`` holds the rate-limit windows the refusal reported (HTTP clients read them
    from the answer's headers), ``None`` when it reported none.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: float | None = None,
        rate_limit: RateLimitHeaders | None = None,
    ) -> None:
        self.retry_after_seconds = retry_after_seconds
        self.rate_limit = rate_limit
        super().__init__(message)


class ProviderOverloadedError(RateLimitedError):
    """The provider said it is overloaded (503 / 529); treated as rate pressure."""


class ProviderTimeoutError(ProviderError):
    """The attempt started, but the provider did not answer within the model's timeout."""


class ProviderUnavailableError(ProviderError):
    """Server error, overload without a rate-limit signal, reset connection or malformed body."""


class BadRequestError(ProviderError):
    """The provider rejected the request as invalid; retrying the same request cannot help."""

    retryable = False


class ContextLengthError(BadRequestError):
    """The request is longer than the model's context window."""


class QuotaExceededError(ProviderError):
    """The account has no quota or credit left; waiting for a rate window does not help."""

    retryable = False


class ProviderRedirectError(ProviderError):
    """The endpoint answered with a redirect (3xx); redirects are not followed, since the
    configured ``base_url`` most likely names the wrong address. Retrying cannot help."""

    retryable = False


class AuthenticationError(ProviderError):
    """The provider rejected the credentials."""

    retryable = False


class RequestAdmissionError(SluicewayError):
    """A request lease could not be granted; ``reason`` says why (timeout, shutdown, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class StorageError(SluicewayError):
    """Output could not be written or read; always fatal and names the path."""


class EngineError(SluicewayError):
    """An engine invariant was broken. This is a bug in Sluiceway."""


class RunStoppedError(SluicewayError):
    """The run stopped before every row group was written; checkpointed row groups are kept.

    ``partial`` is set by the engine to what the run produced (a ``RunInfo``) when known.
    """

    partial: object | None = None


class RunCancelledError(RunStoppedError):
    """The run was cancelled (``cancel()`` or Ctrl-C)."""


class RunInterruptedError(RunCancelledError):
    """A task raised ``KeyboardInterrupt`` or ``SystemExit`` (a custom column calling
    ``sys.exit``, or Ctrl-C landing in its code). The run stops as if cancelled, its output is
    finalised (resumable), and ``run_dataset`` then raises ``interrupt`` itself."""

    def __init__(self, message: str, *, interrupt: KeyboardInterrupt | SystemExit) -> None:
        self.interrupt = interrupt
        super().__init__(message)


class EarlyShutdownError(RunStoppedError):
    """Too many tasks failed permanently in the recent window; the run stopped admitting work."""


class ProviderCircuitOpenError(RunStoppedError):
    """A provider/model produced no success for too long while failing or rate limiting."""

    def __init__(self, message: str, *, provider: str, model_id: str) -> None:
        self.provider = provider
        self.model_id = model_id
        super().__init__(message)
