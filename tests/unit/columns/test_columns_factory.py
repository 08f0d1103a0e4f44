"""The generator factory: order, dependencies, endpoints, compile-once and skip wrapping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from sluiceway.columns.base import ColumnGenerator, GenerationContext, GenerationStrategy
from sluiceway.columns.custom import CustomColumnGenerator
from sluiceway.columns.endpoints import resolve_model_endpoints
from sluiceway.columns.expression import ExpressionColumnGenerator
from sluiceway.columns.factory import build_generators
from sluiceway.columns.llm import (
    EmbeddingColumnGenerator,
    LLMJudgeColumnGenerator,
    LLMStructuredColumnGenerator,
    LLMTextColumnGenerator,
)
from sluiceway.columns.samplers import SamplerColumnGenerator
from sluiceway.columns.skipping import SkipWhenGenerator
from sluiceway.columns.templates import TemplateEnvironment
from sluiceway.config.graph import ColumnGraph
from sluiceway.config.models import DatasetConfig
from sluiceway.errors import ConfigError
from sluiceway.scheduling.metadata import SchedulingMetadata
from sluiceway.testing import FakeModelCalls


def shout(row: Mapping[str, Any], ctx: GenerationContext) -> dict[str, str]:
    return {"loud": str(row["story"]).upper(), "size": str(len(str(row["story"])))}


def config(**overrides: Any) -> DatasetConfig:
    raw: dict[str, Any] = {
        "providers": [{"name": "sim", "type": "simulated"}],
        "models": [
            {"alias": "fast", "provider": "sim", "model": "m1", "max_parallel_requests": 8},
            {"alias": "careful", "provider": "sim", "model": "m1", "max_parallel_requests": 3},
            {"alias": "judge", "provider": "sim", "model": "m2", "max_parallel_requests": 5},
        ],
        "columns": [
            {"name": "summary", "type": "expression", "template": "{{ story }}|{{ loud }}"},
            {
                "name": "story",
                "type": "llm_text",
                "model": "fast",
                "prompt": "About {{ topic }}",
                "system_prompt": "Be brief",
            },
            {"name": "topic", "type": "sampler", "sampler": {"kind": "category", "values": ["x"]}},
            {
                "name": "facts",
                "type": "llm_structured",
                "model": "careful",
                "prompt": "Facts of {{ story }}",
                "output_schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                "skip_when": "topic == 'y'",
                "skip_value": {},
            },
            {
                "name": "score",
                "type": "llm_judge",
                "model": "judge",
                "prompt": "Judge {{ story }}",
                "rubrics": [{"name": "clarity", "description": "clear?"}],
            },
            {"name": "vec", "type": "embedding", "model": "fast", "input": "{{ story }}"},
            {
                "name": "shouted",
                "type": "custom",
                "function": shout,
                "output_columns": ["loud", "size"],
                "models": ["careful", "judge"],
                "depends_on": ["story"],
            },
        ],
        "run": {"num_records": 4, "seed": 5},
    }
    raw.update(overrides)
    return DatasetConfig.model_validate(raw)


def build(cfg: DatasetConfig, env: TemplateEnvironment | None = None) -> list[ColumnGenerator]:
    return build_generators(cfg, ColumnGraph.build(cfg), templates=env)


def by_name(generators: list[ColumnGenerator]) -> dict[str, ColumnGenerator]:
    return {generator.name: generator for generator in generators}


def test_generators_come_in_topological_order_with_graph_dependencies() -> None:
    cfg = config()
    graph = ColumnGraph.build(cfg)
    generators = build_generators(cfg, graph)
    assert tuple(g.name for g in generators) == graph.topological_order()
    for generator in generators:
        assert generator.dependencies == graph.dependencies(generator.name)
    types = {name: type(g) for name, g in by_name(generators).items()}
    assert types == {
        "topic": SamplerColumnGenerator,
        "story": LLMTextColumnGenerator,
        "facts": SkipWhenGenerator,
        "score": LLMJudgeColumnGenerator,
        "vec": EmbeddingColumnGenerator,
        "shouted": CustomColumnGenerator,
        "summary": ExpressionColumnGenerator,
    }
    facts = by_name(generators)["facts"]
    assert isinstance(facts, SkipWhenGenerator)
    assert isinstance(facts.inner, LLMStructuredColumnGenerator)
    assert by_name(generators)["shouted"].output_columns == ("loud", "size")


def test_every_template_is_compiled_once_per_run() -> None:
    env = TemplateEnvironment()
    build(config(), env)
    # summary, story (prompt + system), facts, score, vec; one skip_when.
    assert env.statistics().templates_compiled == 6
    assert env.statistics().expressions_compiled == 1


def test_model_weight_is_the_min_cap_over_aliases_of_the_same_endpoint() -> None:
    endpoints = resolve_model_endpoints(config().models)
    assert endpoints["fast"].effective_cap == endpoints["careful"].effective_cap == 3
    assert endpoints["judge"].effective_cap == 5
    generators = by_name(build(config()))
    assert generators["story"].get_scheduling_metadata() == SchedulingMetadata.model(
        provider="sim", model_id="m1", generation_kind="text", weight=3
    )
    assert generators["facts"].get_scheduling_metadata() == SchedulingMetadata.model(
        provider="sim", model_id="m1", generation_kind="structured", weight=3
    )
    assert generators["score"].get_scheduling_metadata() == SchedulingMetadata.model(
        provider="sim", model_id="m2", generation_kind="judge", weight=5
    )
    assert generators["vec"].get_scheduling_metadata() == SchedulingMetadata.model(
        provider="sim", model_id="m1", generation_kind="embedding", weight=3
    )
    assert generators["topic"].get_scheduling_metadata() is None
    assert generators["summary"].get_scheduling_metadata() is None


def test_custom_column_weight_comes_from_its_declared_models() -> None:
    shouted = by_name(build(config()))["shouted"]
    assert shouted.model_aliases == ("careful", "judge")
    assert shouted.get_scheduling_metadata() == SchedulingMetadata.custom_model(
        namespace="custom", resource_name="shouted", version="1", weight=5
    )


def test_custom_strategy_and_string_references_are_resolved() -> None:
    cfg = config()
    columns = [c.model_dump() for c in cfg.columns if c.name != "shouted"]
    columns.append(
        {
            "name": "shouted",
            "type": "custom",
            "function": f"{__name__}:shout",
            "strategy": "batch",
            "output_columns": ["loud", "size"],
            "depends_on": ["story"],
        }
    )
    shouted = by_name(build(config(columns=columns)))["shouted"]
    assert isinstance(shouted, CustomColumnGenerator)
    assert shouted.function is shout
    assert shouted.strategy is GenerationStrategy.BATCH
    assert shouted.get_scheduling_metadata() is None


def test_an_unknown_faker_locale_fails_the_build() -> None:
    cfg = config(
        columns=[
            {
                "name": "who",
                "type": "sampler",
                "sampler": {"kind": "person", "locale": "zz_ZZ"},
            }
        ]
    )
    with pytest.raises(ConfigError, match="zz_ZZ"):
        build(cfg)


async def test_the_built_generators_produce_a_row_in_dependency_order() -> None:
    generators = build(config())
    models = FakeModelCalls()
    row: dict[str, Any] = {}
    for generator in generators:
        ctx = GenerationContext(
            seed=5, column=generator.name, row_group=0, row_indices=(0,), models=models
        )
        if generator.strategy is GenerationStrategy.FROM_SCRATCH:
            [values] = await generator.generate_from_scratch(ctx)
        elif generator.strategy is GenerationStrategy.BATCH:
            [values] = await generator.generate_batch([row], ctx)
        else:
            values = await generator.generate_cell(row, ctx)
        row.update(values)
    assert row["topic"] == "x"
    assert row["story"] == "[fast] About x"
    assert row["facts"] == {"a": "x"}
    assert row["score"] == {"clarity": {"score": 1, "reasoning": "x"}}
    assert row["loud"] == "[FAST] ABOUT X"
    assert row["summary"] == "[fast] About x|[FAST] ABOUT X"
    assert [call.alias for call in models.calls] == ["fast", "careful", "judge", "fast"]
