"""LLM columns call the model facade with rendered prompts, schemas and their endpoint metadata."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from sluiceway.columns.base import GenerationContext, GenerationStrategy
from sluiceway.columns.endpoints import ModelEndpoint
from sluiceway.columns.llm import (
    EmbeddingColumnGenerator,
    LLMJudgeColumnGenerator,
    LLMStructuredColumnGenerator,
    LLMTextColumnGenerator,
)
from sluiceway.columns.templates import TemplateEnvironment
from sluiceway.config.models import LLMJudgeColumnConfig, RubricConfig
from sluiceway.errors import NonRetryableGenerationError, RateLimitedError
from sluiceway.scheduling.metadata import SchedulingKind
from sluiceway.testing import FakeCallMethod, FakeModelCalls, schema_instance, text_vector

ENDPOINT = ModelEndpoint(alias="writer", provider="sim", model_id="sim-writer", effective_cap=3)
ENV = TemplateEnvironment()
ROW = {"topic": "cats", "n": 2}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"tone": {"type": "string", "enum": ["warm", "cold"]}, "n": {"type": "integer"}},
    "required": ["tone", "n"],
}


def template(source: str, field: str = "prompt") -> Any:
    return ENV.compile_template(source, column="col", field=field)


def ctx(models: FakeModelCalls) -> GenerationContext:
    return GenerationContext(seed=0, column="col", row_group=0, row_indices=(4,), models=models)


async def test_text_renders_prompts_and_passes_parameters() -> None:
    models = FakeModelCalls()
    gen = LLMTextColumnGenerator(
        name="story",
        endpoint=ENDPOINT,
        prompt=template("About {{ topic }}"),
        system_prompt=template("Use {{ n }} lines", "system_prompt"),
        parameters={"temperature": 0.2},
        dependencies=("topic", "n"),
    )
    assert await gen.generate_cell(ROW, ctx(models)) == {"story": "[writer] About cats"}
    [call] = models.calls
    assert call.method is FakeCallMethod.GENERATE_TEXT
    assert (call.alias, call.prompt, call.system_prompt) == ("writer", "About cats", "Use 2 lines")
    assert call.parameters == {"temperature": 0.2}
    assert not call.is_sync
    assert gen.model_aliases == ("writer",)
    assert gen.strategy is GenerationStrategy.CELL


async def test_text_without_system_prompt_or_parameters_sends_none() -> None:
    models = FakeModelCalls()
    gen = LLMTextColumnGenerator(name="story", endpoint=ENDPOINT, prompt=template("Hi"))
    await gen.generate_cell(ROW, ctx(models))
    assert (models.calls[0].system_prompt, models.calls[0].parameters) == (None, None)


async def test_reasoning_column_holds_the_reasoning_trace() -> None:
    gen = LLMTextColumnGenerator(
        name="story", endpoint=ENDPOINT, prompt=template("Hi"), reasoning_column="story_trace"
    )
    assert gen.output_columns == ("story", "story_trace")
    result = await gen.generate_cell(ROW, ctx(FakeModelCalls()))
    assert result == {"story": "[writer] Hi", "story_trace": "reasoning for writer"}


async def test_structured_passes_the_schema_and_reask_budget() -> None:
    models = FakeModelCalls()
    gen = LLMStructuredColumnGenerator(
        name="facts",
        endpoint=ENDPOINT,
        prompt=template("Facts on {{ topic }}"),
        schema=SCHEMA,
        max_reasks=4,
    )
    assert await gen.generate_cell(ROW, ctx(models)) == {"facts": {"tone": "warm", "n": 0}}
    [call] = models.calls
    assert call.schema is SCHEMA
    assert (call.prompt, call.max_reasks, call.generation_kind) == (
        "Facts on cats",
        4,
        "structured",
    )


def judge_config() -> LLMJudgeColumnConfig:
    return LLMJudgeColumnConfig(
        name="score",
        model="writer",
        prompt="Judge {{ topic }}",
        rubrics=[
            RubricConfig(name="clarity", description="Is it clear?", min_score=2, max_score=4),
            RubricConfig(name="tone", description="Is it kind?"),
        ],
    )


def judge(config: LLMJudgeColumnConfig) -> LLMJudgeColumnGenerator:
    return LLMJudgeColumnGenerator(
        name="score",
        endpoint=ENDPOINT,
        prompt=template(config.prompt),
        rubrics=config.rubrics,
        schema=config.score_schema(),
        max_reasks=1,
    )


async def test_judge_passes_the_rubric_schema_and_returns_scores() -> None:
    config = judge_config()
    models = FakeModelCalls()
    result = await judge(config).generate_cell(ROW, ctx(models))
    assert result == {
        "score": {"clarity": {"score": 2, "reasoning": "x"}, "tone": {"score": 1, "reasoning": "x"}}
    }
    [call] = models.calls
    assert call.schema == config.score_schema()
    assert (call.generation_kind, call.max_reasks, call.prompt) == ("judge", 1, "Judge cats")


@pytest.mark.parametrize("bad_score", [9, "3", None, True])
async def test_judge_rejects_out_of_range_scores(bad_score: object) -> None:
    def answer(alias: str, schema: Mapping[str, Any]) -> dict[str, Any]:
        return {"clarity": {"score": bad_score, "reasoning": ""}, "tone": {"score": 1}}

    with pytest.raises(NonRetryableGenerationError, match=r"rubric 'clarity'.*\[2, 4\]"):
        await judge(judge_config()).generate_cell(
            ROW, ctx(FakeModelCalls(structured_answer=answer))
        )


async def test_embedding_embeds_the_rendered_input() -> None:
    models = FakeModelCalls(embedding_dimensions=3)
    gen = EmbeddingColumnGenerator(
        name="vec", endpoint=ENDPOINT, input_template=template("{{ topic }}!", "input")
    )
    assert await gen.generate_cell(ROW, ctx(models)) == {"vec": text_vector("cats!", 3)}
    assert models.calls[0].texts == ("cats!",)
    assert models.calls[0].method is FakeCallMethod.EMBED


async def test_provider_errors_pass_through_unchanged() -> None:
    error = RateLimitedError("slow down", retry_after_seconds=1.0)
    gen = LLMTextColumnGenerator(name="story", endpoint=ENDPOINT, prompt=template("Hi"))
    with pytest.raises(RateLimitedError) as info:
        await gen.generate_cell(ROW, ctx(FakeModelCalls(failures={"writer": error})))
    assert info.value is error


def test_metadata_is_the_endpoint_with_its_generation_kind() -> None:
    config = judge_config()
    generators = {
        "text": LLMTextColumnGenerator(name="a", endpoint=ENDPOINT, prompt=template("x")),
        "structured": LLMStructuredColumnGenerator(
            name="b", endpoint=ENDPOINT, prompt=template("x"), schema=SCHEMA
        ),
        "judge": judge(config),
        "embedding": EmbeddingColumnGenerator(
            name="d", endpoint=ENDPOINT, input_template=template("x")
        ),
    }
    for kind, gen in generators.items():
        metadata = gen.get_scheduling_metadata()
        assert metadata.kind is SchedulingKind.MODEL
        assert metadata.identity == ("model", "sim", "sim-writer", kind)
        assert metadata.weight == 3


def test_schema_instance_follows_simple_rules() -> None:
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "minLength": 3}, "minItems": 2},
            "count": {"type": "integer", "exclusiveMinimum": 4},
            "ratio": {"type": "number", "maximum": -1},
            "flag": {"type": "boolean"},
            "kind": {"const": "k"},
            "maybe": {"type": ["null", "integer"], "minimum": 1.5},
            "either": {"anyOf": [{"type": "null"}, {"type": "string"}]},
        },
    }
    assert schema_instance(schema) == {
        "tags": ["xxx", "xxx"],
        "count": 5,
        "ratio": -1.0,
        "flag": True,
        "kind": "k",
        "maybe": 2,
        "either": None,
    }
