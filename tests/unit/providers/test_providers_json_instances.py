"""Schema-valid instances: handwritten schemas, pydantic schemas and generated schemas validate."""

from __future__ import annotations

import datetime
import enum
import json
import random
from typing import Any, Literal, Optional

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from sluiceway.errors import BadRequestError
from sluiceway.providers.json_instances import (
    WORDS,
    compile_instance_factory,
    instance_for_schema,
)

SEEDS = range(60)


def _validator(schema: Any) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _assert_valid_for_many_seeds(schema: Any) -> list[Any]:
    validator = _validator(schema)
    factory = compile_instance_factory(schema)
    instances = []
    for seed in SEEDS:
        instance = factory(random.Random(seed))
        errors = [error.message for error in validator.iter_errors(instance)]
        assert errors == [], f"seed {seed}: {instance!r} -> {errors}"
        json.dumps(instance)  # always JSON-serialisable
        instances.append(instance)
    return instances


HANDWRITTEN: dict[str, dict[str, Any]] = {
    "string bounds": {"type": "string", "minLength": 30, "maxLength": 32},
    "short string": {"type": "string", "maxLength": 3},
    "empty string only": {"type": "string", "maxLength": 0},
    "formats": {
        "type": "object",
        "properties": {
            "day": {"type": "string", "format": "date"},
            "at": {"type": "string", "format": "date-time"},
            "mail": {"type": "string", "format": "email"},
            "id": {"type": "string", "format": "uuid"},
            "site": {"type": "string", "format": "uri"},
            "addr": {"type": "string", "format": "ipv4"},
        },
        "required": ["day", "at", "mail", "id", "site", "addr"],
        "additionalProperties": False,
    },
    "pattern": {"type": "string", "pattern": "^[a-z]+$"},
    "integer exclusive": {"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 5},
    "integer multiple": {"type": "integer", "minimum": 1, "maximum": 50, "multipleOf": 7},
    "integer only max": {"type": "integer", "maximum": -1000},
    "number exclusive": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.01},
    "number multiple": {"type": "number", "minimum": 0, "maximum": 10, "multipleOf": 0.5},
    "number float bounds": {"type": "number", "minimum": 1.5, "maximum": 1.5},
    "boolean": {"type": "boolean"},
    "null": {"type": "null"},
    "enum": {"enum": ["red", 3, None, {"a": 1}]},
    "const": {"const": {"fixed": [1, 2]}},
    "nullable": {"type": ["string", "null"], "minLength": 2},
    "multi type": {"type": ["integer", "boolean"]},
    "anyOf": {"anyOf": [{"type": "string", "maxLength": -1}, {"type": "integer"}]},
    "oneOf objects": {
        "oneOf": [
            {"type": "object", "properties": {"a": {"const": 1}}, "required": ["a"]},
            {"type": "object", "properties": {"b": {"const": 2}}, "required": ["b"]},
        ]
    },
    "allOf": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "string"}}, "required": ["b"]},
        ]
    },
    "array bounds": {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 1000},
        "minItems": 4,
        "maxItems": 6,
        "uniqueItems": True,
    },
    "empty array": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
    "tuple 2020-12": {
        "type": "array",
        "prefixItems": [{"type": "integer"}, {"type": "string"}],
        "items": False,
        "minItems": 2,
    },
    "map": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 5}},
    "min properties": {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "minProperties": 3,
    },
    "closed object": {
        "type": "object",
        "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
        "required": ["x"],
        "additionalProperties": False,
    },
    "required without property": {"type": "object", "required": ["anything"]},
    "untyped": {},
    "true schema": {"type": "object", "properties": {"free": True}, "required": ["free"]},
    "refs": {
        "$defs": {
            "Point": {
                "type": "object",
                "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                "required": ["x", "y"],
            }
        },
        "type": "array",
        "items": {"$ref": "#/$defs/Point"},
        "minItems": 1,
    },
    "definitions ref": {
        "definitions": {"Name": {"type": "string", "minLength": 1}},
        "type": "object",
        "properties": {"name": {"$ref": "#/definitions/Name"}},
        "required": ["name"],
    },
    "recursive root": {
        "type": "object",
        "properties": {
            "value": {"type": "integer"},
            "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
        },
        "required": ["value", "next"],
    },
    "judge rubric": {
        "type": "object",
        "properties": {
            name: {
                "type": "object",
                "properties": {
                    "score": {"type": "integer", "minimum": 1, "maximum": 5},
                    "reasoning": {"type": "string", "minLength": 1},
                },
                "required": ["score", "reasoning"],
                "additionalProperties": False,
            }
            for name in ("helpfulness", "accuracy", "tone")
        },
        "required": ["helpfulness", "accuracy", "tone"],
        "additionalProperties": False,
    },
}


@pytest.mark.parametrize("name", sorted(HANDWRITTEN))
def test_handwritten_schemas_yield_valid_instances(name: str) -> None:
    _assert_valid_for_many_seeds(HANDWRITTEN[name])


def test_draft4_boolean_exclusive_bounds_are_respected() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {
            "i": {"type": "integer", "minimum": 1, "maximum": 3, "exclusiveMinimum": True},
            "n": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMaximum": True},
        },
        "required": ["i", "n"],
    }
    instances = _assert_valid_for_many_seeds(schema)
    assert {instance["i"] for instance in instances} <= {2, 3}


def test_judge_rubric_scores_stay_in_range_and_vary() -> None:
    instances = _assert_valid_for_many_seeds(HANDWRITTEN["judge rubric"])
    scores = {instance["accuracy"]["score"] for instance in instances}
    assert scores == {1, 2, 3, 4, 5}


