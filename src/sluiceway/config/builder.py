"""A fluent Python builder for ``DatasetConfig`` using the same classes as YAML configs.

Entries are collected as given and validated together in ``build()``, which reports every
problem at once exactly like ``parse_config`` (same paths, same hints).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Self

from pydantic import BaseModel

from sluiceway.config.loading import parse_config
from sluiceway.config.models import (
    ColumnBase,
    ConfigModel,
    CustomSchedulingConfig,
    DatasetConfig,
    ModelConfig,
    ProviderConfig,
    RubricConfig,
)

Entry = ConfigModel | Mapping[str, Any]


class DatasetBuilder:
    """Build a ``DatasetConfig`` step by step; every method returns the builder.

    Nothing is validated before ``build()``, which raises ``ConfigError`` listing all problems.
    """

    def __init__(self, *, num_records: int, seed: int = 0, **run_settings: Any) -> None:
        self._run: dict[str, Any] = {"num_records": num_records, "seed": seed, **run_settings}
        self._providers: list[Entry] = []
        self._models: list[Entry] = []
        self._columns: list[Entry] = []
        self._output: Entry | None = None

    # -- providers and models ------------------------------------------------------------

    def add_provider(self, provider: ProviderConfig | None = None, /, **fields: Any) -> Self:
        """Add a provider, given as a ``ProviderConfig`` or as its fields."""
        self._providers.append(_entry(provider, fields))
        return self

    def add_model(self, model: ModelConfig | None = None, /, **fields: Any) -> Self:
        """Add a model alias, given as a ``ModelConfig`` or as its fields."""
        self._models.append(_entry(model, fields))
        return self

    # -- columns -------------------------------------------------------------------------

    def add_column(self, column: ColumnBase | Mapping[str, Any]) -> Self:
        """Add any column config (an instance or a mapping with ``type``)."""
        self._columns.append(column)
        return self

    def sampler(self, name: str, spec: ConfigModel | Mapping[str, Any], **common: Any) -> Self:
        """A sampler column; ``spec`` is e.g. ``CategorySampler(values=[...])``."""
        return self._column("sampler", name, sampler=spec, **common)

    def expression(
        self,
        name: str,
        template: str,
        *,
        dtype: Literal["str", "int", "float", "bool"] = "str",
        **common: Any,
    ) -> Self:
        """A Jinja expression column."""
        return self._column("expression", name, template=template, dtype=dtype, **common)

    def llm_text(
        self,
        name: str,
        *,
        model: str,
        prompt: str,
        system_prompt: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        reasoning_column: str | None = None,
        **common: Any,
    ) -> Self:
        """A free-text LLM column."""
        return self._column(
            "llm_text",
            name,
            model=model,
            prompt=prompt,
            system_prompt=system_prompt,
            parameters=parameters,
            reasoning_column=reasoning_column,
            **common,
        )

    def llm_structured(
        self,
        name: str,
        *,
        model: str,
        prompt: str,
        output_schema: Mapping[str, Any] | type[BaseModel],
        system_prompt: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        max_reasks: int | None = None,
        **common: Any,
    ) -> Self:
        """A structured LLM column; ``output_schema`` is a JSON schema or a pydantic model."""
        return self._column(
            "llm_structured",
            name,
            model=model,
            prompt=prompt,
            output_schema=output_schema,
            system_prompt=system_prompt,
            parameters=parameters,
            max_reasks=max_reasks,
            **common,
        )

    def llm_judge(
        self,
        name: str,
        *,
        model: str,
        prompt: str,
        rubrics: Sequence[RubricConfig | Mapping[str, Any]],
        system_prompt: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        max_reasks: int | None = None,
        **common: Any,
    ) -> Self:
        """An LLM judge column scoring each rubric."""
        return self._column(
            "llm_judge",
            name,
            model=model,
            prompt=prompt,
            rubrics=list(rubrics),
            system_prompt=system_prompt,
            parameters=parameters,
            max_reasks=max_reasks,
            **common,
        )

    def embedding(self, name: str, *, model: str, input: str, **common: Any) -> Self:
        """An embedding column of the rendered ``input`` template."""
        return self._column("embedding", name, model=model, input=input, **common)

    def custom(
        self,
        name: str,
        function: str | Callable[..., Any],
        *,
        strategy: Literal["cell", "batch"] = "cell",
        models: Sequence[str] = (),
        output_columns: Sequence[str] | None = None,
        scheduling: CustomSchedulingConfig | Mapping[str, Any] | None = None,
        **common: Any,
    ) -> Self:
        """A custom Python column (a callable or a ``module:attribute`` reference)."""
        return self._column(
            "custom",
            name,
            function=function,
            strategy=strategy,
            models=list(models),
            output_columns=None if output_columns is None else list(output_columns),
            scheduling=scheduling,
            **common,
        )

    # -- run and output ------------------------------------------------------------------

    def run(self, **settings: Any) -> Self:
        """Set or override run settings (``buffer_size``, ``retry``, ...)."""
        self._run.update(settings)
        return self

    def output(self, path: str, *, overwrite: bool = False) -> Self:
        """Where the dataset is written."""
        self._output = {"path": path, "overwrite": overwrite}
        return self

    def build(self) -> DatasetConfig:
        """Validate everything and return the config; raises ConfigError listing all problems."""
        data: dict[str, Any] = {
            "providers": list(self._providers),
            "models": list(self._models),
            "columns": list(self._columns),
            "run": self._run,
        }
        if self._output is not None:
            data["output"] = self._output
        return parse_config(data, source="DatasetBuilder")

    def _column(self, column_type: str, name: str, **fields: Any) -> Self:
        entry = {"type": column_type, "name": name}
        entry.update({key: value for key, value in fields.items() if value is not None})
        self._columns.append(entry)
        return self


def _entry(instance: ConfigModel | None, fields: Mapping[str, Any]) -> Entry:
    if instance is not None and fields:
        raise TypeError("pass either a config object or keyword fields, not both")
    return instance if instance is not None else dict(fields)
