"""JSON schemas -> Arrow types, declared column types, exact nested encoding, and the nulls that
stand for absent keys."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from pydantic import BaseModel

from sluiceway.config.column_values import DeclaredValue, ValueKind
from sluiceway.config.models import LLMJudgeColumnConfig
from sluiceway.storage.column_kinds import ColumnKind, ColumnType, encode_nested, merge_types
from sluiceway.storage.column_types import (
    arrow_type_of_schema,
    column_type_of,
    column_types,
    prune_absent,
)


class Address(BaseModel):
    city: str
    zip_code: str | None = None


class Person(BaseModel):
    name: str
    age: int = 0
    tags: list[str] = []
    address: Address | None = None


def _struct(*fields: pa.Field) -> Any:
    return pa.struct(list(fields))


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string"}, pa.string()),
        ({"type": "integer", "minimum": 0}, pa.int64()),
        ({"type": "number"}, pa.float64()),
        ({"type": "boolean"}, pa.bool_()),
        ({"type": ["string", "null"]}, pa.string()),
        ({"enum": ["a", "b"]}, pa.string()),
        ({"const": 3}, pa.int64()),
        ({"type": "array", "items": {"type": "integer"}}, pa.list_(pa.int64())),
        (
            {
                "type": "object",
                "properties": {
                    "s": {"type": "string"},
                    "n": {"type": ["integer", "null"]},
                    "opt": {"type": "boolean"},
                },
                "required": ["s", "n"],
            },
            _struct(
                pa.field("s", pa.string(), nullable=False),
                pa.field("n", pa.int64(), nullable=True),  # required but may be null
                pa.field("opt", pa.bool_(), nullable=True),  # not required: absent or null
            ),
        ),
        (
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"k": {"type": "string"}},
                    "required": ["k"],
                    "additionalProperties": False,
                },
            },
            pa.list_(_struct(pa.field("k", pa.string(), nullable=False))),
        ),
        ({"anyOf": [{"type": "number"}, {"type": "null"}]}, pa.float64()),
    ],
)
def test_schemas_that_map_to_arrow_types(schema: dict[str, Any], expected: Any) -> None:
    assert arrow_type_of_schema(schema) == expected


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object"},  # free-form
        {"type": "object", "properties": {}},
        {"type": "object", "additionalProperties": {"type": "integer"}},
        {
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "additionalProperties": {"type": "integer"},
        },
        {"type": "object", "properties": {"a": {"type": "string"}}, "patternProperties": {}},
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]},
        {"type": "array"},
        {"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "string"}},
        {"type": ["string", "integer"]},
        {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        {"type": "object", "properties": {"a": {"type": "string"}}, "allOf": [{}]},
        {"enum": ["a", 1]},
        {"type": "null"},
        {},
        {"$ref": "https://example.com/schema.json"},
    ],
)
def test_schemas_that_stay_json_text(schema: dict[str, Any]) -> None:
    assert arrow_type_of_schema(schema) is None


def test_a_pydantic_model_schema_maps_through_its_refs() -> None:
    arrow_type = arrow_type_of_schema(Person.model_json_schema())
    address = _struct(
        pa.field("city", pa.string(), nullable=False), pa.field("zip_code", pa.string())
    )
    assert arrow_type == _struct(
        pa.field("name", pa.string(), nullable=False),
        pa.field("age", pa.int64()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("address", address),
    )


def test_a_recursive_schema_stays_json_text() -> None:
    schema = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {"child": {"$ref": "#/$defs/Node"}},
            }
        },
        "$ref": "#/$defs/Node",
    }
    assert arrow_type_of_schema(schema) is None


def test_declared_values_become_column_types() -> None:
    judge = LLMJudgeColumnConfig(
        name="q",
        model="m",
        prompt="p",
        rubrics=[{"name": "clarity", "description": "clear?"}],  # type: ignore[list-item]
    )
    types = column_types(
        {
            "text": DeclaredValue(kind=ValueKind.STRING),
            "n": DeclaredValue(kind=ValueKind.INTEGER),
            "x": DeclaredValue(kind=ValueKind.NUMBER),
            "vec": DeclaredValue(kind=ValueKind.VECTOR),
            "whatever": DeclaredValue(kind=ValueKind.ANY),
            "free": DeclaredValue(kind=ValueKind.JSON, schema={"type": "object"}),
            "label": DeclaredValue(kind=ValueKind.JSON, schema={"type": "string"}),
            "q": DeclaredValue(kind=ValueKind.JSON, schema=judge.score_schema()),
        }
    )
    assert types["text"] == ColumnType.of(ColumnKind.STRING)
    assert types["n"] == ColumnType.of(ColumnKind.INT)
    assert types["x"] == ColumnType.of(ColumnKind.FLOAT)
    assert types["vec"] == ColumnType.of(ColumnKind.FLOAT_LIST)
    assert "whatever" not in types
    assert types["free"] == ColumnType.of(ColumnKind.JSON)
    assert types["label"] == ColumnType.of(ColumnKind.STRING)
    rubric = _struct(
        pa.field("score", pa.int64(), nullable=False),
        pa.field("reasoning", pa.string(), nullable=False),
    )
    assert types["q"] == ColumnType.nested(_struct(pa.field("clarity", rubric, nullable=False)))
    assert column_type_of(DeclaredValue(kind=ValueKind.DATETIME_UTC)) == ColumnType.of(
        ColumnKind.TIMESTAMP_UTC
    )


def test_nested_values_are_encoded_exactly_or_not_at_all() -> None:
    arrow_type = _struct(
        pa.field("n", pa.int64(), nullable=False), pa.field("xs", pa.list_(pa.float64()))
    )
    array = encode_nested(
        [{"n": 1, "xs": [0.5, 2]}, None, {"n": 2.0, "extra": "dropped"}], arrow_type
    )
    assert array is not None
    assert array.type == arrow_type
    assert array.to_pylist() == [{"n": 1, "xs": [0.5, 2.0]}, None, {"n": 2, "xs": None}]
    # pyarrow alone would store 2.5 as 2; a value that does not fit is refused instead.
    assert encode_nested([{"n": 2.5}], arrow_type) is None
    assert encode_nested([{"n": 2**63}], arrow_type) is None
    assert encode_nested([{"n": True}], arrow_type) is None
    assert encode_nested([{"xs": [1.0]}], arrow_type) is None  # a required field missing
    assert encode_nested([{"n": 1, "xs": ["a"]}], arrow_type) is None
    assert encode_nested(["text"], arrow_type) is None


def test_nested_types_merge_only_with_themselves_and_null() -> None:
    one = ColumnType.nested(_struct(pa.field("a", pa.string())))
    other = ColumnType.nested(_struct(pa.field("b", pa.string())))
    null = ColumnType.of(ColumnKind.NULL)
    assert merge_types(one, one) == one
    assert merge_types(null, one) == one
    assert merge_types(one, null) == one
    assert merge_types(one, other) == ColumnType.of(ColumnKind.JSON)
    assert merge_types(one, ColumnType.of(ColumnKind.JSON)) == ColumnType.of(ColumnKind.JSON)


def test_pruning_drops_the_nulls_that_stand_for_absent_optional_keys() -> None:
    schema = Person.model_json_schema()
    stored = {
        "name": "Ada",
        "age": None,  # absent: the model's default (0) applies
        "tags": None,
        "address": {"city": "Paris", "zip_code": None},  # Optional: None is a value
    }
    assert prune_absent(stored, schema) == {
        "name": "Ada",
        "address": {"city": "Paris", "zip_code": None},
    }
    assert Person.model_validate(prune_absent(stored, schema)) == Person(
        name="Ada", address=Address(city="Paris")
    )
    assert prune_absent(None, schema) is None
