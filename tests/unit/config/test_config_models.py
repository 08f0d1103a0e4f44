"""Field-level rules of the config models and their helper methods."""

from __future__ import annotations

import datetime as dt
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

from sluiceway.config import (
    CategorySampler,
    CustomColumnConfig,
    DatetimeSampler,
    LLMJudgeColumnConfig,
    LLMStructuredColumnConfig,
    LLMTextColumnConfig,
    ProviderConfig,
    RubricConfig,
    SamplerColumnConfig,
    resolve_callable,
)
from sluiceway.errors import ConfigError


class Review(BaseModel):
    sentiment: str
    stars: int


def make_title(row: dict[str, Any]) -> str:
    return str(row)


def test_pydantic_model_as_output_schema_becomes_its_json_schema() -> None:
    column = LLMStructuredColumnConfig(
        name="review",
        model="m",
        prompt="Review",
        output_schema=Review,
    )
    assert column.output_schema == Review.model_json_schema()
    assert column.output_schema["required"] == ["sentiment", "stars"]


def test_models_are_frozen_and_forbid_unknown_fields() -> None:
    column = SamplerColumnConfig(name="a", sampler=CategorySampler(values=[1]))
    with pytest.raises(ValidationError):
        column.name = "b"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs"):
        SamplerColumnConfig.model_validate(
            {"name": "a", "sampler": {"kind": "uuid"}, "colour": "red"}
        )


@pytest.mark.parametrize(
    "key",
    ["sk-proj-abcdefghijklmnop", "sk-ant-api03-xyz", "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"],
)
def test_literal_api_keys_are_rejected(key: str) -> None:
    with pytest.raises(ValidationError, match="literal API key"):
        ProviderConfig(name="p", type="openai", api_key_env=key)


def test_environment_variable_names_are_accepted() -> None:
    provider = ProviderConfig(name="p", type="openai", api_key_env="OPENAI_API_KEY")
    assert provider.api_key_env == "OPENAI_API_KEY"
    with pytest.raises(ValidationError, match="not a valid environment-variable name"):
        ProviderConfig(name="p", type="openai", api_key_env="MY KEY")


def test_category_weights_must_match_values() -> None:
    with pytest.raises(ValidationError, match="weights has 1 entries but values has 2"):
        CategorySampler(values=["a", "b"], weights=[1.0])
    with pytest.raises(ValidationError, match="must not all be zero"):
        CategorySampler(values=["a", "b"], weights=[0.0, 0.0])


def test_datetime_sampler_accepts_dates_and_checks_order() -> None:
    spec = DatetimeSampler(start=dt.date(2024, 1, 1), end="2024-02-01T00:00:00")
    assert spec.start == dt.datetime(2024, 1, 1)
    with pytest.raises(ValidationError, match="must be before end"):
        DatetimeSampler(start=dt.datetime(2024, 2, 1), end=dt.datetime(2024, 1, 1))


def test_column_names_must_be_identifiers_and_not_reserved() -> None:
    with pytest.raises(ValidationError, match="not a valid name"):
        SamplerColumnConfig(name="first name", sampler=CategorySampler(values=[1]))
    with pytest.raises(ValidationError, match="reserved word"):
        SamplerColumnConfig(name="true", sampler=CategorySampler(values=[1]))


def test_judge_score_schema_validates_a_well_formed_answer() -> None:
    judge = LLMJudgeColumnConfig(
        name="grade",
        model="m",
        prompt="Grade {{ answer }}",
        rubrics=[
            RubricConfig(name="accuracy", description="Is it right?"),
            RubricConfig(name="tone", description="Is it polite?", min_score=0, max_score=2),
        ],
    )
    schema = judge.score_schema()
    good = {
        "accuracy": {"score": 5, "reasoning": "correct"},
        "tone": {"score": 0, "reasoning": "rude"},
    }
    jsonschema.validate(good, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "tone": {"score": 3, "reasoning": "x"}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"accuracy": good["accuracy"]}, schema)
    assert schema["properties"]["tone"]["properties"]["score"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 2,
    }


def test_judge_rubric_names_must_be_unique() -> None:
    rubric = RubricConfig(name="accuracy", description="d")
    with pytest.raises(ValidationError, match="used more than once"):
        LLMJudgeColumnConfig(name="g", model="m", prompt="p", rubrics=[rubric, rubric])


def test_template_fields_and_produced_columns() -> None:
    text = LLMTextColumnConfig(
        name="a", model="m", prompt="P", system_prompt="S", reasoning_column="a_trace"
    )
    assert text.template_fields() == {"prompt": "P", "system_prompt": "S"}
    assert text.produced_columns() == ("a", "a_trace")
    assert text.model_aliases() == ("m",)
    custom = CustomColumnConfig(name="c", function=make_title, models=["m", "n"])
    assert custom.produced_columns() == ("c",)
    assert custom.template_fields() == {}
    assert custom.model_aliases() == ("m", "n")


def test_callable_survives_frozen_model_and_serializes_as_reference() -> None:
    column = CustomColumnConfig(name="c", function=make_title)
    assert column.function is make_title
    assert column.resolve_function() is make_title
    assert column.model_dump(mode="json")["function"] == f"{__name__}:make_title"


def test_callable_reference_syntax_is_checked_but_not_imported() -> None:
    column = CustomColumnConfig(name="c", function="not_installed_pkg.module:fn")
    assert column.function == "not_installed_pkg.module:fn"
    with pytest.raises(ValidationError, match=r"'package\.module:attribute'"):
        CustomColumnConfig(name="c", function="no-colon")


def test_resolve_callable_imports_and_names_the_column_on_failure() -> None:
    assert resolve_callable("json:dumps").__name__ == "dumps"
    with pytest.raises(ConfigError) as excinfo:
        resolve_callable("not_installed_pkg.module:fn", column_name="title")
    (issue,) = excinfo.value.issues
    assert issue.path == "columns (title).function"
    assert "cannot import module 'not_installed_pkg.module'" in issue.message
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        resolve_callable("json:nope", column_name="title")
    with pytest.raises(ConfigError, match="not callable"):
        resolve_callable("json:__doc__", column_name="title")
