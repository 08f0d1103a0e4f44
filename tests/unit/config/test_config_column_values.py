"""What each output column declares it holds, and ``skip_value`` checked against it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from sluiceway.config import parse_config
from sluiceway.config.column_values import (
    DeclaredValue,
    ValueKind,
    declared_values,
    output_values,
)
from sluiceway.errors import ConfigError, ConfigIssue

JUDGE = {
    "name": "quality",
    "type": "llm_judge",
    "model": "writer",
    "prompt": "Rate {{ topic }}",
    "rubrics": [{"name": "clarity", "description": "Is it clear?"}],
}
FACTS = {
    "name": "facts",
    "type": "llm_structured",
    "model": "writer",
    "prompt": "Facts about {{ topic }}",
    "output_schema": {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
    },
}


def _config(*columns: dict[str, Any]) -> dict[str, Any]:
    return {
        "providers": [{"name": "local", "type": "simulated"}],
        "models": [{"alias": "writer", "provider": "local", "model": "sim-chat"}],
        "columns": [
            {
                "name": "topic",
                "type": "sampler",
                "sampler": {"kind": "category", "values": ["tea", "coffee"]},
            },
            *columns,
        ],
        "run": {"num_records": 4},
    }


def _issues(*columns: dict[str, Any]) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(*columns))
    return caught.value.issues


def test_a_number_skip_value_on_a_text_expression_is_a_config_error_naming_the_column() -> None:
    (issue,) = _issues(
        {
            "name": "status",
            "type": "expression",
            "template": "ok",
            "skip_when": "topic == 'tea'",
            "skip_value": -1,
        }
    )
    assert issue.path == "columns[1] (status).skip_value"
    assert issue.message == "skip_value -1 does not fit column 'status', whose values are a string"
    assert issue.hint == 'quote it: `skip_value: "-1"`, or use null'


@pytest.mark.parametrize(
    ("column", "skip_value", "kind"),
    [
        ({"type": "expression", "template": "1", "dtype": "int"}, "none", "an integer"),
        ({"type": "expression", "template": "1", "dtype": "int"}, 1.5, "an integer"),
        ({"type": "expression", "template": "1", "dtype": "bool"}, 0, "true or false"),
        (
            {"type": "sampler", "sampler": {"kind": "uniform", "low": 0, "high": 1}},
            "n/a",
            "a number",
        ),
        (
            {
                "type": "sampler",
                "sampler": {"kind": "datetime", "start": "2024-01-01", "end": "2024-02-01"},
            },
            "2024-01-05",
            "a datetime without a time zone",
        ),
        ({"type": "llm_text", "model": "writer", "prompt": "p"}, 0, "a string"),
        ({"type": "embedding", "model": "writer", "input": "p"}, ["a"], "a list of numbers"),
        (
            {key: value for key, value in FACTS.items() if key != "name"},
            {"n": "three"},
            "a value valid for the column's JSON schema",
        ),
        (
            {key: value for key, value in JUDGE.items() if key != "name"},
            {},
            "a value valid for the column's JSON schema",
        ),
    ],
)
def test_skip_values_that_do_not_fit(column: dict[str, Any], skip_value: Any, kind: str) -> None:
    (issue,) = _issues({"name": "c", **column, "skip_value": skip_value})
    assert issue.path == "columns[1] (c).skip_value"
    assert issue.message.endswith(f"whose values are {kind}")


def test_the_side_column_of_a_text_column_is_checked_too() -> None:
    (issue,) = _issues(
        {
            "name": "text",
            "type": "llm_text",
            "model": "writer",
            "prompt": "p",
            "reasoning_column": "why",
            "skip_value": 3,
        }
    )
    assert "column 'text'" in issue.message


def test_skip_values_that_fit_are_accepted() -> None:
    config = parse_config(
        _config(
            {"name": "a", "type": "expression", "template": "x", "skip_value": "-1"},
            {
                "name": "b",
                "type": "expression",
                "template": "1",
                "dtype": "float",
                "skip_value": -1,
            },
            {"name": "c", "type": "expression", "template": "1", "dtype": "int", "skip_value": -1},
            {"name": "d", "type": "embedding", "model": "writer", "input": "x", "skip_value": []},
            {**FACTS, "skip_value": {"n": 0}},
            {**JUDGE, "skip_value": None},
            {"name": "e", "type": "custom", "function": "pkg.mod:fn", "skip_value": {"any": 1}},
            {
                "name": "f",
                "type": "sampler",
                "sampler": {"kind": "category", "values": [1, "a"]},
                "skip_value": [1],
            },
        )
    )
    assert [column.skip_value for column in config.columns][1:4] == ["-1", -1, -1]


def test_declared_values_follow_each_column_type() -> None:
    config = parse_config(
        _config(
            {"name": "n", "type": "sampler", "sampler": {"kind": "integer", "low": 0, "high": 3}},
            {
                "name": "big",
                "type": "sampler",
                "sampler": {"kind": "integer", "low": 0, "high": 2**70},
            },
            {
                "name": "at",
                "type": "sampler",
                "sampler": {
                    "kind": "datetime",
                    "start": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
                    "end": dt.datetime(2024, 2, 1, tzinfo=dt.UTC),
                },
            },
            {"name": "who", "type": "sampler", "sampler": {"kind": "person"}},
            {
                "name": "text",
                "type": "llm_text",
                "model": "writer",
                "prompt": "p",
                "reasoning_column": "why",
            },
            FACTS,
            {**JUDGE, "drop": True},
            {"name": "fn", "type": "custom", "function": "pkg.mod:fn", "output_columns": ["u"]},
        )
    )
    values = output_values(config.columns)
    kinds = {name: value.kind for name, value in values.items()}
    assert kinds == {
        "topic": ValueKind.STRING,
        "n": ValueKind.INTEGER,
        "big": ValueKind.ANY,  # beyond int64: each file's values decide
        "at": ValueKind.DATETIME_UTC,
        "who": ValueKind.STRING,
        "text": ValueKind.STRING,
        "why": ValueKind.STRING,
        "facts": ValueKind.JSON,
        "u": ValueKind.ANY,
    }
    assert values["facts"].schema == FACTS["output_schema"]
    judge = config.column("quality")
    assert declared_values(judge) == {
        "quality": DeclaredValue(kind=ValueKind.JSON, schema=judge.score_schema())  # type: ignore[attr-defined]
    }
