"""Loading a dataset config from YAML/JSON files or mappings, reporting every problem at once.

Structural errors (types, missing and unknown fields) and semantic errors (references, schemas,
the column graph) are collected in one ``ConfigError``; semantic checks run on every part that
parsed, so one fix-and-retry round shows all of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import TypeAdapter, ValidationError

from sluiceway.config.checks import ParsedParts, partial_semantic_issues
from sluiceway.config.issues import issues_from_validation_error, show_value
from sluiceway.config.models import (
    ColumnBase,
    ColumnConfig,
    DatasetConfig,
    ModelConfig,
    ProviderConfig,
)
from sluiceway.errors import ConfigError, ConfigIssue

YAML_SUFFIXES = (".yaml", ".yml")
JSON_SUFFIXES = (".json",)

_T = TypeVar("_T")

_COLUMN_ADAPTER: TypeAdapter[ColumnBase] = TypeAdapter(ColumnConfig)


def load_config(path: str | Path) -> DatasetConfig:
    """Read and validate a YAML (``.yaml``/``.yml``) or JSON (``.json``) config file.

    Raises ConfigError naming the file (and line, for syntax errors) for a missing or unreadable
    file, a syntax error, or any validation problem.
    """
    file = Path(path)
    source = str(file)
    suffix = file.suffix.lower()
    if suffix not in YAML_SUFFIXES + JSON_SUFFIXES:
        raise ConfigError(
            [
                ConfigIssue(
                    path=source,
                    message=f"unsupported config file extension {file.suffix!r}",
                    hint="use .yaml, .yml or .json",
                )
            ],
            source=source,
        )
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [ConfigIssue(path=source, message="config file not found", hint="check the path")],
            source=source,
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [ConfigIssue(path=source, message=f"cannot read config file: {exc}")], source=source
        ) from exc
    data = _parse_text(text, source, is_json=suffix in JSON_SUFFIXES)
    return parse_config(data, source=source)


def parse_config(data: Any, source: str | None = None) -> DatasetConfig:
    """Validate an already-parsed config mapping; raises ConfigError listing every problem."""
    if not isinstance(data, Mapping):
        what = "an empty document" if data is None else show_value(data)
        raise ConfigError(
            [
                ConfigIssue(
                    path="",
                    message=f"a config must be a mapping with 'columns' and 'run', got {what}",
                    hint="start from an example in examples/",
                )
            ],
            source=source,
        )
    context = {"source": source}
    try:
        return DatasetConfig.model_validate(data, context=context)
    except ConfigError as exc:
        # Raised by DatasetConfig's semantic check: structure was fine.
        raise ConfigError(exc.issues, source=source) from None
    except ValidationError as exc:
        issues = issues_from_validation_error(exc, data)
    issues.extend(partial_semantic_issues(_parse_parts(data)))
    raise ConfigError(issues, source=source)


def format_issues(error: ConfigError) -> str:
    """One line per issue, prefixed with the source file when known (for the CLI)."""
    prefix = f"{error.source}: " if error.source else ""
    return "\n".join(prefix + issue.render() for issue in error.issues)


def _parse_text(text: str, source: str, *, is_json: bool) -> Any:
    if is_json:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                [
                    ConfigIssue(
                        path=f"{source}:{exc.lineno}",
                        message=f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                    )
                ],
                source=source,
            ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        where = f" at line {line}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(
            [
                ConfigIssue(
                    path=f"{source}:{line}" if line else source,
                    message=f"invalid YAML{where}: {problem}",
                    hint="check indentation and quote strings containing ': ' or '{{'",
                )
            ],
            source=source,
        ) from None


def _parse_parts(data: Mapping[str, Any]) -> ParsedParts:
    """Validate each provider, model and column on its own, keeping what parses."""
    providers, providers_complete, bad_providers = _parse_list(
        data.get("providers", []), ProviderConfig.model_validate, "name"
    )
    models, models_complete, bad_models = _parse_list(
        data.get("models", []), ModelConfig.model_validate, "alias"
    )
    columns, _, bad_columns = _parse_list(
        data.get("columns", []), _COLUMN_ADAPTER.validate_python, "name"
    )
    # Side columns declared by unparsed columns count as known names, too.
    side_names: set[str] = set()
    raw_columns = data.get("columns")
    if isinstance(raw_columns, list):
        for raw in raw_columns:
            if isinstance(raw, Mapping) and raw.get("name") in bad_columns:
                side_names.update(_declared_outputs(raw))
    return ParsedParts(
        providers=tuple(providers),
        models=tuple(models),
        columns=tuple(columns),
        providers_complete=providers_complete,
        models_complete=models_complete,
        unparsed_provider_names=bad_providers,
        unparsed_model_aliases=bad_models,
        unparsed_column_names=bad_columns | side_names,
    )


def _parse_list(
    raw: Any, validate: Callable[[Any], _T], name_key: str
) -> tuple[list[tuple[int, _T]], bool, frozenset[str]]:
    if raw is None:
        return [], True, frozenset()
    if not isinstance(raw, list):
        return [], False, frozenset()
    parsed: list[tuple[int, _T]] = []
    unparsed: set[str] = set()
    complete = True
    for index, item in enumerate(raw):
        try:
            parsed.append((index, validate(item)))
        except ValidationError:
            name = item.get(name_key) if isinstance(item, Mapping) else None
            if isinstance(name, str):
                unparsed.add(name)
            else:
                complete = False  # an entry without a name: references to it cannot be judged
    return parsed, complete, frozenset(unparsed)


def _declared_outputs(raw: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    reasoning = raw.get("reasoning_column")
    if isinstance(reasoning, str):
        names.add(reasoning)
    outputs = raw.get("output_columns")
    if isinstance(outputs, list):
        names.update(name for name in outputs if isinstance(name, str))
    return names