def test_same_seed_same_instance_and_seeds_differ() -> None:
    schema = HANDWRITTEN["judge rubric"]
    first = instance_for_schema(schema, random.Random(7))
    again = instance_for_schema(schema, random.Random(7))
    other = instance_for_schema(schema, random.Random(8))
    assert first == again
    assert first != other


def test_strings_come_from_the_vocabulary() -> None:
    value = instance_for_schema({"type": "string"}, random.Random(3))
    assert value
    assert all(word in WORDS for word in value.split())


def test_unsatisfiable_schemas_raise_bad_request_naming_the_place() -> None:
    with pytest.raises(BadRequestError, match=r"properties\.age"):
        compile_instance_factory(
            {
                "type": "object",
                "properties": {"age": {"type": "integer", "minimum": 5, "maximum": 1}},
            }
        )
    with pytest.raises(BadRequestError, match="no viable branch"):
        compile_instance_factory({"anyOf": [False, {"enum": []}]})


def test_required_self_reference_is_reported_not_a_recursion_error() -> None:
    schema = {
        "type": "object",
        "properties": {"child": {"$ref": "#"}},
        "required": ["child"],
    }
    with pytest.raises(BadRequestError, match="refers back to its own type"):
        instance_for_schema(schema, random.Random(0))


def test_dangling_and_remote_refs_are_bad_requests() -> None:
    with pytest.raises(BadRequestError, match="points nowhere"):
        compile_instance_factory({"$ref": "#/$defs/Missing"})
    with pytest.raises(BadRequestError, match="only local references"):
        compile_instance_factory({"$ref": "https://example.com/schema.json"})


# --------------------------------------------------------------------------------------------
# pydantic-generated schemas
# --------------------------------------------------------------------------------------------


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Address(BaseModel):
    street: str
    city: str = Field(min_length=2, max_length=40)
    postcode: str | None = None


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=130)
    height_m: float = Field(gt=0.3, lt=2.6)
    mood: Mood
    priority: Priority = Priority.LOW
    kind: Literal["customer", "employee"]
    nickname: Optional[str] = None  # noqa: UP045 - the Optional spelling is under test
    addresses: list[Address] = Field(min_length=1, max_length=3)
    home: Address | None = None
    born: datetime.date
    updated_at: datetime.datetime
    scores: dict[str, int] = Field(default_factory=dict)
    pair: tuple[int, str]
    tags: set[str] = Field(default_factory=set)


class Category(BaseModel):
    title: str
    children: list[Category] = Field(default_factory=list)
    parent: Category | None = None


class Rubric(BaseModel):
    score: int = Field(ge=1, le=10, description="1 is worst")
    reasoning: str


class Judgement(BaseModel):
    relevance: Rubric
    fluency: Rubric


@pytest.mark.parametrize("model", [Person, Category, Judgement, Address])
def test_pydantic_schemas_yield_instances_the_model_accepts(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    for instance in _assert_valid_for_many_seeds(schema):
        model.model_validate(instance)


def test_recursive_pydantic_schema_terminates_with_bounded_size() -> None:
    schema = Category.model_json_schema()
    factory = compile_instance_factory(schema)
    for seed in SEEDS:
        assert len(json.dumps(factory(random.Random(seed)))) < 200_000


# --------------------------------------------------------------------------------------------
# Generated schemas
# --------------------------------------------------------------------------------------------


def _leaf_schemas() -> st.SearchStrategy[dict[str, Any]]:
    bounds = st.integers(-50, 50)
    return st.one_of(
        st.builds(
            lambda low, span: {"type": "integer", "minimum": low, "maximum": low + span},
            bounds,
            st.integers(0, 20),
        ),
        st.builds(
            lambda low, span: {"type": "number", "exclusiveMinimum": low, "maximum": low + span},
            bounds,
            st.integers(1, 20),
        ),
        st.builds(
            lambda low, span: {"type": "string", "minLength": low, "maxLength": low + span},
            st.integers(0, 20),
            st.integers(0, 10),
        ),
        st.just({"type": "boolean"}),
        st.just({"type": "null"}),
        st.lists(st.one_of(st.integers(), st.text(max_size=5)), min_size=1, max_size=4).map(
            lambda values: {"enum": values}
        ),
        st.sampled_from(["date", "date-time", "email"]).map(
            lambda fmt: {"type": "string", "format": fmt}
        ),
    )


def _extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    def obj(props: dict[str, dict[str, Any]], data: st.DataObject) -> dict[str, Any]:
        required = data.draw(st.lists(st.sampled_from(sorted(props)), unique=True)) if props else []
        closed = data.draw(st.booleans())
        return {
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": not closed,
        }

    return st.one_of(
        st.builds(
            obj,
            st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), children, max_size=4),
            st.data(),
        ),
        st.builds(
            lambda items, low, span: {
                "type": "array",
                "items": items,
                "minItems": low,
                "maxItems": low + span,
            },
            children,
            st.integers(0, 3),
            st.integers(0, 3),
        ),
        st.builds(lambda a, b: {"anyOf": [a, b]}, children, children),
        children.filter(lambda schema: isinstance(schema.get("type"), str)).map(
            lambda schema: {**schema, "type": [schema["type"], "null"]}
        ),
    )


SCHEMAS = st.recursive(_leaf_schemas(), _extend, max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(schema=SCHEMAS, seed=st.integers(0, 2**32))
def test_generated_schemas_yield_valid_instances(schema: dict[str, Any], seed: int) -> None:
    instance = instance_for_schema(schema, random.Random(seed))
    validator = _validator(schema)
    assert [error.message for error in validator.iter_errors(instance)] == []
