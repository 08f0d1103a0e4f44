"""Sampler columns: seeded values drawn per row from the config's sampler spec.

A row's value depends only on (run seed, column name, global row index) through
``sluiceway.columns.row_seeds``, so every ``buffer_size`` yields the same dataset. Person fields
come from Faker re-seeded per row (unweighted name lists: several times faster, same vocabulary).
Full names use the locale's name formats without prefixes and suffixes unless titles are asked for.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from faker import Faker

from sluiceway.columns.base import ColumnGenerator, GenerationContext, GenerationStrategy
from sluiceway.columns.row_seeds import (
    column_base,
    column_key,
    next_state,
    row_state,
    unit_float,
)
from sluiceway.config.models import (
    BooleanSampler,
    CategorySampler,
    DatetimeSampler,
    GaussianSampler,
    IntegerSampler,
    PersonSampler,
    SamplerSpec,
    UniformSampler,
    UuidSampler,
)
from sluiceway.errors import ConfigError, ConfigIssue

Draw = Callable[[int], Any]
"""Turns one row's 64-bit state into that row's value."""

_TWO_PI = 2.0 * math.pi
_ONE_MICROSECOND = dt.timedelta(microseconds=1)
_PERSON_METHODS: Mapping[str, str] = {
    "first_name": "first_name",
    "last_name": "last_name",
    "email": "email",
    "phone": "phone_number",
    "city": "city",
    "country": "country",
    "job": "job",
    "company": "company",
}


class SamplerColumnGenerator(ColumnGenerator):
    """Fills its column for ``ctx.row_indices`` (strategy ``from_scratch``, local resources).

    Construction raises ``ConfigError`` for an unknown Faker locale. Generation never blocks on
    I/O; person fields cost tens of microseconds per value, the other kinds about one.
    """

    strategy = GenerationStrategy.FROM_SCRATCH

    def __init__(
        self, *, name: str, sampler: SamplerSpec, dependencies: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.output_columns = (name,)
        self.dependencies = tuple(dependencies)
        self.sampler = sampler
        self._draw = build_draw(sampler, column=name)
        self._key = column_key(name)
        self._seed: int | None = None
        self._base = 0

    async def generate_from_scratch(self, ctx: GenerationContext) -> Sequence[Mapping[str, Any]]:
        return [{self.name: value} for value in self.values(ctx.seed, ctx.row_indices)]

    def values(self, seed: int, row_indices: Sequence[int]) -> list[Any]:
        """The column's values for these global rows under run seed ``seed``."""
        if seed != self._seed:
            self._base = column_base(seed, self._key)
            self._seed = seed
        base, draw = self._base, self._draw
        return [draw(row_state(base, index)) for index in row_indices]


def build_draw(sampler: SamplerSpec, *, column: str) -> Draw:
    """The draw function of one sampler spec (``column`` names the column in errors)."""
    if isinstance(sampler, CategorySampler):
        return _category(sampler.values, sampler.weights)
    if isinstance(sampler, UniformSampler):
        return _uniform(sampler.low, sampler.high)
    if isinstance(sampler, IntegerSampler):
        return _integer(sampler.low, sampler.high)
    if isinstance(sampler, GaussianSampler):
        return _gaussian(sampler.mean, sampler.stddev)
    if isinstance(sampler, UuidSampler):
        return _uuid4
    if isinstance(sampler, DatetimeSampler):
        return _datetime(sampler.start, sampler.end)
    if isinstance(sampler, BooleanSampler):
        return _boolean(sampler.probability)
    if isinstance(sampler, PersonSampler):
        return _person(sampler, column=column)
    raise ConfigError(
        [
            ConfigIssue(
                path=f"columns ({column}).sampler",
                message=f"sampler {type(sampler).__name__} has no generator",
                hint="use one of: category, uniform, integer, gaussian, uuid, datetime, "
                "boolean, person",
            )
        ]
    )


