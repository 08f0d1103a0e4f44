"""The dataset config as pydantic v2 models: providers, models, columns, run and output settings.

Every model forbids unknown fields and is frozen. Field-level rules live here; cross-references
(unknown columns, aliases, cycles, schemas) are checked by ``sluiceway.config.checks`` when a
``DatasetConfig`` is validated, so a ``DatasetConfig`` instance is always semantically valid.
"""

from __future__ import annotations

import datetime as dt
import difflib
import keyword
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from sluiceway.errors import ConfigError, ConfigIssue

# --------------------------------------------------------------------------------------------
# Shared field types
# --------------------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CALLABLE_REF = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
)
_LITERAL_KEY_PREFIXES = ("sk-", "sk_", "pk-", "rk-", "key-", "bearer ", "xai-", "gsk_", "hf_")

# Words a Jinja template cannot use as a plain variable name (constants, operators, keywords).
JINJA_RESERVED_NAMES = frozenset(
    {"true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if"}
    | {"else", "elif", "endif", "for", "endfor", "loop", "self", "recursive", "with"}
)


def config_value_error(code: str, message: str, hint: str | None = None) -> PydanticCustomError:
    """A pydantic error carrying a ``hint`` that the loader turns into ``ConfigIssue.hint``."""
    context: dict[str, Any] = {"hint": hint} if hint else {}
    # Braces in user text would be read as format fields by pydantic; escape-free by design:
    # only keys present in ``context`` are substituted, and ``hint`` never appears in message.
    return PydanticCustomError(code, message, context)


def _check_identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise config_value_error(
            "identifier",
            f"{value!r} is not a valid name: use letters, digits and '_', no leading digit",
            "names are used as Jinja variables, e.g. 'product_name'",
        )
    if value in JINJA_RESERVED_NAMES or keyword.iskeyword(value):
        raise config_value_error(
            "reserved_name",
            f"{value!r} is a reserved word in templates and cannot be a column name",
            f"rename it, e.g. '{value}_value'",
        )
    return value


