"""What each output column holds, as far as the config says, and whether ``skip_value`` fits it.

Every output column gets a ``DeclaredValue``: a kind (string, integer, number, boolean, naive or
aware datetime, numeric vector, a JSON value valid for a schema, or any) taken from its column's
type and settings. Storage gives each declared column one Parquet type in every file; a
``skip_value`` that does not fit the declared value would break that, so it is a config error.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema.exceptions
import jsonschema.validators

from sluiceway.config.graph import column_path
from sluiceway.config.models import (
    BooleanSampler,
    CategorySampler,
    ColumnBase,
    DatetimeSampler,
    EmbeddingColumnConfig,
    ExpressionColumnConfig,
    GaussianSampler,
    IntegerSampler,
    LLMJudgeColumnConfig,
    LLMStructuredColumnConfig,
    LLMTextColumnConfig,
    PersonSampler,
    SamplerColumnConfig,
    UniformSampler,
    UuidSampler,
)
from sluiceway.errors import ConfigIssue

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class ValueKind(enum.StrEnum):
    """The kind of value an output column holds (``None`` fits every kind)."""

    STRING = "string"
    INTEGER = "integer"  # fits int64
    NUMBER = "number"  # int or float, stored as float
    BOOLEAN = "boolean"
    DATETIME = "datetime"  # naive
    DATETIME_UTC = "datetime_utc"  # aware, stored in UTC
    VECTOR = "vector"  # a list of numbers (embeddings)
    JSON = "json"  # a JSON value valid for ``DeclaredValue.schema``
    ANY = "any"  # not declared: custom columns, mixed category values


_DESCRIPTIONS: Mapping[ValueKind, str] = {
    ValueKind.STRING: "a string",
    ValueKind.INTEGER: "an integer",
    ValueKind.NUMBER: "a number",
    ValueKind.BOOLEAN: "true or false",
    ValueKind.DATETIME: "a datetime without a time zone",
    ValueKind.DATETIME_UTC: "a datetime with a time zone",
    ValueKind.VECTOR: "a list of numbers",
    ValueKind.JSON: "a value valid for the column's JSON schema",
    ValueKind.ANY: "any value",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DeclaredValue:
    """The values of one output column: ``kind``, and for ``JSON`` the schema they are valid for."""

    kind: ValueKind
    schema: Mapping[str, Any] | None = None

    def describe(self) -> str:
        """``a string``, ``an integer``, ...: what a value of this column is, for messages."""
        return _DESCRIPTIONS[self.kind]


_ANY = DeclaredValue(kind=ValueKind.ANY)
_STRING = DeclaredValue(kind=ValueKind.STRING)
_EXPRESSION_KINDS: Mapping[str, ValueKind] = {
    "str": ValueKind.STRING,
    "int": ValueKind.INTEGER,
    "float": ValueKind.NUMBER,
    "bool": ValueKind.BOOLEAN,
}


def declared_values(column: ColumnBase) -> dict[str, DeclaredValue]:
    """The declared value of every output column ``column`` produces (main column first)."""
    if isinstance(column, LLMTextColumnConfig):
        return dict.fromkeys(column.produced_columns(), _STRING)
    main: DeclaredValue
    if isinstance(column, SamplerColumnConfig):
        main = DeclaredValue(kind=_sampler_kind(column.sampler))
    elif isinstance(column, ExpressionColumnConfig):
        main = DeclaredValue(kind=_EXPRESSION_KINDS[column.dtype])
    elif isinstance(column, LLMStructuredColumnConfig):
        main = DeclaredValue(kind=ValueKind.JSON, schema=column.output_schema)
    elif isinstance(column, LLMJudgeColumnConfig):
        main = DeclaredValue(kind=ValueKind.JSON, schema=column.score_schema())
    elif isinstance(column, EmbeddingColumnConfig):
        main = DeclaredValue(kind=ValueKind.VECTOR)
    else:
        main = _ANY
    return dict.fromkeys(column.produced_columns(), main)


def output_values(columns: Sequence[ColumnBase]) -> dict[str, DeclaredValue]:
    """The declared value of every column written to the dataset (dropped columns left out)."""
    values: dict[str, DeclaredValue] = {}
    for column in columns:
        if not column.drop:
            values.update(declared_values(column))
    return values


def _sampler_kind(sampler: object) -> ValueKind:
    if isinstance(sampler, UuidSampler | PersonSampler):
        return ValueKind.STRING
    if isinstance(sampler, UniformSampler | GaussianSampler):
        return ValueKind.NUMBER
    if isinstance(sampler, BooleanSampler):
        return ValueKind.BOOLEAN
    if isinstance(sampler, IntegerSampler):
        fits = sampler.low >= _INT64_MIN and sampler.high <= _INT64_MAX
        return ValueKind.INTEGER if fits else ValueKind.ANY
    if isinstance(sampler, DatetimeSampler):
        return ValueKind.DATETIME if sampler.start.tzinfo is None else ValueKind.DATETIME_UTC
    if isinstance(sampler, CategorySampler):
        return _common_kind(sampler.values)
    return ValueKind.ANY


def _common_kind(values: Sequence[Any]) -> ValueKind:
    """The kind every category value has, or ``ANY``."""
    if all(isinstance(value, str) for value in values):
        return ValueKind.STRING
    if all(isinstance(value, bool) for value in values):
        return ValueKind.BOOLEAN
    if all(_is_integer(value) for value in values):
        return ValueKind.INTEGER
    if all(_is_number(value) for value in values):
        return ValueKind.NUMBER
    return ValueKind.ANY


def _is_integer(value: object) -> bool:
    return (
        isinstance(value, int) and not isinstance(value, bool) and _INT64_MIN <= value <= _INT64_MAX
    )


def _is_number(value: object) -> bool:
    return _is_integer(value) or isinstance(value, float)


def fits(value: object, declared: DeclaredValue) -> bool:
    """True when ``value`` can be stored in a column of ``declared`` values (None always can)."""
    if value is None:
        return True
    kind = declared.kind
    if kind is ValueKind.STRING:
        return isinstance(value, str)
    if kind is ValueKind.INTEGER:
        return _is_integer(value)
    if kind is ValueKind.NUMBER:
        return _is_number(value)
    if kind is ValueKind.BOOLEAN:
        return isinstance(value, bool)
    if kind is ValueKind.DATETIME:
        return isinstance(value, dt.datetime) and value.utcoffset() is None
    if kind is ValueKind.DATETIME_UTC:
        return isinstance(value, dt.datetime) and value.utcoffset() is not None
    if kind is ValueKind.VECTOR:
        return isinstance(value, list) and all(_is_number(item) for item in value)
    if kind is ValueKind.JSON and declared.schema is not None:
        return _valid_for(value, declared.schema)
    return True


def _valid_for(value: Any, schema: Mapping[str, Any]) -> bool:
    validator = jsonschema.validators.validator_for(schema)
    try:
        validator(schema).validate(value)
    except jsonschema.exceptions.ValidationError:
        return False
    except jsonschema.exceptions.SchemaError:
        return True  # an invalid schema is reported on its own
    return True


def skip_value_issue(index: int, column: ColumnBase) -> ConfigIssue | None:
    """An issue when the column's ``skip_value`` does not fit one of its output columns."""
    value = column.skip_value
    if value is None:
        return None
    for output, declared in declared_values(column).items():
        if fits(value, declared):
            continue
        return ConfigIssue(
            path=f"{column_path(index, column.name)}.skip_value",
            message=f"skip_value {value!r} does not fit column {output!r}, whose values are "
            f"{declared.describe()}",
            hint=_skip_value_hint(value, declared),
        )
    return None


def _skip_value_hint(value: object, declared: DeclaredValue) -> str:
    if declared.kind is ValueKind.STRING and isinstance(value, int | float | bool):
        return f'quote it: `skip_value: "{value}"`, or use null'
    return f"use {declared.describe()} or null (the default)"
