"""The column-generator contract used by the engine and by plugin authors.

A generator produces one or more output columns with one of three strategies:

- ``cell``: one row at a time (``generate_cell``), ready when that row's dependencies are done;
- ``batch``: a whole row group at once (``generate_batch``), ready when every non-dropped row of
  the group has its dependencies;
- ``from_scratch``: a root that fills a row group without inputs (``generate_from_scratch``).

Rows are plain dicts from column name to value. Generators must treat them as read-only and return
new values as ``{output_column: value}`` mappings.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sluiceway.scheduling.metadata import SchedulingMetadata
from sluiceway.values import fast_init


class GenerationStrategy(enum.Enum):
    CELL = "cell"
    BATCH = "batch"
    FROM_SCRATCH = "from_scratch"


class ModelCalls(Protocol):
    """Model calls available to generators, by model alias. Each call is one or more attempts,
    and every attempt takes its own request lease. Async methods run on the engine's loop; the
    ``*_sync`` variants are for code running in a worker thread (sync custom columns)."""

    async def generate_text(
        self,
        alias: str,
        prompt: str,
        *,
        system_prompt: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> str: ...

    async def generate_text_with_reasoning(
        self,
        alias: str,
        prompt: str,
        *,
        system_prompt: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> tuple[str, str | None]:
        """``(text, reasoning)``; reasoning is ``None`` when the model returned no trace."""
        ...

    async def generate_structured(
        self,
        alias: str,
        prompt: str,
        schema: Mapping[str, Any],
        *,
        system_prompt: str | None = None,
        max_reasks: int = 2,
        generation_kind: str = "structured",
        parameters: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]: ...

    async def embed(self, alias: str, texts: Sequence[str]) -> list[list[float]]: ...

    def generate_text_sync(
        self,
        alias: str,
        prompt: str,
        *,
        system_prompt: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> str: ...

    def generate_structured_sync(
        self,
        alias: str,
        prompt: str,
        schema: Mapping[str, Any],
        *,
        system_prompt: str | None = None,
        max_reasks: int = 2,
        parameters: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]: ...

    def embed_sync(self, alias: str, texts: Sequence[str]) -> list[list[float]]: ...


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationContext:
    """What a generator may use besides its input rows.

    ``row_indices`` are global record indices (stable across ``buffer_size`` settings), in the same
    order as the rows given to the generator. Derive any randomness from ``seed`` and these indices.
    """

    seed: int
    column: str
    row_group: int
    row_indices: Sequence[int]
    models: ModelCalls


class ColumnGenerator(abc.ABC):
    """Base class of every column generator.

    Subclasses set ``name``, ``output_columns``, ``dependencies`` (column names read),
    ``strategy`` and ``model_aliases`` (aliases the generator may call), and implement the method
    of their strategy. ``get_scheduling_metadata`` is optional: ``None`` means the local default.
    ``close`` releases what the generator holds for a run (the default holds nothing).

    Each attempt starts from the run's context: the scheduler never lets a context variable one
    attempt set, and did not reset, be seen by another attempt.
    """

    name: str
    output_columns: tuple[str, ...]
    dependencies: tuple[str, ...] = ()
    strategy: GenerationStrategy = GenerationStrategy.CELL
    model_aliases: tuple[str, ...] = ()

    def get_scheduling_metadata(self) -> SchedulingMetadata | None:
        return None

    def close(self) -> None:  # noqa: B027 - an optional hook: most generators hold nothing
        """Release what the generator holds for a run (threads, say). The engine calls it once
        the run has ended, whatever its outcome, when none of its tasks runs any more; it must
        not wait for work that may never end."""

    async def generate_cell(
        self, row: Mapping[str, Any], ctx: GenerationContext
    ) -> Mapping[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} does not implement the cell strategy")

    async def generate_batch(
        self, rows: Sequence[Mapping[str, Any]], ctx: GenerationContext
    ) -> Sequence[Mapping[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} does not implement the batch strategy")

    async def generate_from_scratch(self, ctx: GenerationContext) -> Sequence[Mapping[str, Any]]:
        """Return one mapping per index in ``ctx.row_indices``."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement the from_scratch strategy"
        )
