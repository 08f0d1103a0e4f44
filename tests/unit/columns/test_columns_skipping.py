"""skip_when: skipped rows get skip_value without calling the wrapped generator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from sluiceway.columns.base import GenerationContext, GenerationStrategy
from sluiceway.columns.custom import CustomColumnGenerator
from sluiceway.columns.endpoints import ModelEndpoint
from sluiceway.columns.llm import LLMTextColumnGenerator
from sluiceway.columns.samplers import SamplerColumnGenerator
from sluiceway.columns.skipping import SkipWhenGenerator
from sluiceway.columns.templates import TemplateEnvironment
from sluiceway.config.models import IntegerSampler
from sluiceway.errors import NonRetryableGenerationError
from sluiceway.testing import FakeModelCalls

ENV = TemplateEnvironment()
ENDPOINT = ModelEndpoint(alias="writer", provider="sim", model_id="m", effective_cap=2)


def ctx(models: FakeModelCalls, rows: Sequence[int]) -> GenerationContext:
    return GenerationContext(seed=3, column="c", row_group=0, row_indices=rows, models=models)


def skipping(inner: Any, condition: str, skip_value: Any = None) -> SkipWhenGenerator:
    return SkipWhenGenerator(
        inner,
        condition=ENV.compile_expression(condition, column=inner.name),
        skip_value=skip_value,
    )


async def test_a_skipped_cell_gets_skip_value_in_every_output_without_a_model_call() -> None:
    inner = LLMTextColumnGenerator(
        name="story",
        endpoint=ENDPOINT,
        prompt=ENV.compile_template("About {{ lang }}", column="story", field="prompt"),
        reasoning_column="story_trace",
        dependencies=("lang",),
    )
    gen = skipping(inner, "lang == 'fr'", skip_value="n/a")
    assert (gen.name, gen.output_columns, gen.dependencies) == (
        "story",
        ("story", "story_trace"),
        ("lang",),
    )
    assert gen.model_aliases == ("writer",)
    assert gen.get_scheduling_metadata() == inner.get_scheduling_metadata()
    models = FakeModelCalls()
    skipped = await gen.generate_cell({"lang": "fr"}, ctx(models, (0,)))
    assert skipped == {"story": "n/a", "story_trace": "n/a"}
    assert models.calls == []
    kept = await gen.generate_cell({"lang": "en"}, ctx(models, (1,)))
    assert kept == {"story": "[writer] About en", "story_trace": "reasoning for writer"}
    assert len(models.calls) == 1


async def test_batches_see_only_kept_rows_and_results_merge_back_in_order() -> None:
    seen: list[tuple[list[Any], list[int]]] = []

    def double(rows: Sequence[Mapping[str, Any]], ctx: GenerationContext) -> list[int]:
        seen.append(([row["n"] for row in rows], list(ctx.row_indices)))
        return [row["n"] * 2 for row in rows]

    inner = CustomColumnGenerator(name="c", function=double, strategy=GenerationStrategy.BATCH)
    gen = skipping(inner, "n % 2 == 1", skip_value=-1)
    assert gen.strategy is GenerationStrategy.BATCH
    rows = [{"n": n} for n in range(5)]
    result = await gen.generate_batch(rows, ctx(FakeModelCalls(), range(10, 15)))
    assert result == [{"c": 0}, {"c": -1}, {"c": 4}, {"c": -1}, {"c": 8}]
    assert seen == [([0, 2, 4], [10, 12, 14])]


async def test_a_fully_skipped_batch_does_not_call_the_generator() -> None:
    def fail(rows: Sequence[Mapping[str, Any]], ctx: GenerationContext) -> list[int]:
        raise AssertionError("must not be called")

    inner = CustomColumnGenerator(name="c", function=fail, strategy=GenerationStrategy.BATCH)
    result = await skipping(inner, "true").generate_batch([{}, {}], ctx(FakeModelCalls(), (0, 1)))
    assert result == [{"c": None}, {"c": None}]


async def test_a_skipped_sampler_runs_as_a_batch_and_keeps_row_values() -> None:
    sampler = SamplerColumnGenerator(
        name="age", sampler=IntegerSampler(low=0, high=1000), dependencies=("kind",)
    )
    gen = skipping(sampler, "kind == 'robot'")
    assert gen.strategy is GenerationStrategy.BATCH
    rows = [{"kind": k} for k in ("human", "robot", "human", "robot")]
    result = await gen.generate_batch(rows, ctx(FakeModelCalls(), range(20, 24)))
    expected = sampler.values(3, range(20, 24))
    assert result == [{"age": expected[0]}, {"age": None}, {"age": expected[2]}, {"age": None}]


async def test_a_skip_expression_that_fails_drops_the_row() -> None:
    inner = CustomColumnGenerator(name="c", function=lambda row, ctx: 1)
    with pytest.raises(NonRetryableGenerationError, match="skip_when"):
        await skipping(inner, "n > 1").generate_cell({"n": "text"}, ctx(FakeModelCalls(), (0,)))
