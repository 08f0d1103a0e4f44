"""Expression columns: render and cast to the configured dtype; a failed cast drops the row."""

from __future__ import annotations

from typing import Any

import pytest

from sluiceway.columns.base import GenerationContext, GenerationStrategy
from sluiceway.columns.expression import ExpressionColumnGenerator, ExpressionDtype
from sluiceway.columns.templates import TemplateEnvironment
from sluiceway.errors import NonRetryableGenerationError
from sluiceway.testing import FakeModelCalls


def generator(template: str, dtype: str) -> ExpressionColumnGenerator:
    compiled = TemplateEnvironment().compile_template(template, column="x", field="template")
    return ExpressionColumnGenerator(
        name="x", template=compiled, dtype=ExpressionDtype(dtype), dependencies=("v",)
    )


def ctx() -> GenerationContext:
    return GenerationContext(
        seed=0, column="x", row_group=0, row_indices=(0,), models=FakeModelCalls()
    )


@pytest.mark.parametrize(
    ("dtype", "value", "expected"),
    [
        ("str", " 3 ", " 3 "),
        ("int", "3", 3),
        ("int", " -12\n", -12),
        ("float", "2.5", 2.5),
        ("float", "1e3", 1000.0),
        ("bool", "TRUE", True),
        ("bool", "yes", True),
        ("bool", "1", True),
        ("bool", " False ", False),
        ("bool", "No", False),
        ("bool", "0", False),
    ],
)
async def test_rendered_text_is_cast_to_the_dtype(dtype: str, value: str, expected: Any) -> None:
    gen = generator("{{ v }}", dtype)
    result = await gen.generate_cell({"v": value}, ctx())
    assert result == {"x": expected}
    assert type(result["x"]) is type(expected)


async def test_a_failed_cast_names_column_value_and_dtype() -> None:
    gen = generator("{{ v }} items", "int")
    with pytest.raises(NonRetryableGenerationError) as info:
        await gen.generate_cell({"v": 4}, ctx())
    message = str(info.value)
    assert "'x'" in message and "'4 items'" in message and "int" in message
    assert isinstance(info.value.__cause__, ValueError)


async def test_bool_rejects_other_words() -> None:
    with pytest.raises(NonRetryableGenerationError, match="'maybe' is not a valid bool"):
        await generator("{{ v }}", "bool").generate_cell({"v": "maybe"}, ctx())


def test_expression_columns_are_local_cell_generators() -> None:
    gen = generator("{{ v }}", "str")
    assert gen.strategy is GenerationStrategy.CELL
    assert gen.output_columns == ("x",)
    assert gen.dependencies == ("v",)
    assert gen.model_aliases == ()
    assert gen.get_scheduling_metadata() is None
