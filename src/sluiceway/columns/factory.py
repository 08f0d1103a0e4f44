"""Builds the run's column generators from a validated config, in topological order.

Here, once per run: model aliases are resolved to endpoints and effective caps, every template and
``skip_when`` expression is compiled in one sandboxed environment, custom callables are imported,
and columns with ``skip_when`` are wrapped in :class:`SkipWhenGenerator`.
"""

from __future__ import annotations

from collections.abc import Mapping

from sluiceway.columns.base import ColumnGenerator, GenerationStrategy
from sluiceway.columns.custom import CustomColumnGenerator, custom_scheduling_metadata
from sluiceway.columns.endpoints import ModelEndpoint, resolve_model_endpoints
from sluiceway.columns.expression import ExpressionColumnGenerator, ExpressionDtype
from sluiceway.columns.llm import (
    EmbeddingColumnGenerator,
    LLMJudgeColumnGenerator,
    LLMStructuredColumnGenerator,
    LLMTextColumnGenerator,
)
from sluiceway.columns.samplers import SamplerColumnGenerator
from sluiceway.columns.skipping import SkipWhenGenerator
from sluiceway.columns.templates import CompiledTemplate, TemplateEnvironment
from sluiceway.config.graph import ColumnGraph
from sluiceway.config.models import (
    ColumnBase,
    CustomColumnConfig,
    DatasetConfig,
    EmbeddingColumnConfig,
    ExpressionColumnConfig,
    LLMJudgeColumnConfig,
    LLMStructuredColumnConfig,
    LLMTextColumnConfig,
    SamplerColumnConfig,
)
from sluiceway.errors import ConfigError, ConfigIssue

_CUSTOM_STRATEGIES = {"cell": GenerationStrategy.CELL, "batch": GenerationStrategy.BATCH}


def build_generators(
    config: DatasetConfig,
    graph: ColumnGraph,
    *,
    templates: TemplateEnvironment | None = None,
) -> list[ColumnGenerator]:
    """One generator per column, in ``graph.topological_order()``.

    ``templates`` is the run's environment (a new one when omitted). Raises ``ConfigError`` for a
    template that does not compile, a custom function that cannot be imported or an unknown Faker
    locale.
    """
    environment = templates if templates is not None else TemplateEnvironment()
    builder = _Builder(
        graph=graph, templates=environment, endpoints=resolve_model_endpoints(config.models)
    )
    columns = {column.name: column for column in config.columns}
    return [builder.build(columns[name]) for name in graph.topological_order()]


class _Builder:
    def __init__(
        self,
        *,
        graph: ColumnGraph,
        templates: TemplateEnvironment,
        endpoints: Mapping[str, ModelEndpoint],
    ) -> None:
        self._graph = graph
        self._templates = templates
        self._endpoints = endpoints

    def build(self, column: ColumnBase) -> ColumnGenerator:
        generator = self._generator(column)
        if column.skip_when is None:
            return generator
        condition = self._templates.compile_expression(
            column.skip_when, column=column.name, field="skip_when"
        )
        return SkipWhenGenerator(generator, condition=condition, skip_value=column.skip_value)

    def _generator(self, column: ColumnBase) -> ColumnGenerator:
        deps = self._graph.dependencies(column.name)
        name = column.name
        if isinstance(column, SamplerColumnConfig):
            return SamplerColumnGenerator(name=name, sampler=column.sampler, dependencies=deps)
        if isinstance(column, ExpressionColumnConfig):
            return ExpressionColumnGenerator(
                name=name,
                template=self._template(column, "template"),
                dtype=ExpressionDtype(column.dtype),
                dependencies=deps,
            )
        if isinstance(column, LLMTextColumnConfig):
            return LLMTextColumnGenerator(
                name=name,
                endpoint=self._endpoint(column, column.model),
                prompt=self._template(column, "prompt"),
                system_prompt=self._optional_template(column, "system_prompt"),
                parameters=column.parameters,
                reasoning_column=column.reasoning_column,
                dependencies=deps,
            )
        if isinstance(column, LLMStructuredColumnConfig):
            return LLMStructuredColumnGenerator(
                name=name,
                endpoint=self._endpoint(column, column.model),
                prompt=self._template(column, "prompt"),
                system_prompt=self._optional_template(column, "system_prompt"),
                schema=column.output_schema,
                max_reasks=column.max_reasks,
                parameters=column.parameters,
                dependencies=deps,
            )
        if isinstance(column, LLMJudgeColumnConfig):
            return LLMJudgeColumnGenerator(
                name=name,
                endpoint=self._endpoint(column, column.model),
                prompt=self._template(column, "prompt"),
                system_prompt=self._optional_template(column, "system_prompt"),
                rubrics=column.rubrics,
                schema=column.score_schema(),
                max_reasks=column.max_reasks,
                parameters=column.parameters,
                dependencies=deps,
            )
        if isinstance(column, EmbeddingColumnConfig):
            return EmbeddingColumnGenerator(
                name=name,
                endpoint=self._endpoint(column, column.model),
                input_template=self._template(column, "input"),
                dependencies=deps,
            )
        if isinstance(column, CustomColumnConfig):
            endpoints = [self._endpoint(column, alias) for alias in column.models]
            return CustomColumnGenerator(
                name=name,
                function=column.resolve_function(),
                strategy=_CUSTOM_STRATEGIES[column.strategy],
                output_columns=column.produced_columns(),
                dependencies=deps,
                model_aliases=tuple(column.models),
                scheduling=custom_scheduling_metadata(
                    column=name, scheduling=column.scheduling, endpoints=endpoints
                ),
                max_threads=column.max_threads,
                timeout_seconds=column.timeout_seconds,
            )
        raise ConfigError(
            [
                ConfigIssue(
                    path=f"columns ({name})",
                    message=f"column type {type(column).__name__} has no generator",
                    hint="use a built-in column type or a custom column",
                )
            ]
        )

    def _template(self, column: ColumnBase, field: str) -> CompiledTemplate:
        source = column.template_fields()[field]
        return self._templates.compile_template(source, column=column.name, field=field)

    def _optional_template(self, column: ColumnBase, field: str) -> CompiledTemplate | None:
        if field not in column.template_fields():
            return None
        return self._template(column, field)

    def _endpoint(self, column: ColumnBase, alias: str) -> ModelEndpoint:
        endpoint = self._endpoints.get(alias)
        if endpoint is None:
            raise ConfigError(
                [
                    ConfigIssue(
                        path=f"columns ({column.name})",
                        message=f"unknown model alias {alias!r}",
                        hint=f"known aliases: {', '.join(self._endpoints) or 'none defined'}",
                    )
                ]
            )
        return endpoint
