"""Custom columns: sync/async, cell/batch, result shapes, error mapping and scheduling metadata."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from sluiceway.columns.base import GenerationContext, GenerationStrategy
from sluiceway.columns.custom import (
    CustomColumnGenerator,
    custom_scheduling_metadata,
    is_async_callable,
)
from sluiceway.columns.endpoints import ModelEndpoint
from sluiceway.config.models import CustomSchedulingConfig
from sluiceway.errors import (
    EngineError,
    NonRetryableGenerationError,
    ProviderUnavailableError,
    RetryableGenerationError,
)
from sluiceway.scheduling.metadata import SchedulingKind
from sluiceway.testing import FakeCallMethod, FakeModelCalls

Row = Mapping[str, Any]


def ctx(models: FakeModelCalls, rows: Sequence[int] = (0,)) -> GenerationContext:
    return GenerationContext(seed=0, column="c", row_group=0, row_indices=rows, models=models)


_MADE: list[CustomColumnGenerator] = []


@pytest.fixture(autouse=True)
def _close_generators() -> Iterator[None]:
    """Close what each test made, as a run does: its threads do not outlive the test."""
    yield
    while _MADE:
        _MADE.pop().close()


def cell(function: Any, **kwargs: Any) -> CustomColumnGenerator:
    _MADE.append(CustomColumnGenerator(name="c", function=function, **kwargs))
    return _MADE[-1]


def batch(function: Any, **kwargs: Any) -> CustomColumnGenerator:
    _MADE.append(
        CustomColumnGenerator(
            name="c", function=function, strategy=GenerationStrategy.BATCH, **kwargs
        )
    )
    return _MADE[-1]


async def test_sync_cell_runs_in_a_worker_thread_and_may_call_sync_models() -> None:
    def title(row: Row, ctx: GenerationContext) -> str:
        return ctx.models.generate_text_sync("writer", f"Title for {row['topic']}")

    models = FakeModelCalls()
    result = await cell(title).generate_cell({"topic": "cats"}, ctx(models))
    assert result == {"c": "[writer] Title for cats"}
    [call] = models.calls
    assert call.is_sync
    assert call.thread_id != threading.get_ident()


@pytest.mark.parametrize("count", [0, 1, 3])
async def test_async_cell_may_make_zero_one_or_many_calls(count: int) -> None:
    async def many(row: Row, ctx: GenerationContext) -> int:
        for i in range(count):
            await ctx.models.generate_text("writer", f"call {i}")
        return count

    models = FakeModelCalls()
    assert await cell(many).generate_cell({}, ctx(models)) == {"c": count}
    assert [call.prompt for call in models.calls] == [f"call {i}" for i in range(count)]
    assert all(call.thread_id == threading.get_ident() for call in models.calls)


async def test_async_callable_objects_and_partials_are_awaited() -> None:
    class Scorer:
        async def __call__(self, row: Row, ctx: GenerationContext, *, bonus: int = 0) -> int:
            await asyncio.sleep(0)
            return int(row["n"]) + bonus

    async def add(row: Row, ctx: GenerationContext, *, bonus: int) -> int:
        return int(row["n"]) + bonus

    assert is_async_callable(Scorer())
    assert is_async_callable(functools.partial(add, bonus=1))
    assert not is_async_callable(len)
    models = FakeModelCalls()
    assert await cell(Scorer()).generate_cell({"n": 2}, ctx(models)) == {"c": 2}
    assert await cell(functools.partial(add, bonus=5)).generate_cell({"n": 2}, ctx(models)) == {
        "c": 7
    }


async def test_result_shapes_for_one_and_several_output_columns() -> None:
    models = FakeModelCalls()
    as_value = cell(lambda row, ctx: {"nested": 1})
    assert await as_value.generate_cell({}, ctx(models)) == {"c": {"nested": 1}}
    as_mapping = cell(lambda row, ctx: {"c": 5})
    assert await as_mapping.generate_cell({}, ctx(models)) == {"c": 5}
    split = cell(lambda row, ctx: {"y": 2, "x": 1}, output_columns=("x", "y"))
    assert await split.generate_cell({}, ctx(models)) == {"x": 1, "y": 2}


@pytest.mark.parametrize(
    ("result", "problem"),
    [(3, "return a mapping"), ({"x": 1}, "missing ['y']"), ({"x": 1, "y": 2, "z": 3}, "['z']")],
)
async def test_wrong_mappings_for_several_outputs_are_errors(result: Any, problem: str) -> None:
    gen = cell(lambda row, ctx: result, output_columns=("x", "y"))
    with pytest.raises(NonRetryableGenerationError, match=r"'c'") as info:
        await gen.generate_cell({}, ctx(FakeModelCalls()))
    assert problem in str(info.value)


async def test_sync_and_async_batches_return_one_result_per_row() -> None:
    def sync_batch(rows: Sequence[Row], ctx: GenerationContext) -> list[int]:
        return [row["n"] * 10 for row in rows]

    async def async_batch(rows: Sequence[Row], ctx: GenerationContext) -> list[dict[str, Any]]:
        vectors = await ctx.models.embed("embedder", [str(row["n"]) for row in rows])
        return [{"c": len(vector)} for vector in vectors]

    rows = [{"n": 1}, {"n": 2}]
    models = FakeModelCalls(embedding_dimensions=5)
    assert await batch(sync_batch).generate_batch(rows, ctx(models, (0, 1))) == [
        {"c": 10},
        {"c": 20},
    ]
    assert await batch(async_batch).generate_batch(rows, ctx(models, (0, 1))) == [
        {"c": 5},
        {"c": 5},
    ]
    assert models.calls_to(FakeCallMethod.EMBED)[0].texts == ("1", "2")


@pytest.mark.parametrize(
    ("result", "problem"),
    [([1], "returned 1 results for 2 rows"), ("ab", "returned str"), ({"c": 1}, "returned dict")],
)
async def test_batch_results_of_the_wrong_shape_are_errors(result: Any, problem: str) -> None:
    gen = batch(lambda rows, ctx: result)
    with pytest.raises(NonRetryableGenerationError, match=r"'c'") as info:
        await gen.generate_batch([{}, {}], ctx(FakeModelCalls(), (0, 1)))
    assert problem in str(info.value)


@pytest.mark.parametrize("is_async", [False, True])
async def test_user_exceptions_become_non_retryable_with_the_cause(is_async: bool) -> None:
    def broken(row: Row, ctx: GenerationContext) -> str:
        raise KeyError("title")

    async def broken_async(row: Row, ctx: GenerationContext) -> str:
        raise KeyError("title")

    gen = cell(broken_async if is_async else broken)
    with pytest.raises(NonRetryableGenerationError) as info:
        await gen.generate_cell({}, ctx(FakeModelCalls()))
    assert "'c'" in str(info.value) and "KeyError" in str(info.value)
    assert "title" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize(
    "error",
    [
        ProviderUnavailableError("502"),
        RetryableGenerationError("later"),
        NonRetryableGenerationError("never"),
    ],
)
@pytest.mark.parametrize("is_async", [False, True])
async def test_sluiceway_errors_pass_through_unchanged(error: Exception, is_async: bool) -> None:
    def sync_fn(row: Row, ctx: GenerationContext) -> str:
        raise error

    async def async_fn(row: Row, ctx: GenerationContext) -> str:
        raise error

    with pytest.raises(type(error)) as info:
        await cell(async_fn if is_async else sync_fn).generate_cell({}, ctx(FakeModelCalls()))
    assert info.value is error


async def test_provider_errors_from_model_calls_in_sync_code_pass_through() -> None:
    error = ProviderUnavailableError("down")

    def calls_model(row: Row, ctx: GenerationContext) -> str:
        return ctx.models.generate_text_sync("writer", "hi")

    with pytest.raises(ProviderUnavailableError) as info:
        await cell(calls_model).generate_cell({}, ctx(FakeModelCalls(failures={"writer": error})))
    assert info.value is error


async def test_a_cancellation_of_the_task_passes_through() -> None:
    entered = asyncio.Event()

    async def waits(row: Row, ctx: GenerationContext) -> str:
        entered.set()
        await asyncio.Event().wait()
        return "never"

    task = asyncio.create_task(cell(waits).generate_cell({}, ctx(FakeModelCalls())))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def _raise_before_any_await(row: Row, ctx: GenerationContext) -> str:
    raise asyncio.CancelledError


async def _await_a_cancelled_future(row: Row, ctx: GenerationContext) -> str:
    shared: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    shared.cancel()  # something else gave up on the shared work
    return await shared


def _raise_in_a_thread(row: Row, ctx: GenerationContext) -> str:
    raise asyncio.CancelledError


@pytest.mark.parametrize(
    "function", [_raise_before_any_await, _await_a_cancelled_future, _raise_in_a_thread]
)
async def test_a_cancelled_error_the_function_raises_itself_is_a_row_failure(
    function: Any,
) -> None:
    with pytest.raises(NonRetryableGenerationError, match="CancelledError") as info:
        await cell(function).generate_cell({}, ctx(FakeModelCalls()))
    assert "column 'c'" in str(info.value)
    assert "not cancelled" in str(info.value)
    assert isinstance(info.value.__cause__, asyncio.CancelledError)


@pytest.mark.parametrize("is_async", [False, True])
async def test_generator_exit_from_the_function_is_a_row_failure(is_async: bool) -> None:
    def sync_fn(row: Row, ctx: GenerationContext) -> str:
        raise GeneratorExit

    async def async_fn(row: Row, ctx: GenerationContext) -> str:
        raise GeneratorExit

    with pytest.raises(NonRetryableGenerationError, match="GeneratorExit"):
        await cell(async_fn if is_async else sync_fn).generate_cell({}, ctx(FakeModelCalls()))


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3)])
@pytest.mark.parametrize("is_async", [False, True])
async def test_interrupts_pass_through_for_the_scheduler_to_stop_the_run(
    error: BaseException, is_async: bool
) -> None:
    def sync_fn(row: Row, ctx: GenerationContext) -> str:
        raise error

    async def async_fn(row: Row, ctx: GenerationContext) -> str:
        raise error

    generator = cell(async_fn if is_async else sync_fn)
    with pytest.raises(type(error)) as info:
        await generator.generate_cell({}, ctx(FakeModelCalls()))
    assert info.value is error
    generator.close()


async def test_an_async_call_over_its_time_limit_is_cancelled_and_retryable() -> None:
    cancelled = asyncio.Event()

    async def never_returns(row: Row, ctx: GenerationContext) -> str:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return "never"

    with pytest.raises(RetryableGenerationError) as info:
        await cell(never_returns, timeout_seconds=0.05).generate_cell({}, ctx(FakeModelCalls()))
    message = str(info.value)
    assert "column 'c'" in message and "timeout_seconds=0.05" in message
    assert "raise timeout_seconds" in message
    assert cancelled.is_set()


async def test_a_sync_call_over_its_time_limit_is_retryable_and_its_thread_is_left() -> None:
    release = threading.Event()
    generator = CustomColumnGenerator(
        name="stuck", function=lambda row, ctx: release.wait(), timeout_seconds=0.05
    )
    try:
        with pytest.raises(RetryableGenerationError, match="its thread keeps running"):
            await generator.generate_cell({}, ctx(FakeModelCalls()))
        generator.close()  # does not wait for the call
        [thread] = [t for t in threading.enumerate() if t.name.startswith("sluiceway-stuck")]
        assert thread.daemon
    finally:
        release.set()
    thread.join()


async def test_a_timeout_error_of_the_function_itself_is_an_ordinary_error() -> None:
    async def own_timeout(row: Row, ctx: GenerationContext) -> str:
        raise TimeoutError("the database did not answer")

    with pytest.raises(NonRetryableGenerationError, match="database did not answer"):
        await cell(own_timeout).generate_cell({}, ctx(FakeModelCalls()))


def test_a_time_limit_must_be_positive() -> None:
    with pytest.raises(EngineError, match="timeout_seconds must be > 0"):
        cell(len, timeout_seconds=0)


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("strategy", [GenerationStrategy.CELL, GenerationStrategy.BATCH])
async def test_reading_an_undeclared_column_names_it_and_points_at_depends_on(
    is_async: bool, strategy: GenerationStrategy
) -> None:
    def read(row: Row) -> str:
        return f"{row['topic']}: {row['facts']}"

    def sync_fn(argument: Any, ctx: GenerationContext) -> Any:
        return (
            [read(row) for row in argument]
            if strategy is GenerationStrategy.BATCH
            else read(argument)
        )

    async def async_fn(argument: Any, ctx: GenerationContext) -> Any:
        return sync_fn(argument, ctx)

    generator = CustomColumnGenerator(
        name="summary",
        function=async_fn if is_async else sync_fn,
        strategy=strategy,
        dependencies=("topic",),
    )
    call = (
        generator.generate_batch([{"topic": "cats"}], ctx(FakeModelCalls()))
        if strategy is GenerationStrategy.BATCH
        else generator.generate_cell({"topic": "cats"}, ctx(FakeModelCalls()))
    )
    with pytest.raises(NonRetryableGenerationError) as info:
        await call
    message = str(info.value)
    assert "column 'summary'" in message
    assert "read column 'facts'" in message
    assert "depends_on" in message and "['topic']" in message
    assert isinstance(info.value.__cause__, KeyError)


async def test_a_missing_key_the_function_handles_itself_stays_a_key_error() -> None:
    def fallback(row: Row, ctx: GenerationContext) -> str:
        try:
            return str(row["facts"])
        except KeyError:
            return row.get("facts", "none")

    assert await cell(fallback).generate_cell({}, ctx(FakeModelCalls())) == {"c": "none"}


async def test_close_stops_the_threads_and_a_later_call_starts_new_ones() -> None:
    def name(row: Row, ctx: GenerationContext) -> str:
        return threading.current_thread().name

    generator = CustomColumnGenerator(name="closing", function=name)
    assert (await generator.generate_cell({}, ctx(FakeModelCalls())))["closing"].startswith(
        "sluiceway-closing"
    )
    generator.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("sluiceway-closing")]
    await generator.generate_cell({}, ctx(FakeModelCalls()))
    generator.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("sluiceway-closing")]


def test_from_scratch_is_not_a_custom_strategy() -> None:
    with pytest.raises(EngineError, match="cell or per batch"):
        CustomColumnGenerator(name="c", function=len, strategy=GenerationStrategy.FROM_SCRATCH)


def endpoint(alias: str, cap: int) -> ModelEndpoint:
    return ModelEndpoint(alias=alias, provider="p", model_id=alias, effective_cap=cap)


def test_metadata_is_local_without_models_or_scheduling() -> None:
    assert custom_scheduling_metadata(column="c", scheduling=None, endpoints=[]) is None


def test_metadata_weight_is_the_largest_cap_of_the_declared_models() -> None:
    metadata = custom_scheduling_metadata(
        column="c", scheduling=None, endpoints=[endpoint("a", 3), endpoint("b", 8)]
    )
    assert metadata is not None
    assert metadata.kind is SchedulingKind.CUSTOM_MODEL
    assert metadata.identity == ("custom_model", "custom", "c", "1")
    assert metadata.weight == 8


def test_metadata_from_the_scheduling_block() -> None:
    block = CustomSchedulingConfig(namespace="team", resource_name="ranker", version="2", weight=5)
    metadata = custom_scheduling_metadata(
        column="c", scheduling=block, endpoints=[endpoint("a", 30)]
    )
    assert metadata is not None
    assert (metadata.identity, metadata.weight) == (("custom_model", "team", "ranker", "2"), 5)
    default = custom_scheduling_metadata(
        column="c", scheduling=CustomSchedulingConfig(), endpoints=[]
    )
    assert default is not None
    assert (default.identity, default.weight) == (("custom_model", "custom", "c", "1"), 1)


@pytest.mark.parametrize("is_async", [False, True])
async def test_functions_get_a_snapshot_of_the_row(is_async: bool) -> None:
    seen: list[Row] = []

    def keep(row: Row, ctx: GenerationContext) -> int:
        seen.append(row)
        return len(row)

    async def keep_async(row: Row, ctx: GenerationContext) -> int:
        return keep(row, ctx)

    live = {"a": 1}
    generator = cell(keep_async if is_async else keep)
    assert await generator.generate_cell(live, ctx(FakeModelCalls())) == {"c": 1}
    live["b"] = 2  # the engine adds columns to the live row while other tasks finish
    assert seen == [{"a": 1}]
    assert seen[0] is not live


async def test_sync_cells_run_concurrently_up_to_max_threads() -> None:
    # Twelve calls that can only finish together: more than the loop's default executor runs
    # at once on a small machine, within the column's own pool.
    parties = 12
    barrier = threading.Barrier(parties, timeout=30)
    threads: set[str] = set()

    def meet(row: Row, ctx: GenerationContext) -> int:
        threads.add(threading.current_thread().name)
        return barrier.wait()

    generator = cell(meet, max_threads=parties)
    results = await asyncio.gather(
        *(generator.generate_cell({}, ctx(FakeModelCalls(), (i,))) for i in range(parties))
    )
    assert sorted(result["c"] for result in results) == list(range(parties))
    assert len(threads) == parties
    assert all(name.startswith("sluiceway-c") for name in threads)


async def test_sync_cells_carry_the_running_task_correlation_into_the_thread() -> None:
    from sluiceway.context import TaskCorrelation, current_task

    seen: list[TaskCorrelation | None] = []

    def look(row: Row, ctx: GenerationContext) -> None:
        seen.append(current_task.get())

    correlation = TaskCorrelation(
        run_id="r",
        task_id="c/0/0",
        column="c",
        row_group=0,
        row_index=0,
        task_kind="cell",
        group_key="custom_model:c",
        group_weight=1,
        execution_id=1,
    )
    token = current_task.set(correlation)
    try:
        await cell(look).generate_cell({}, ctx(FakeModelCalls()))
    finally:
        current_task.reset(token)
    assert seen == [correlation]
