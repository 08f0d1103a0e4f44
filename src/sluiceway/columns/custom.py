"""Custom columns: a user callable per cell (``fn(row, ctx)``) or per batch (``fn(rows, ctx)``).

Sync callables run in a worker thread of the column's own pool (so they may use
``ctx.models.*_sync``); async ones are awaited. A result is a value (single output column) or a
mapping of output columns. Exceptions from user code become ``NonRetryableGenerationError``;
Sluiceway's own errors pass through.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sluiceway.columns.base import ColumnGenerator, GenerationContext, GenerationStrategy
from sluiceway.columns.endpoints import ModelEndpoint
from sluiceway.config.models import CustomSchedulingConfig
from sluiceway.errors import EngineError, NonRetryableGenerationError, SluicewayError
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


class CustomColumnGenerator(ColumnGenerator):
    """Runs a user callable with strategy ``cell`` or ``batch``.

    A sync callable blocks one of at most ``max_threads`` worker threads of the column's own pool
    (not the loop's small default executor, which would cap a column that waits on model calls at
    a handful of rows in flight), and gets a snapshot of its rows; an async one runs on the loop
    with the live (read-only) rows. Cancellation reaches an async callable at its next ``await``;
    a sync one runs to completion in its thread while the task is cancelled.
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
    ) -> None:
        if strategy is GenerationStrategy.FROM_SCRATCH:
            raise EngineError(
                f"column {name!r}: custom columns run per cell or per batch, not from_scratch; "
                "pass GenerationStrategy.CELL or GenerationStrategy.BATCH"
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
        self._threads: ThreadPoolExecutor | None = None

    def get_scheduling_metadata(self) -> SchedulingMetadata | None:
        return self._scheduling

    async def generate_cell(
        self, row: Mapping[str, Any], ctx: GenerationContext
    ) -> Mapping[str, Any]:
        # A worker thread gets a snapshot: the engine may add other columns to the live row on
        # the loop thread while the function runs, which would break iteration over it.
        result = await self._call(row if self._is_async else dict(row), ctx)
        return self._outputs(result, where="")

    async def generate_batch(
        self, rows: Sequence[Mapping[str, Any]], ctx: GenerationContext
    ) -> Sequence[Mapping[str, Any]]:
        result = await self._call(rows if self._is_async else [dict(row) for row in rows], ctx)
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
        try:
            if self._is_async:
                return await self.function(argument, ctx)
            result = await self._in_thread(argument, ctx)
            if inspect.isawaitable(result):  # a sync wrapper around a coroutine function
                result = await result
            return result
        except SluicewayError:
            raise  # provider, generation, admission and engine errors keep their meaning
        except Exception as exc:
            raise NonRetryableGenerationError(
                f"column {self.name!r}: the custom function raised {type(exc).__name__}: {exc}"
            ) from exc

    async def _in_thread(self, argument: Any, ctx: GenerationContext) -> Any:
        if self._threads is None:
            # Idle workers exit when the generator (and so the pool) is garbage-collected.
            self._threads = ThreadPoolExecutor(
                max_workers=self._max_threads, thread_name_prefix=f"sluiceway-{self.name}"
            )
        # The copied context carries the running task's correlation into the thread, so model
        # calls made there are admitted under the task's fairness group.
        call = functools.partial(contextvars.copy_context().run, self.function, argument, ctx)
        return await asyncio.get_running_loop().run_in_executor(self._threads, call)

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
