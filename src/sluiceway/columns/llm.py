"""LLM columns: text, structured JSON, judge scores and embeddings, one model call per row.

Each renders its compiled prompt templates for the row and calls the model facade by alias. Its
scheduling metadata is the resolved endpoint: ``("model", provider, model_id, generation_kind)``
weighted by the endpoint's effective static cap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from sluiceway.columns.base import ColumnGenerator, GenerationContext, GenerationStrategy
from sluiceway.columns.endpoints import ModelEndpoint
from sluiceway.columns.templates import CompiledTemplate
from sluiceway.config.models import RubricConfig
from sluiceway.errors import NonRetryableGenerationError
from sluiceway.providers.base import GenerationKind
from sluiceway.scheduling.metadata import SchedulingMetadata


class ModelColumnGenerator(ColumnGenerator):
    """Shared shape of the model-calling columns (strategy ``cell``, one alias).

    ``generate_cell`` awaits the model call; cancellation propagates from there. Provider and
    generation errors pass through unchanged for the engine to classify.
    """

    strategy = GenerationStrategy.CELL
    generation_kind: GenerationKind

    def __init__(
        self,
        *,
        name: str,
        endpoint: ModelEndpoint,
        dependencies: Sequence[str] = (),
        output_columns: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self.output_columns = tuple(output_columns) if output_columns else (name,)
        self.dependencies = tuple(dependencies)
        self.endpoint = endpoint
        self.model_aliases = (endpoint.alias,)

    def get_scheduling_metadata(self) -> SchedulingMetadata:
        return SchedulingMetadata.model(
            provider=self.endpoint.provider,
            model_id=self.endpoint.model_id,
            generation_kind=self.generation_kind.value,
            weight=self.endpoint.effective_cap,
        )


class _PromptedColumnGenerator(ModelColumnGenerator):
    def __init__(
        self,
        *,
        name: str,
        endpoint: ModelEndpoint,
        prompt: CompiledTemplate,
        system_prompt: CompiledTemplate | None = None,
        dependencies: Sequence[str] = (),
        output_columns: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            name=name, endpoint=endpoint, dependencies=dependencies, output_columns=output_columns
        )
        self.prompt = prompt
        self.system_prompt = system_prompt

    def _render(self, row: Mapping[str, Any]) -> tuple[str, str | None]:
        system = None if self.system_prompt is None else self.system_prompt.render(row)
        return self.prompt.render(row), system


class LLMTextColumnGenerator(_PromptedColumnGenerator):
    """Free text. With a ``reasoning_column`` that column holds the model's reasoning trace
    (``None`` when the provider returned none)."""

    generation_kind = GenerationKind.TEXT

    def __init__(
        self,
        *,
        name: str,
        endpoint: ModelEndpoint,
        prompt: CompiledTemplate,
        system_prompt: CompiledTemplate | None = None,
        parameters: Mapping[str, Any] | None = None,
        reasoning_column: str | None = None,
        dependencies: Sequence[str] = (),
    ) -> None:
        outputs = (name,) if reasoning_column is None else (name, reasoning_column)
        super().__init__(
            name=name,
            endpoint=endpoint,
            prompt=prompt,
            system_prompt=system_prompt,
            dependencies=dependencies,
            output_columns=outputs,
        )
        self.parameters: Mapping[str, Any] | None = (
            MappingProxyType(dict(parameters)) if parameters else None
        )
        self.reasoning_column = reasoning_column

    async def generate_cell(
        self, row: Mapping[str, Any], ctx: GenerationContext
    ) -> Mapping[str, Any]:
        prompt, system = self._render(row)
        if self.reasoning_column is None:
            text = await ctx.models.generate_text(
                self.endpoint.alias, prompt, system_prompt=system, parameters=self.parameters
            )
            return {self.name: text}
        text, reasoning = await ctx.models.generate_text_with_reasoning(
            self.endpoint.alias, prompt, system_prompt=system, parameters=self.parameters
        )
        return {self.name: text, self.reasoning_column: reasoning}


class LLMStructuredColumnGenerator(_PromptedColumnGenerator):
    """A JSON object validated against ``schema`` by the facade, with up to ``max_reasks``
    re-asks (each a new request)."""

    generation_kind = GenerationKind.STRUCTURED

    def __init__(
        self,
        *,
        name: str,
        endpoint: ModelEndpoint,
        prompt: CompiledTemplate,
        schema: Mapping[str, Any],
        system_prompt: CompiledTemplate | None = None,
        max_reasks: int = 2,
        parameters: Mapping[str, Any] | None = None,
        dependencies: Sequence[str] = (),
    ) -> None:
        super().__init__(
            name=name,
            endpoint=endpoint,
            prompt=prompt,
            system_prompt=system_prompt,
            dependencies=dependencies,
        )
        # One schema object for the whole run, so the facade's validator cache hits by identity.
        self.schema = schema
        self.max_reasks = max_reasks
        self.parameters: Mapping[str, Any] | None = (
            MappingProxyType(dict(parameters)) if parameters else None
        )

    async def generate_cell(
        self, row: Mapping[str, Any], ctx: GenerationContext
    ) -> Mapping[str, Any]:
        prompt, system = self._render(row)
        value = await ctx.models.generate_structured(
            self.endpoint.alias,
            prompt,
            self.schema,
            system_prompt=system,
            max_reasks=self.max_reasks,
            generation_kind=self.generation_kind.value,
            parameters=self.parameters,
        )
        return {self.name: value}


class LLMJudgeColumnGenerator(_PromptedColumnGenerator):
    """Scores per rubric: ``{rubric: {"score": int, "reasoning": str}}``.

    The facade validates the answer against the rubric schema; the score ranges are checked again
    here so any ``ModelCalls`` implementation yields valid scores or a dropped row.
    """

    generation_kind = GenerationKind.JUDGE

    def __init__(
        self,
        *,
        name: str,
        endpoint: ModelEndpoint,
        prompt: CompiledTemplate,
        rubrics: Sequence[RubricConfig],
        schema: Mapping[str, Any],
        system_prompt: CompiledTemplate | None = None,
        max_reasks: int = 2,
        parameters: Mapping[str, Any] | None = None,
        dependencies: Sequence[str] = (),
    ) -> None:
        super().__init__(
            name=name,
            endpoint=endpoint,
            prompt=prompt,
            system_prompt=system_prompt,
            dependencies=dependencies,
        )
        self.rubrics = tuple(rubrics)
        self.schema = schema
        self.max_reasks = max_reasks
        self.parameters: Mapping[str, Any] | None = (
            MappingProxyType(dict(parameters)) if parameters else None
        )

    async def generate_cell(
        self, row: Mapping[str, Any], ctx: GenerationContext
    ) -> Mapping[str, Any]:
        prompt, system = self._render(row)
        scores = await ctx.models.generate_structured(
            self.endpoint.alias,
            prompt,
            self.schema,
            system_prompt=system,
            max_reasks=self.max_reasks,
            generation_kind=self.generation_kind.value,
            parameters=self.parameters,
        )
        self._check_scores(scores)
        return {self.name: scores}

    def _check_scores(self, scores: Mapping[str, Any]) -> None:
        for rubric in self.rubrics:
            entry = scores.get(rubric.name)
            score = entry.get("score") if isinstance(entry, Mapping) else None
            if (
                not isinstance(score, int)
                or isinstance(score, bool)
                or not rubric.min_score <= score <= rubric.max_score
            ):
                raise NonRetryableGenerationError(
                    f"column {self.name!r}: the judge answer for rubric {rubric.name!r} has "
                    f"score {score!r}, expected an integer in "
                    f"[{rubric.min_score}, {rubric.max_score}]; the model facade should have "
                    "re-asked — check the ModelCalls implementation"
                )


class EmbeddingColumnGenerator(ModelColumnGenerator):
    """The embedding vector of the rendered ``input`` text."""

    generation_kind = GenerationKind.EMBEDDING

    def __init__(
        self,
        *,
        name: str,
        endpoint: ModelEndpoint,
        input_template: CompiledTemplate,
        dependencies: Sequence[str] = (),
    ) -> None:
        super().__init__(name=name, endpoint=endpoint, dependencies=dependencies)
        self.input_template = input_template

    async def generate_cell(
        self, row: Mapping[str, Any], ctx: GenerationContext
    ) -> Mapping[str, Any]:
        text = self.input_template.render(row)
        vectors = await ctx.models.embed(self.endpoint.alias, [text])
        if len(vectors) != 1:
            raise NonRetryableGenerationError(
                f"column {self.name!r}: model alias {self.endpoint.alias!r} returned "
                f"{len(vectors)} vectors for one input; the provider answer is incomplete"
            )
        return {self.name: vectors[0]}