Identifier = Annotated[str, AfterValidator(_check_identifier)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


class ConfigModel(BaseModel):
    """Base of every config model: unknown fields are errors and instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# Providers and models
# --------------------------------------------------------------------------------------------


class SimulationSettingsConfig(ConfigModel):
    """Behaviour of the in-process simulated endpoint (``type: simulated`` providers only)."""

    latency_seconds: float = Field(default=0.0, ge=0.0)
    latency_tail_seconds: float = Field(default=0.0, ge=0.0)
    capacity: int | None = Field(default=None, ge=1)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    retry_after_seconds: float = Field(default=1.0, ge=0.0)
    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    invalid_json_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    embedding_dimensions: int = Field(default=16, ge=1)
    queueing: bool = False
    # The rolling window rpm and tpm are counted in (60 s, as providers count them).
    window_seconds: float = Field(default=60.0, gt=0.0)
    # A file that gets the request key (hex) of every answered attempt, one line each.
    request_log: str | None = None


ProviderType = Literal["openai", "anthropic", "simulated"]
PROVIDER_TYPES: tuple[str, ...] = ("openai", "anthropic", "simulated")

# The variable a provider's key is read from when ``api_key_env`` is not given (the SDKs' names).
DEFAULT_API_KEY_ENV: Mapping[str, str] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
}


class ProviderConfig(ConfigModel):
    """One model endpoint. Credentials are referenced by environment-variable name only."""

    name: NonEmptyStr
    type: ProviderType
    base_url: str | None = None
    api_key_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    budget_key: str | None = None
    simulation: SimulationSettingsConfig = Field(default_factory=SimulationSettingsConfig)

    @field_validator("api_key_env")
    @classmethod
    def _api_key_is_a_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if looks_like_literal_key(value):
            raise config_value_error(
                "literal_api_key",
                "api_key_env looks like a literal API key; it must be the NAME of an "
                "environment variable holding the key",
                "export the key, e.g. `export OPENAI_API_KEY=...`, and set "
                "`api_key_env: OPENAI_API_KEY`; keys are never stored in configs or artifacts",
            )
        if not _ENV_VAR_NAME.match(value):
            raise config_value_error(
                "env_var_name",
                f"api_key_env {value!r} is not a valid environment-variable name",
                "use letters, digits and '_', e.g. OPENAI_API_KEY",
            )
        return value

    def api_key_variable(self) -> str | None:
        """The environment variable the key is read from: ``api_key_env``, else the type's
        default (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``); None for simulated providers."""
        if self.api_key_env is not None:
            return self.api_key_env
        return DEFAULT_API_KEY_ENV.get(self.type)

    @model_validator(mode="after")
    def _simulation_only_for_simulated(self) -> Self:
        # Compared with the defaults (not "was it given") so a dumped config loads back.
        if self.type != "simulated" and self.simulation != SimulationSettingsConfig():
            raise config_value_error(
                "simulation_not_allowed",
                f"'simulation' settings only apply to providers of type 'simulated', "
                f"not {self.type!r}",
                "remove the 'simulation' block or set `type: simulated`",
            )
        return self


def looks_like_literal_key(value: str) -> bool:
    """True when ``value`` looks like a secret rather than an environment-variable name."""
    lowered = value.lower()
    if lowered.startswith(_LITERAL_KEY_PREFIXES):
        return True
    if len(value) >= 32 and _ENV_VAR_NAME.match(value) is None:
        return True
    # Long, mixed-case, digit-bearing identifiers are keys, not NAMES_LIKE_THIS.
    has_lower = any(c.islower() for c in value)
    has_upper = any(c.isupper() for c in value)
    has_digit = any(c.isdigit() for c in value)
    return len(value) >= 32 and has_lower and has_upper and has_digit


class ModelConfig(ConfigModel):
    """A model alias: which provider and endpoint model id to call, with what limits."""

    alias: NonEmptyStr
    provider: NonEmptyStr
    model: NonEmptyStr
    max_parallel_requests: int = Field(default=4, ge=1)
    timeout_seconds: float = Field(default=60.0, gt=0.0)
    parameters: dict[str, Any] = Field(default_factory=dict)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    # None: the run's request_admission.latency_gradient; True / False: this endpoint's own.
    latency_gradient: bool | None = None


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------


class CategorySampler(ConfigModel):
    """One of ``values``, optionally weighted."""

    kind: Literal["category"] = "category"
    values: list[Any] = Field(min_length=1)
    weights: list[float] | None = None

    @model_validator(mode="after")
    def _weights_match(self) -> Self:
        if self.weights is None:
            return self
        if len(self.weights) != len(self.values):
            raise config_value_error(
                "weights_length",
                f"weights has {len(self.weights)} entries but values has {len(self.values)}",
                "give one weight per value, or drop 'weights' for a uniform choice",
            )
        if any(w < 0 for w in self.weights):
            raise config_value_error(
                "weights_negative", f"weights must be >= 0, got {self.weights}"
            )
        if sum(self.weights) <= 0:
            raise config_value_error(
                "weights_zero",
                "weights must not all be zero",
                "give at least one value a positive weight",
            )
        return self


class UniformSampler(ConfigModel):
    """A float drawn uniformly from ``[low, high)``."""

    kind: Literal["uniform"] = "uniform"
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.low < self.high:
            raise config_value_error(
                "range_order",
                f"low ({self.low}) must be less than high ({self.high})",
                "swap the bounds",
            )
        return self


class IntegerSampler(ConfigModel):
    """An integer drawn uniformly from ``[low, high]`` (both inclusive)."""

    kind: Literal["integer"] = "integer"
    low: int
    high: int

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low > self.high:
            raise config_value_error(
                "range_order",
                f"low ({self.low}) must be <= high ({self.high})",
                "swap the bounds",
            )
        return self


class GaussianSampler(ConfigModel):
    """A float drawn from a normal distribution."""

    kind: Literal["gaussian"] = "gaussian"
    mean: float = 0.0
    stddev: float = Field(default=1.0, gt=0.0)


class UuidSampler(ConfigModel):
    """A random UUID4 string (seeded)."""

    kind: Literal["uuid"] = "uuid"


def _as_datetime(value: Any) -> Any:
    # YAML turns unquoted 2024-01-01 into a date; accept it as midnight.
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day)
    return value


class DatetimeSampler(ConfigModel):
    """A datetime drawn uniformly from ``[start, end)``."""

    kind: Literal["datetime"] = "datetime"
    start: dt.datetime
    end: dt.datetime

    @field_validator("start", "end", mode="before")
    @classmethod
    def _dates_are_midnight(cls, value: Any) -> Any:
        return _as_datetime(value)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if (self.start.tzinfo is None) != (self.end.tzinfo is None):
            raise config_value_error(
                "timezone_mismatch",
                "start and end must both have a timezone or both have none",
                "write both like 2024-01-01T00:00:00Z, or neither with a zone",
            )
        if not self.start < self.end:
            raise config_value_error(
                "range_order",
                f"start ({self.start.isoformat()}) must be before end ({self.end.isoformat()})",
                "swap the bounds",
            )
        return self


class BooleanSampler(ConfigModel):
    """``True`` with ``probability``."""

    kind: Literal["boolean"] = "boolean"
    probability: float = Field(default=0.5, ge=0.0, le=1.0)


PersonField = Literal[
    "first_name", "last_name", "full_name", "email", "phone", "city", "country", "job", "company"
]


class PersonSampler(ConfigModel):
    """A person-like field from Faker, seeded from the run seed.

    ``full_name`` is a plain name in the locale's order (``Darrell Mcclure``); ``with_titles``
    also draws the locale's decorated forms (``Dr. Darrell Mcclure Jr.``).
    """

    kind: Literal["person"] = "person"
    field: PersonField = "full_name"
    locale: str = Field(default="en_US", pattern=r"^[a-z]{2,3}(_[A-Z]{2})?$")
    with_titles: bool = False

    @model_validator(mode="after")
    def _titles_only_for_full_names(self) -> Self:
        if self.with_titles and self.field != "full_name":
            raise config_value_error(
                "with_titles_field",
                f"with_titles only applies to field 'full_name', not {self.field!r}",
                "remove with_titles, or set `field: full_name`",
            )
        return self


SAMPLER_KINDS: Mapping[str, type[ConfigModel]] = {
    "category": CategorySampler,
    "uniform": UniformSampler,
    "integer": IntegerSampler,
    "gaussian": GaussianSampler,
    "uuid": UuidSampler,
    "datetime": DatetimeSampler,
    "boolean": BooleanSampler,
    "person": PersonSampler,
}


def _tag_of(value: Any, key: str) -> str | None:
    raw = value.get(key) if isinstance(value, Mapping) else getattr(value, key, None)
    return raw if isinstance(raw, str) else None


def _sampler_kind(value: Any) -> str | None:
    return _tag_of(value, "kind")


SamplerSpec = Annotated[
    Annotated[CategorySampler, Tag("category")]
    | Annotated[UniformSampler, Tag("uniform")]
    | Annotated[IntegerSampler, Tag("integer")]
    | Annotated[GaussianSampler, Tag("gaussian")]
    | Annotated[UuidSampler, Tag("uuid")]
    | Annotated[DatetimeSampler, Tag("datetime")]
    | Annotated[BooleanSampler, Tag("boolean")]
    | Annotated[PersonSampler, Tag("person")],
    Discriminator(
        _sampler_kind,
        custom_error_type="unknown_sampler_kind",
        custom_error_message="unknown or missing sampler kind",
    ),
]


# --------------------------------------------------------------------------------------------
# Columns
# --------------------------------------------------------------------------------------------


class ColumnBase(ConfigModel):
    """Fields every column has. Subclasses add a ``type`` literal and their own settings."""

    name: Identifier
    drop: bool = False
    skip_when: NonEmptyStr | None = None
    skip_value: Any = None
    depends_on: list[Identifier] = Field(default_factory=list)

    def template_fields(self) -> dict[str, str]:
        """Field name -> Jinja template source, for every template this column renders."""
        return {}

    def produced_columns(self) -> tuple[str, ...]:
        """Every output column this column writes; the first is the main one."""
        return (self.name,)

    def model_aliases(self) -> tuple[str, ...]:
        """Model aliases this column calls (empty for local columns)."""
        return ()


class SamplerColumnConfig(ColumnBase):
    """A column drawn from a seeded sampler."""

    type: Literal["sampler"] = "sampler"
    sampler: SamplerSpec


class ExpressionColumnConfig(ColumnBase):
    """A column rendered from a sandboxed Jinja template over other columns."""

    type: Literal["expression"] = "expression"
    template: NonEmptyStr
    dtype: Literal["str", "int", "float", "bool"] = "str"

    def template_fields(self) -> dict[str, str]:
        return {"template": self.template}


class LLMColumnBase(ColumnBase):
    """Fields shared by the columns that prompt a chat model."""

    model: NonEmptyStr
    prompt: NonEmptyStr
    system_prompt: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)

    def template_fields(self) -> dict[str, str]:
        fields = {"prompt": self.prompt}
        if self.system_prompt is not None:
            fields["system_prompt"] = self.system_prompt
        return fields

    def model_aliases(self) -> tuple[str, ...]:
        return (self.model,)


class LLMTextColumnConfig(LLMColumnBase):
    """Free text from a chat model, with an optional side column for the reasoning trace."""

    type: Literal["llm_text"] = "llm_text"
    reasoning_column: Identifier | None = None

    @model_validator(mode="after")
    def _reasoning_differs(self) -> Self:
        if self.reasoning_column == self.name:
            raise config_value_error(
                "reasoning_column_name",
                f"reasoning_column {self.reasoning_column!r} must differ from the column name",
                f"e.g. `reasoning_column: {self.name}_reasoning`",
            )
        return self

    def produced_columns(self) -> tuple[str, ...]:
        if self.reasoning_column is None:
            return (self.name,)
        return (self.name, self.reasoning_column)


class LLMStructuredColumnConfig(LLMColumnBase):
    """A JSON object from a chat model, validated against ``output_schema`` with re-asks."""

    type: Literal["llm_structured"] = "llm_structured"
    output_schema: dict[str, Any]
    max_reasks: int = Field(default=2, ge=0, le=10)

    @field_validator("output_schema", mode="before")
    @classmethod
    def _pydantic_model_to_schema(cls, value: Any) -> Any:
        if isinstance(value, type) and issubclass(value, BaseModel):
            return value.model_json_schema()
        return value


class RubricConfig(ConfigModel):
    """One judged criterion and its integer score range."""

    name: NonEmptyStr
    description: NonEmptyStr
    min_score: int = 1
    max_score: int = 5

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.min_score < self.max_score:
            raise config_value_error(
                "score_range",
                f"min_score ({self.min_score}) must be less than max_score ({self.max_score})",
                "e.g. min_score: 1, max_score: 5",
            )
        return self


class LLMJudgeColumnConfig(LLMColumnBase):
    """Scores (with reasoning) from a chat model, one per rubric."""

    type: Literal["llm_judge"] = "llm_judge"
    rubrics: list[RubricConfig] = Field(min_length=1)
    max_reasks: int = Field(default=2, ge=0, le=10)

    @field_validator("rubrics")
    @classmethod
    def _unique_rubric_names(cls, rubrics: list[RubricConfig]) -> list[RubricConfig]:
        seen: set[str] = set()
        for rubric in rubrics:
            if rubric.name in seen:
                raise config_value_error(
                    "duplicate_rubric",
                    f"rubric name {rubric.name!r} is used more than once",
                    "give every rubric a distinct name",
                )
            seen.add(rubric.name)
        return rubrics

    def score_schema(self) -> dict[str, Any]:
        """JSON schema of the judge's answer: ``{rubric: {score, reasoning}}`` for every rubric."""
        properties: dict[str, Any] = {}
        for rubric in self.rubrics:
            properties[rubric.name] = {
                "type": "object",
                "description": rubric.description,
                "properties": {
                    "score": {
                        "type": "integer",
                        "minimum": rubric.min_score,
                        "maximum": rubric.max_score,
                    },
                    "reasoning": {"type": "string"},
                },
                "required": ["score", "reasoning"],
                "additionalProperties": False,
            }
        return {
            "type": "object",
            "properties": properties,
            "required": [rubric.name for rubric in self.rubrics],
            "additionalProperties": False,
        }


class EmbeddingColumnConfig(ColumnBase):
    """A vector column: the embedding of a rendered text."""

    type: Literal["embedding"] = "embedding"
    model: NonEmptyStr
    input: NonEmptyStr

    def template_fields(self) -> dict[str, str]:
        return {"input": self.input}

    def model_aliases(self) -> tuple[str, ...]:
        return (self.model,)


class CustomSchedulingConfig(ConfigModel):
    """Scheduling identity of a custom column that calls models (see SchedulingMetadata)."""

    namespace: NonEmptyStr = "custom"
    resource_name: str | None = None
    version: NonEmptyStr = "1"
    weight: int | None = Field(default=None, ge=1)


def callable_reference(function: Callable[..., Any]) -> str:
    """``module:qualname`` of a callable, used when a config is serialized or fingerprinted."""
    module = getattr(function, "__module__", None) or "<unknown>"
    qualname = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{module}:{qualname}"


class CustomColumnConfig(ColumnBase):
    """A Python callable, by ``package.module:attribute`` reference or as the object itself."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    type: Literal["custom"] = "custom"
    function: str | Callable[..., Any]
    strategy: Literal["cell", "batch"] = "cell"
    models: list[NonEmptyStr] = Field(default_factory=list)
    output_columns: list[Identifier] | None = None
    scheduling: CustomSchedulingConfig | None = None
    max_threads: int = Field(default=32, ge=1, le=1024)
    # Wall time of one call of the function (one task attempt); then the attempt fails and is
    # retried within run.retry.
    timeout_seconds: float = Field(default=600.0, gt=0.0)

    @field_validator("function")
    @classmethod
    def _reference_syntax(cls, value: str | Callable[..., Any]) -> str | Callable[..., Any]:
        if isinstance(value, str) and not _CALLABLE_REF.match(value):
            raise config_value_error(
                "callable_reference",
                f"function {value!r} is not a 'package.module:attribute' reference",
                "e.g. `function: my_pkg.columns:make_title`",
            )
        return value

    @field_validator("output_columns")
    @classmethod
    def _output_columns(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise config_value_error(
                "output_columns_empty",
                "output_columns must not be empty",
                "list at least one column, or omit the field to write the column's own name",
            )
        duplicates = sorted({name for name in value if value.count(name) > 1})
        if duplicates:
            raise config_value_error(
                "output_columns_duplicate",
                f"output_columns lists {', '.join(map(repr, duplicates))} more than once",
            )
        return value

    @field_serializer("function")
    def _serialize_function(self, value: str | Callable[..., Any]) -> str:
        return value if isinstance(value, str) else callable_reference(value)

    def produced_columns(self) -> tuple[str, ...]:
        if self.output_columns is None:
            return (self.name,)
        return tuple(self.output_columns)

    def model_aliases(self) -> tuple[str, ...]:
        return tuple(self.models)

    def resolve_function(self) -> Callable[..., Any]:
        """The callable itself, importing a string reference (raises ConfigError on failure)."""
        from sluiceway.config.callables import resolve_callable

        return resolve_callable(self.function, column_name=self.name)


COLUMN_TYPES: Mapping[str, type[ColumnBase]] = {
    "sampler": SamplerColumnConfig,
    "expression": ExpressionColumnConfig,
    "llm_text": LLMTextColumnConfig,
    "llm_structured": LLMStructuredColumnConfig,
    "llm_judge": LLMJudgeColumnConfig,
    "embedding": EmbeddingColumnConfig,
    "custom": CustomColumnConfig,
}


def _column_type(value: Any) -> str | None:
    return _tag_of(value, "type")


ColumnConfig = Annotated[
    Annotated[SamplerColumnConfig, Tag("sampler")]
    | Annotated[ExpressionColumnConfig, Tag("expression")]
    | Annotated[LLMTextColumnConfig, Tag("llm_text")]
    | Annotated[LLMStructuredColumnConfig, Tag("llm_structured")]
    | Annotated[LLMJudgeColumnConfig, Tag("llm_judge")]
    | Annotated[EmbeddingColumnConfig, Tag("embedding")]
    | Annotated[CustomColumnConfig, Tag("custom")],
    Discriminator(
        _column_type,
        custom_error_type="unknown_column_type",
        custom_error_message="unknown or missing column type",
    ),
]


# --------------------------------------------------------------------------------------------
# Run, output and the whole dataset
# --------------------------------------------------------------------------------------------


class RetryConfig(ConfigModel):
    """Retry budget of one task: attempts, wall time and exponential backoff."""

    max_attempts: int = Field(default=6, ge=1)
    max_wall_seconds: float = Field(default=600.0, gt=0.0)
    backoff_base_seconds: float = Field(default=0.25, ge=0.0)
    backoff_max_seconds: float = Field(default=30.0, ge=0.0)

    @model_validator(mode="after")
    def _backoff_ordered(self) -> Self:
        if self.backoff_max_seconds < self.backoff_base_seconds:
            raise config_value_error(
                "backoff_order",
                f"backoff_max_seconds ({self.backoff_max_seconds}) must be >= "
                f"backoff_base_seconds ({self.backoff_base_seconds})",
            )
        return self


class TaskAdmissionConfig(ConfigModel):
    """Which task-admission policy shares scheduler capacity among task groups (SPEC §5.2)."""

    policy: Literal["bounded_borrow", "strict_fair"] = "bounded_borrow"
    borrow_ceiling_fraction: float = Field(default=0.5, gt=0.0, le=1.0)


class RowGroupHorizonConfig(ConfigModel):
    """How many row groups may be in flight beyond ``max_concurrent_row_groups`` (SPEC §5.6)."""

    mode: Literal["fixed", "adaptive"] = "fixed"
    max_rows_in_flight: int | None = Field(default=None, ge=1)


class EarlyShutdownConfig(ConfigModel):
    """Stop the run when too many recent tasks failed permanently (SPEC §5.4)."""

    enabled: bool = True
    window: int = Field(default=200, ge=1)
    min_outcomes: int = Field(default=50, ge=1)
    max_error_rate: float = Field(default=0.5, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _min_within_window(self) -> Self:
        if self.min_outcomes > self.window:
            raise config_value_error(
                "early_shutdown_window",
                f"min_outcomes ({self.min_outcomes}) must be <= window ({self.window})",
            )
        return self


class RequestAdmissionConfig(ConfigModel):
    """Adaptive request limits per provider/model and domain (SPEC §6.3, §6.6).

    With ``adaptive`` the limit slow-starts from half the static cap (or ``initial_limit``),
    decreases on a refusal, recovers per round trip to the concurrency recently served, holds
    there ``hold_round_trips`` round trips (at most ``max_hold_seconds``) and then probes above
    it. ``latency_gradient`` adds a delay-based cap for servers that queue instead of answering
    429.
    """

    adaptive: bool = True
    initial_limit: int | None = Field(default=None, ge=1)
    slow_start: bool = True
    slow_start_seconds: float = Field(default=0.05, gt=0.0, le=60.0)
    decrease_factor: float = Field(default=0.75, gt=0.0, lt=1.0)
    hold_round_trips: int = Field(default=2, ge=1, le=64)
    max_hold_seconds: float = Field(default=10.0, ge=0.0)
    startup_ramp_seconds: float = Field(default=0.0, ge=0.0)
    default_cooldown_seconds: float = Field(default=0.5, ge=0.0)
    max_cooldown_seconds: float = Field(default=60.0, ge=0.0)
    latency_gradient: bool = False
    queue_wait_timeout_seconds: float | None = Field(default=None, gt=0.0)
    # The rolling window the models' rpm / tpm budgets are counted in (60 s, as providers count).
    budget_window_seconds: float = Field(default=60.0, gt=0.0)

    @model_validator(mode="before")
    @classmethod
    def _removed_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in ("successes_until_increase", "ceiling_hold_seconds"):
                if name in data:
                    raise config_value_error(
                        "removed_field",
                        f"{name} is no longer a setting: the limit now recovers and probes per "
                        "round trip",
                        f"remove {name}; hold_round_trips and max_hold_seconds tune how long the "
                        "limit holds before it probes above the level last served",
                    )
        return data


class EventsConfig(ConfigModel):
    """What the run's events record (docs/observability.md, "Trace sampling").

    ``trace_sample_rate`` is the share of task attempts whose full timeline (dependency ready
    ... task lease released, and the events of each request attempt they make) is recorded;
    the choice is deterministic per task attempt. Aggregate and state events (job, health
    snapshots, row groups, queue episodes, retries, drops, cancellations, limits, rate limits,
    diagnostics) are always recorded. 1 traces every task attempt, 0 none.
    """

    # 1/16; equal to sluiceway.observability.sampling.DEFAULT_TRACE_SAMPLE_RATE (the config
    # imports nothing from the engine or observability).
    trace_sample_rate: float = Field(default=0.0625, ge=0.0, le=1.0)


class StragglersConfig(ConfigModel):
    """Per-attempt timeouts that follow the latency observed per provider/model, domain and
    column, and optional hedged attempts (SPEC §6.6; docs/config-reference.md says why these
    defaults). An attempt gets ``max(min_timeout_seconds, timeout_factor x the
    timeout_quantile of recent success latencies)``, never above the model's
    ``timeout_seconds``, once ``min_samples`` successes were seen. With ``hedging``, an
    attempt still running after ``hedge_factor x the hedge_quantile`` gets a second attempt
    (first answer wins), at most ``hedge_budget_ratio`` of the attempts."""

    adaptive_timeout: bool = True
    timeout_quantile: float = Field(default=0.99, gt=0.0, lt=1.0)
    timeout_factor: float = Field(default=3.0, ge=1.0)
    min_timeout_seconds: float = Field(default=1.0, gt=0.0)
    min_samples: int = Field(default=20, ge=1, le=256)
    hedging: bool = False
    hedge_quantile: float = Field(default=0.95, gt=0.0, lt=1.0)
    hedge_factor: float = Field(default=2.0, ge=1.0)
    hedge_budget_ratio: float = Field(default=0.02, gt=0.0, le=1.0)


class RunConfig(ConfigModel):
    """How many rows to make, from which seed, and how much work may be in flight."""

    num_records: int = Field(ge=1)
    seed: int = 0
    buffer_size: int = Field(default=100, ge=1)
    max_concurrent_row_groups: int = Field(default=4, ge=1)
    max_in_flight_tasks: int = Field(default=1024, ge=1)
    max_local_tasks: int = Field(default=64, ge=1)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    request_admission: RequestAdmissionConfig = Field(default_factory=RequestAdmissionConfig)
    task_admission: TaskAdmissionConfig = Field(default_factory=TaskAdmissionConfig)
    row_group_horizon: RowGroupHorizonConfig = Field(default_factory=RowGroupHorizonConfig)
    early_shutdown: EarlyShutdownConfig = Field(default_factory=EarlyShutdownConfig)
    circuit_breaker_seconds: float | None = Field(default=120.0, gt=0.0)
    events: EventsConfig = Field(default_factory=EventsConfig)
    stragglers: StragglersConfig = Field(default_factory=StragglersConfig)


class OutputConfig(ConfigModel):
    """Where the dataset is written."""

    path: NonEmptyStr = "out/dataset"
    overwrite: bool = False


class DatasetConfig(ConfigModel):
    """The whole dataset config. Constructing one runs every semantic check and raises
    ``ConfigError`` (not pydantic's ``ValidationError``) listing all cross-reference problems."""

    providers: list[ProviderConfig] = Field(default_factory=list)
    models: list[ModelConfig] = Field(default_factory=list)
    columns: list[ColumnConfig] = Field(min_length=1)
    run: RunConfig
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _semantic_checks(self, info: ValidationInfo) -> Self:
        from sluiceway.config.checks import semantic_issues

        issues = semantic_issues(providers=self.providers, models=self.models, columns=self.columns)
        if issues:
            source = info.context.get("source") if isinstance(info.context, dict) else None
            raise ConfigError(issues, source=source)
        return self

    def column(self, name: str) -> ColumnBase:
        """The column called ``name`` (raises ConfigError with a close match if unknown)."""
        for column in self.columns:
            if column.name == name:
                return column
        raise _lookup_error("columns", name, [c.name for c in self.columns])

    def model(self, alias: str) -> ModelConfig:
        """The model with alias ``alias`` (raises ConfigError with a close match if unknown)."""
        for model in self.models:
            if model.alias == alias:
                return model
        raise _lookup_error("models", alias, [m.alias for m in self.models])

    def provider(self, name: str) -> ProviderConfig:
        """The provider called ``name`` (raises ConfigError with a close match if unknown)."""
        for provider in self.providers:
            if provider.name == name:
                return provider
        raise _lookup_error("providers", name, [p.name for p in self.providers])


def _lookup_error(section: str, wanted: str, known: list[str]) -> ConfigError:
    return ConfigError(
        [
            ConfigIssue(
                path=section,
                message=f"no entry named {wanted!r}",
                hint=close_match_hint(wanted, known),
            )
        ]
    )


_HINT_LISTED_NAMES = 12


def close_match_hint(wanted: str, known: list[str] | tuple[str, ...]) -> str:
    """'did you mean ...?' plus the known names, for unknown-name messages."""
    matches = difflib.get_close_matches(wanted, known, n=1, cutoff=0.6)
    shown = list(known[:_HINT_LISTED_NAMES])
    listing = ", ".join(shown) if shown else "none defined"
    if len(known) > len(shown):
        listing += f", ... ({len(known) - len(shown)} more)"
    if matches:
        return f"did you mean {matches[0]!r}? known: {listing}"
    return f"known: {listing}"
