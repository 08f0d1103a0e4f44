"""Custom columns: sync/async, cell/batch, result shapes, error mapping and scheduling metadata."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Mapping, Sequence
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


def cell(function: Any, **kwargs: Any) -> CustomColumnGenerator:
    return CustomColumnGenerator(name="c", function=function, **kwargs)


def batch(function: Any, **kwargs: Any) -> CustomColumnGenerator:
    return CustomColumnGenerator(
        name="c", function=function, strategy=GenerationStrategy.BATCH, **kwargs
    )


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


async def test_cancellation_passes_through() -> None:
    async def cancelled(row: Row, ctx: GenerationContext) -> str:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await cell(cancelled).generate_cell({}, ctx(FakeModelCalls()))


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


async def test_sync_functions_get_a_snapshot_of_the_row() -> None:
    seen: list[Row] = []

    def keep(row: Row, ctx: GenerationContext) -> int:
        seen.append(row)
        return len(row)

    live = {"a": 1}
    assert await cell(keep).generate_cell(live, ctx(FakeModelCalls())) == {"c": 1}
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
