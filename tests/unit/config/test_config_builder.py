"""The fluent builder produces the same configs as YAML, and reports errors the same way."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from sluiceway.config import (
    CategorySampler,
    DatasetBuilder,
    IntegerSampler,
    ModelConfig,
    ProviderConfig,
    RubricConfig,
    load_config,
)
from sluiceway.errors import ConfigError

YAML = textwrap.dedent(
    """\
    providers:
      - {name: local, type: simulated}
    models:
      - {alias: writer, provider: local, model: sim-chat, parameters: {temperature: 0.2}}
    columns:
      - name: topic
        type: sampler
        sampler: {kind: category, values: [tea, coffee]}
      - name: count
        type: sampler
        sampler: {kind: integer, low: 1, high: 3}
      - {name: title, type: expression, template: "{{ count }} x {{ topic }}"}
      - {name: body, type: llm_text, model: writer, prompt: "Write {{ title }}"}
      - name: meta
        type: llm_structured
        model: writer
        prompt: "Describe {{ body }}"
        output_schema:
          type: object
          properties: {words: {type: integer}}
        max_reasks: 1
      - name: grade
        type: llm_judge
        model: writer
        prompt: "Grade {{ body }}"
        rubrics: [{name: style, description: "Is it stylish?", max_score: 3}]
      - {name: vec, type: embedding, model: writer, input: "{{ body }}"}
      - {name: ext, type: custom, function: "json:dumps", models: [writer], depends_on: [vec]}
    run: {num_records: 4, seed: 3, buffer_size: 2}
    output: {path: out/tea}
    """
)


def build() -> DatasetBuilder:
    return (
        DatasetBuilder(num_records=4, seed=3, buffer_size=2)
        .add_provider(name="local", type="simulated")
        .add_model(
            ModelConfig(
                alias="writer", provider="local", model="sim-chat", parameters={"temperature": 0.2}
            )
        )
        .sampler("topic", CategorySampler(values=["tea", "coffee"]))
        .sampler("count", {"kind": "integer", "low": 1, "high": 3})
        .expression("title", "{{ count }} x {{ topic }}")
        .llm_text("body", model="writer", prompt="Write {{ title }}")
        .llm_structured(
            "meta",
            model="writer",
            prompt="Describe {{ body }}",
            output_schema={"type": "object", "properties": {"words": {"type": "integer"}}},
            max_reasks=1,
        )
        .llm_judge(
            "grade",
            model="writer",
            prompt="Grade {{ body }}",
            rubrics=[RubricConfig(name="style", description="Is it stylish?", max_score=3)],
        )
        .embedding("vec", model="writer", input="{{ body }}")
        .custom("ext", "json:dumps", models=["writer"], depends_on=["vec"])
        .output("out/tea")
    )


def test_builder_equals_yaml_config(tmp_path: Path) -> None:
    path = tmp_path / "dataset.yaml"
    path.write_text(YAML, encoding="utf-8")
    assert build().build() == load_config(path)


def test_builder_accepts_pydantic_models_as_schema() -> None:
    class Meta(BaseModel):
        words: int

    config = (
        DatasetBuilder(num_records=1)
        .add_provider(ProviderConfig(name="p", type="simulated"))
        .add_model(alias="m", provider="p", model="x")
        .sampler("n", IntegerSampler(low=1, high=2))
        .llm_structured("meta", model="m", prompt="{{ n }}", output_schema=Meta)
        .build()
    )
    assert config.column("meta").model_dump()["output_schema"] == Meta.model_json_schema()


def test_builder_reports_all_problems_with_the_same_paths_as_yaml() -> None:
    builder = (
        DatasetBuilder(num_records=0)
        .add_provider(name="p", type="simulated")
        .add_model(alias="m", provider="p", model="x")
        .expression("title", "{{ topic }}")
        .llm_text("body", model="mm", prompt="{{ title }}")
    )
    with pytest.raises(ConfigError) as excinfo:
        builder.build()
    assert [issue.path for issue in excinfo.value.issues] == [
        "run.num_records",
        "columns[1] (body).model",
        "columns[0] (title).template",
    ]


def test_add_provider_rejects_both_object_and_fields() -> None:
    with pytest.raises(TypeError, match="not both"):
        DatasetBuilder(num_records=1).add_provider(
            ProviderConfig(name="p", type="simulated"), name="q"
        )
