"""Semantic checks across a config: names, references between sections, schemas and the graph.

They run on whatever parts of a config parsed, so one pass reports structural and semantic
problems together; names of parts that failed to parse are known and never reported as unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jsonschema.exceptions
import jsonschema.validators

from sluiceway.config.column_values import skip_value_issue
from sluiceway.config.graph import analyze_columns, column_path
from sluiceway.config.models import (
    ColumnBase,
    CustomColumnConfig,
    EmbeddingColumnConfig,
    LLMStructuredColumnConfig,
    ModelConfig,
    ProviderConfig,
    close_match_hint,
)
from sluiceway.errors import ConfigIssue


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedParts:
    """The parts of a config that passed structural validation, with their config indices.

    ``*_complete`` is False when a whole section could not be read (then references into it are
    not checked); ``unparsed_*`` hold names of entries that failed, so they count as known.
    """

    providers: tuple[tuple[int, ProviderConfig], ...] = ()
    models: tuple[tuple[int, ModelConfig], ...] = ()
    columns: tuple[tuple[int, ColumnBase], ...] = ()
    providers_complete: bool = True
    models_complete: bool = True
    unparsed_provider_names: frozenset[str] = frozenset()
    unparsed_model_aliases: frozenset[str] = frozenset()
    unparsed_column_names: frozenset[str] = frozenset()


def semantic_issues(
    *,
    providers: Sequence[ProviderConfig],
    models: Sequence[ModelConfig],
    columns: Sequence[ColumnBase],
) -> list[ConfigIssue]:
    """Every semantic issue of a structurally valid config."""
    return partial_semantic_issues(
        ParsedParts(
            providers=tuple(enumerate(providers)),
            models=tuple(enumerate(models)),
            columns=tuple(enumerate(columns)),
        )
    )


def partial_semantic_issues(parts: ParsedParts) -> list[ConfigIssue]:
    """Every semantic issue among the parts that parsed."""
    issues: list[ConfigIssue] = []

    provider_names = _unique_names(
        issues, "providers", [(i, p.name) for i, p in parts.providers], "name", "provider"
    )
    model_aliases = _unique_names(
        issues, "models", [(i, m.alias) for i, m in parts.models], "alias", "model alias"
    )

    if parts.providers_complete:
        known = provider_names | parts.unparsed_provider_names
        for index, model in parts.models:
            if model.provider not in known:
                issues.append(
                    ConfigIssue(
                        path=f"models[{index}] ({model.alias}).provider",
                        message=f"unknown provider {model.provider!r}",
                        hint=_hint_or_define(model.provider, sorted(known), "providers"),
                    )
                )

    if parts.models_complete:
        known_aliases = model_aliases | parts.unparsed_model_aliases
        for index, column in parts.columns:
            here = column_path(index, column.name)
            is_custom = isinstance(column, CustomColumnConfig)
            for position, alias in enumerate(column.model_aliases()):
                if alias in known_aliases:
                    continue
                path = f"{here}.models[{position}]" if is_custom else f"{here}.model"
                issues.append(
                    ConfigIssue(
                        path=path,
                        message=f"unknown model alias {alias!r}",
                        hint=_hint_or_define(alias, sorted(known_aliases), "models"),
                    )
                )

    issues.extend(_embedding_endpoint_issues(parts))

    for index, column in parts.columns:
        if isinstance(column, LLMStructuredColumnConfig):
            issue = schema_issue(column.output_schema, f"{column_path(index, column.name)}")
            if issue is not None:
                issues.append(issue)
        skip_issue = skip_value_issue(index, column)
        if skip_issue is not None:
            issues.append(skip_issue)

    _, graph_issues = analyze_columns(parts.columns, unparsed_names=parts.unparsed_column_names)
    issues.extend(graph_issues)
    return issues


# Provider types whose API has no embeddings endpoint.
_PROVIDER_TYPES_WITHOUT_EMBEDDINGS = frozenset({"anthropic"})


def _embedding_endpoint_issues(parts: ParsedParts) -> list[ConfigIssue]:
    """An embedding column whose model is served by a provider type that cannot embed."""
    models = {model.alias: model for _, model in parts.models}
    provider_types = {provider.name: provider.type for _, provider in parts.providers}
    issues: list[ConfigIssue] = []
    for index, column in parts.columns:
        if not isinstance(column, EmbeddingColumnConfig):
            continue
        model = models.get(column.model)
        provider_type = None if model is None else provider_types.get(model.provider)
        if model is None or provider_type not in _PROVIDER_TYPES_WITHOUT_EMBEDDINGS:
            continue
        issues.append(
            ConfigIssue(
                path=f"{column_path(index, column.name)}.model",
                message=f"model alias {column.model!r} is served by provider "
                f"{model.provider!r} of type {provider_type!r}, which has no embeddings endpoint",
                hint="point the embedding column at a model of an 'openai' "
                "(OpenAI-compatible) or 'simulated' provider",
            )
        )
    return issues


def schema_issue(schema: dict[str, object], column_here: str) -> ConfigIssue | None:
    """An issue if ``schema`` is not a valid JSON schema under its own (or the latest) draft."""
    validator = jsonschema.validators.validator_for(schema)
    try:
        validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        where = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in exc.absolute_path
        )
        return ConfigIssue(
            path=f"{column_here}.output_schema{where}",
            message=f"invalid JSON schema: {exc.message}",
            hint="see https://json-schema.org/understanding-json-schema/ "
            "(or pass a pydantic model in Python)",
        )
    return None


def _unique_names(
    issues: list[ConfigIssue],
    section: str,
    entries: list[tuple[int, str]],
    field: str,
    what: str,
) -> frozenset[str]:
    first_index: dict[str, int] = {}
    for index, name in entries:
        if name in first_index:
            issues.append(
                ConfigIssue(
                    path=f"{section}[{index}] ({name}).{field}",
                    message=f"{what} {name!r} is already defined at {section}[{first_index[name]}]",
                    hint=f"give every entry of '{section}' a distinct {field}",
                )
            )
        else:
            first_index[name] = index
    return frozenset(first_index)


def _hint_or_define(wanted: str, known: list[str], section: str) -> str:
    if not known:
        return f"no {section} are defined; add one to '{section}'"
    return close_match_hint(wanted, known)
