"""Custom columns: a user callable per cell (``fn(row, ctx)``) or per batch (``fn(rows, ctx)``).

Sync callables run in a daemon thread of the column's own pool (so they may use
``ctx.models.*_sync``); async ones are awaited. Each call gets copies of its rows and at most
``timeout_seconds`` of wall time. A result is a value (single output column) or a mapping of
output columns. What user code raises is mapped here: its exceptions, and a ``CancelledError`` or
``GeneratorExit`` it raises itself, become ``NonRetryableGenerationError``; a call over its time
limit becomes ``RetryableGenerationError``; Sluiceway's own errors pass through, and so do
``KeyboardInterrupt`` and ``SystemExit`` (the scheduler stops the run in order for them).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sluiceway.columns.base import ColumnGenerator, GenerationContext, GenerationStrategy
from sluiceway.columns.endpoints import ModelEndpoint
from sluiceway.columns.thread_pool import DaemonThreadPool
from sluiceway.config.models import CustomColumnConfig, CustomSchedulingConfig
from sluiceway.errors import (
    EngineError,
    NonRetryableGenerationError,
    RetryableGenerationError,
    SluicewayError,
)
from sluiceway.scheduling.metadata import SchedulingMetadata


def is_async_callable(function: Callable[..., Any]) -> bool:
    """True for ``async def`` functions, partials of them and objects with an async ``__call__``."""
    if inspect.iscoroutinefunction(function):
        return True
    call = getattr(function, "__call__", None)  # noqa: B004 - the bound method is inspected
    return call is not None and inspect.iscoroutinefunction(call)


def custom_scheduling_metadata(
    *,
    column: str,
    scheduling: CustomSchedulingConfig | None,
    endpoints: Sequence[ModelEndpoint],
) -> SchedulingMetadata | None:
    """Metadata of a custom column: ``custom_model`` when it declares models or a scheduling
    block, else ``None`` (local). The weight is the configured one, else the largest effective
    cap among the declared models (so the column is not starved), else 1."""
    if scheduling is None and not endpoints:
        return None
    settings = scheduling if scheduling is not None else CustomSchedulingConfig()
    if settings.weight is not None:
        weight = settings.weight
    elif endpoints:
        weight = max(endpoint.effective_cap for endpoint in endpoints)
    else:
        weight = 1
    return SchedulingMetadata.custom_model(
        namespace=settings.namespace,
        resource_name=settings.resource_name or column,
        version=settings.version,
        weight=weight,
    )


class UndeclaredColumnError(KeyError):
    """A custom function read a column that is not in its row (``row[name]``)."""


class CustomRow(dict[str, Any]):
    """The copy of a row a custom function gets: a plain ``dict`` except that reading a missing
    column raises ``UndeclaredColumnError`` (a ``KeyError``), so the error can name it."""

    __slots__ = ()

    def __missing__(self, key: Any) -> Any:
        raise UndeclaredColumnError(key)


DEFAULT_CUSTOM_TIMEOUT_SECONDS: float = CustomColumnConfig.model_fields["timeout_seconds"].default


class CustomColumnGenerator(ColumnGenerator):
    """Runs a user callable with strategy ``cell`` or ``batch``.

    The callable gets copies of its rows (``CustomRow``), so nothing it does to them reaches the
    engine and no column is added under it while it runs. A sync callable blocks one of at most
    ``max_threads`` daemon threads of the column's own pool (not the loop's small default
    executor, which would cap a column that waits on model calls at a handful of rows in flight);
    an async one runs on the loop. A call may take ``timeout_seconds`` of wall time (waiting for
    a thread included); then the attempt fails with ``RetryableGenerationError``. Cancellation
    (and the time limit) reaches an async callable at its next ``await``; a sync one cannot be
    stopped: it runs to completion in its thread, whose result is discarded. ``close()`` stops
    the pool at the end of a run without waiting for such calls.
    """

    def __init__(
        self,
        *,
        name: str,
        function: Callable[..., Any],
        strategy: GenerationStrategy = GenerationStrategy.CELL,
        output_columns: Sequence[str] | None = None,
        dependencies: Sequence[str] = (),
        model_aliases: Sequence[str] = (),
        scheduling: SchedulingMetadata | None = None,
        max_threads: int = 32,
        timeout_seconds: float = DEFAULT_CUSTOM_TIMEOUT_SECONDS,
    ) -> None:
        if strategy is GenerationStrategy.FROM_SCRATCH:
            raise EngineError(
                f"column {name!r}: custom columns run per cell or per batch, not from_scratch; "
                "pass GenerationStrategy.CELL or GenerationStrategy.BATCH"
            )
        if not timeout_seconds > 0:
            raise EngineError(
                f"column {name!r}: timeout_seconds must be > 0, got {timeout_seconds!r}"
            )
        self.name = name
        self.function = function
        self.strategy = strategy
        self.output_columns = tuple(output_columns) if output_columns else (name,)
        self.dependencies = tuple(dependencies)
        self.model_aliases = tuple(model_aliases)
        self._scheduling = scheduling
        self._is_async = is_async_callable(function)
        self._max_threads = max_threads
        self._timeout_seconds = timeout_seconds
        self._threads: DaemonThreadPool | None = None

    def get_scheduling_metadata(self) -> SchedulingMetadata | None:
        return self._scheduling

    def close(self) -> None:
        """Stop the column's threads; a sync call still running keeps its (daemon) thread until
        it returns. A later call starts a new pool."""
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.close()

    async def generate_cell(
        self, row: Mapping[str, Any], ctx: GenerationContext
    ) -> Mapping[str, Any]:
        result = await self._call(CustomRow(row), ctx)
        return self._outputs(result, where="")

    async def generate_batch(
        self, rows: Sequence[Mapping[str, Any]], ctx: GenerationContext
    ) -> Sequence[Mapping[str, Any]]:
        result = await self._call([CustomRow(row) for row in rows], ctx)
        if isinstance(result, str | bytes | Mapping) or not isinstance(result, Sequence):
            raise NonRetryableGenerationError(
                f"column {self.name!r}: the batch function returned {type(result).__name__}; "
                f"return a list with one result per input row ({len(rows)} rows)"
            )
        if len(result) != len(rows):
            raise NonRetryableGenerationError(
                f"column {self.name!r}: the batch function returned {len(result)} results for "
                f"{len(rows)} rows; return exactly one result per input row, in order"
            )
        return [self._outputs(item, where=f" (batch item {i})") for i, item in enumerate(result)]

    async def _call(self, argument: Any, ctx: GenerationContext) -> Any:
        deadline = asyncio.timeout(self._timeout_seconds)
        try:
            async with deadline:
                if self._is_async:
                    return await self.function(argument, ctx)
                result = await self._in_thread(argument, ctx)
                if inspect.isawaitable(result):  # a sync wrapper around a coroutine function
                    result = await result
                return result
        except SluicewayError:
            raise  # provider, generation, admission and engine errors keep their meaning
        except UndeclaredColumnError as exc:
            raise NonRetryableGenerationError(self._undeclared_message(exc)) from exc
        except TimeoutError as exc:
            if deadline.expired():
                raise RetryableGenerationError(self._timeout_message()) from exc
            raise self._user_error(exc) from exc
        except Exception as exc:
            raise self._user_error(exc) from exc
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # the task itself is cancelled (the run stops, or the time limit)
            # Raised by the function itself, e.g. by awaiting a future something else
            # cancelled: a failure of this row, not a cancellation of the engine's task.
            raise NonRetryableGenerationError(
                f"column {self.name!r}: the custom function raised CancelledError although its "
                "task was not cancelled (did it await a future or task that something else "
                "cancelled?); catch it in the function to return a value instead"
            ) from exc
        except GeneratorExit as exc:
            raise self._user_error(exc) from exc

    def _user_error(self, exc: BaseException) -> NonRetryableGenerationError:
        return NonRetryableGenerationError(
            f"column {self.name!r}: the custom function raised {type(exc).__name__}: {exc}"
        )

    def _undeclared_message(self, exc: UndeclaredColumnError) -> str:
        missing = exc.args[0] if exc.args else None
        declared = list(self.dependencies)
        return (
            f"column {self.name!r}: the custom function read column {missing!r}, which is not "
            f"in its row: a custom function is sure to get only the columns its depends_on "
            f"lists ({declared}); add {missing!r} to depends_on of column {self.name!r}"
        )

    def _timeout_message(self) -> str:
        still = (
            ""
            if self._is_async
            else "; its thread keeps running until the function returns, and its result is "
            "discarded"
        )
        return (
            f"column {self.name!r}: the custom function did not return within "
            f"timeout_seconds={self._timeout_seconds:g}, so the attempt was abandoned{still}. "
            f"It is retried while the task's retry budget lasts; if the function needs longer, "
            f"raise timeout_seconds of column {self.name!r}"
        )

    async def _in_thread(self, argument: Any, ctx: GenerationContext) -> Any:
        threads = self._threads
        if threads is None:
            threads = self._threads = DaemonThreadPool(
                max_threads=self._max_threads, name=f"sluiceway-{self.name}"
            )
        # The copied context carries the running task's correlation into the thread, so model
        # calls made there are admitted under the task's fairness group.
        call = functools.partial(contextvars.copy_context().run, self.function, argument, ctx)
        return await asyncio.wrap_future(threads.submit(call))

    def _outputs(self, result: Any, *, where: str) -> Mapping[str, Any]:
        outputs = self.output_columns
        if len(outputs) == 1:
            # A mapping with exactly the output column is the mapping form; anything else
            # (including other dicts) is the value itself.
            if isinstance(result, Mapping) and result.keys() == {outputs[0]}:
                return dict(result)
            return {outputs[0]: result}
        if not isinstance(result, Mapping):
            raise NonRetryableGenerationError(
                f"column {self.name!r}{where}: the custom function returned "
                f"{type(result).__name__}; with several output columns return a mapping with "
                f"the keys {list(outputs)}"
            )
        if result.keys() != set(outputs):
            missing = [column for column in outputs if column not in result]
            extra = sorted(str(key) for key in result if key not in outputs)
            raise NonRetryableGenerationError(
                f"column {self.name!r}{where}: the custom function's mapping is missing "
                f"{missing} and has unexpected keys {extra}; return exactly {list(outputs)}"
            )
        return {column: result[column] for column in outputs}
