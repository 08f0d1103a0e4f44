"""``skip_when`` for every column type: a wrapper that writes ``skip_value`` instead of generating.

A row whose skip expression is truthy gets ``skip_value`` in every produced column and the wrapped
generator is not called for it. Batch (and from-scratch) generators see only the kept rows, whose
results are merged back in order; a wrapped from-scratch root runs as a batch, since it reads rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from sluiceway.columns.base import ColumnGenerator, GenerationContext, GenerationStrategy
from sluiceway.columns.templates import CompiledExpression
from sluiceway.errors import NonRetryableGenerationError
from sluiceway.scheduling.metadata import SchedulingMetadata


class SkipWhenGenerator(ColumnGenerator):
    """Wraps ``inner``; same name, outputs, dependencies, aliases and scheduling metadata.

    Raises ``NonRetryableGenerationError`` when the skip expression cannot be evaluated for a row
    (for a batch, that fails the whole batch, as any batch error does).
    """

    def __init__(
        self, inner: ColumnGenerator, *, condition: CompiledExpression, skip_value: Any
    ) -> None:
        self.inner = inner
        self.condition = condition
        self.skip_value = skip_value
        self.name = inner.name
        self.output_columns = inner.output_columns
        self.dependencies = inner.dependencies
        self.model_aliases = inner.model_aliases
        self.strategy = (
            GenerationStrategy.BATCH
            if inner.strategy is GenerationStrategy.FROM_SCRATCH
            else inner.strategy
        )

    def get_scheduling_metadata(self) -> SchedulingMetadata | None:
        return self.inner.get_scheduling_metadata()

    def close(self) -> None:
        self.inner.close()

    def should_skip(self, row: Mapping[str, Any]) -> bool:
        value = self.condition.evaluate(row)
        try:
            return bool(value)
        except Exception as exc:
            raise NonRetryableGenerationError(
                f"column {self.name!r}: skip_when {self.condition.source!r} gave a "
                f"{type(value).__name__} that has no truth value ({exc}); make it a comparison"
            ) from exc

    def skipped(self) -> dict[str, Any]:
        """The values a skipped row gets."""
        return dict.fromkeys(self.output_columns, self.skip_value)

    async def generate_cell(
        self, row: Mapping[str, Any], ctx: GenerationContext
    ) -> Mapping[str, Any]:
        if self.should_skip(row):
            return self.skipped()
        return await self.inner.generate_cell(row, ctx)

    async def generate_batch(
        self, rows: Sequence[Mapping[str, Any]], ctx: GenerationContext
    ) -> Sequence[Mapping[str, Any]]:
        kept = [i for i, row in enumerate(rows) if not self.should_skip(row)]
        results: list[Mapping[str, Any]] = [self.skipped() for _ in rows]
        if not kept:
            return results
        kept_ctx = dataclasses.replace(ctx, row_indices=[ctx.row_indices[i] for i in kept])
        if self.inner.strategy is GenerationStrategy.FROM_SCRATCH:
            produced = await self.inner.generate_from_scratch(kept_ctx)
        else:
            produced = await self.inner.generate_batch([rows[i] for i in kept], kept_ctx)
        if len(produced) != len(kept):
            raise NonRetryableGenerationError(
                f"column {self.name!r}: the generator returned {len(produced)} results for the "
                f"{len(kept)} rows not skipped; return exactly one result per input row"
            )
        for i, values in zip(kept, produced, strict=True):
            results[i] = values
        return results
