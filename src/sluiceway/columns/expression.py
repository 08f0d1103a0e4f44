"""Expression columns: a sandboxed Jinja template over other columns, cast to the column's dtype.

Casts: ``str`` as rendered; ``int`` and ``float`` parse the stripped text; ``bool`` accepts
true/false/1/0/yes/no in any case. A failed cast drops the row with a message naming the value.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sluiceway.columns.base import ColumnGenerator, GenerationContext, GenerationStrategy
from sluiceway.columns.templates import CompiledTemplate
from sluiceway.errors import NonRetryableGenerationError

_TRUE_WORDS = frozenset({"true", "1", "yes"})
_FALSE_WORDS = frozenset({"false", "0", "no"})


class ExpressionDtype(enum.Enum):
    STR = "str"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"


def _to_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError(f"not one of {sorted(_TRUE_WORDS | _FALSE_WORDS)}")


_CASTS: Mapping[ExpressionDtype, Callable[[str], Any]] = {
    ExpressionDtype.STR: str,
    ExpressionDtype.INT: lambda text: int(text.strip()),
    ExpressionDtype.FLOAT: lambda text: float(text.strip()),
    ExpressionDtype.BOOL: _to_bool,
}


class ExpressionColumnGenerator(ColumnGenerator):
    """Renders its template per row (strategy ``cell``, local resources); never blocks.

    Raises ``NonRetryableGenerationError`` when the template fails or the cast does.
    """

    strategy = GenerationStrategy.CELL

    def __init__(
        self,
        *,
        name: str,
        template: CompiledTemplate,
        dtype: ExpressionDtype,
        dependencies: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.output_columns = (name,)
        self.dependencies = tuple(dependencies)
        self.template = template
        self.dtype = dtype
        self._cast = _CASTS[dtype]

    async def generate_cell(
        self, row: Mapping[str, Any], ctx: GenerationContext
    ) -> Mapping[str, Any]:
        return {self.name: self.value(row)}

    def value(self, row: Mapping[str, Any]) -> Any:
        """The rendered and cast value for ``row``."""
        text = self.template.render(row)
        try:
            return self._cast(text)
        except ValueError as exc:
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise NonRetryableGenerationError(
                f"column {self.name!r}: the rendered value {shown!r} is not a valid "
                f"{self.dtype.value} ({exc}); change the template or set `dtype: str`"
            ) from exc