def _category(values: Sequence[Any], weights: Sequence[float] | None) -> Draw:
    choices = tuple(values)
    count = len(choices)
    if weights is None:
        return lambda state: choices[(state * count) >> 64]
    cumulative = list(itertools.accumulate(float(w) for w in weights))
    total = cumulative[-1]
    last_positive = max(i for i, w in enumerate(weights) if w > 0)

    def draw(state: int) -> Any:
        # bisect_right skips zero-weight entries; u * total can round up to total, which would
        # index past the end, so that single point maps to the last value with weight.
        index = bisect.bisect_right(cumulative, unit_float(state) * total)
        return choices[min(index, last_positive)]

    return draw


def _uniform(low: float, high: float) -> Draw:
    width = high - low
    below_high = math.nextafter(high, low)

    def draw(state: int) -> float:
        value = low + unit_float(state) * width
        return value if value < high else below_high  # rounding may reach ``high``

    return draw


def _integer(low: int, high: int) -> Draw:
    span = high - low + 1
    if span <= 1 << 64:
        return lambda state: low + ((state * span) >> 64)
    # Spans beyond 64 bits are rare; a Random seeded from the state draws them exactly.
    return lambda state: low + random.Random(state).randrange(span)


def _gaussian(mean: float, stddev: float) -> Draw:
    def draw(state: int) -> float:
        # Box-Muller; u1 in (0, 1] so the logarithm is finite.
        u1 = ((state >> 11) + 1) * 2.0**-53
        u2 = unit_float(next_state(state))
        return mean + stddev * math.sqrt(-2.0 * math.log(u1)) * math.cos(_TWO_PI * u2)

    return draw


_UUID_VERSION_CLEAR = ~(0xF << 12) & ((1 << 64) - 1)
_UUID_VARIANT_CLEAR = (1 << 62) - 1


def _uuid4(state: int) -> str:
    high = (state & _UUID_VERSION_CLEAR) | (0x4 << 12)  # version 4
    low = (next_state(state) & _UUID_VARIANT_CLEAR) | (0b10 << 62)  # RFC 4122 variant
    text = f"{high:016x}{low:016x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _datetime(start: dt.datetime, end: dt.datetime) -> Draw:
    span_microseconds = (end - start) // _ONE_MICROSECOND
    return lambda state: start + dt.timedelta(microseconds=(state * span_microseconds) >> 64)


def _boolean(probability: float) -> Draw:
    return lambda state: unit_float(state) < probability


# Placeholders of Faker's name formats that decorate a name (Dr., Mrs., Jr., DDS, ...).
_DECORATIONS = ("{{prefix", "{{suffix")
_PLAIN_NAME_FORMATS = ("{{first_name}} {{last_name}}",)


def _person(sampler: PersonSampler, *, column: str) -> Draw:
    try:
        faker = Faker(sampler.locale, use_weighting=False)
    except AttributeError as exc:
        raise ConfigError(
            [
                ConfigIssue(
                    path=f"columns ({column}).sampler.locale",
                    message=f"Faker has no locale {sampler.locale!r}",
                    hint="use a locale Faker ships, e.g. en_US, de_DE, fr_FR, ja_JP",
                )
            ]
        ) from exc
    seed_instance = faker.seed_instance
    if sampler.field == "full_name":
        return _full_name(faker, with_titles=sampler.with_titles)
    method: Callable[[], str] = getattr(faker, _PERSON_METHODS[sampler.field])

    def draw(state: int) -> str:
        seed_instance(state)
        return method()

    return draw


def _full_name(faker: Faker, *, with_titles: bool) -> Draw:
    """Names from the locale's formats; plain ones only (no prefix or suffix) by default."""
    provider = faker.provider("faker.providers.person")
    formats: tuple[str, ...] = tuple(getattr(provider, "formats", None) or _PLAIN_NAME_FORMATS)
    plain = tuple(pattern for pattern in formats if not any(d in pattern for d in _DECORATIONS))
    patterns = formats if with_titles or not plain else plain
    count = len(patterns)
    seed_instance, parse = faker.seed_instance, faker.parse

    def draw(state: int) -> str:
        seed_instance(state)
        # The pattern comes from the row's state, its parts from Faker seeded by the same state.
        return str(parse(patterns[(state * count) >> 64]))

    return draw
