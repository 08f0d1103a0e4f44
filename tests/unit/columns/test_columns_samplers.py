"""Samplers: values depend only on (seed, column, row), distributions and formats hold."""

from __future__ import annotations

import datetime as dt
import statistics
import uuid
from collections import Counter
from collections.abc import Sequence

import pytest
from faker import Faker
from pydantic import ValidationError

from sluiceway.columns.base import GenerationContext, GenerationStrategy
from sluiceway.columns.row_seeds import GAMMA, column_base, column_key, mix64, row_state
from sluiceway.columns.samplers import SamplerColumnGenerator
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
from sluiceway.errors import ConfigError
from sluiceway.testing import FakeModelCalls

START = dt.datetime(2024, 1, 1)
END = dt.datetime(2024, 1, 2)

SPECS: dict[str, SamplerSpec] = {
    "category": CategorySampler(values=["a", "b", "c"], weights=[1, 2, 3]),
    "uniform": UniformSampler(low=-1.0, high=1.0),
    "integer": IntegerSampler(low=0, high=9),
    "gaussian": GaussianSampler(mean=10.0, stddev=2.0),
    "uuid": UuidSampler(),
    "datetime": DatetimeSampler(start=START, end=END),
    "boolean": BooleanSampler(probability=0.3),
    "person": PersonSampler(field="full_name"),
}


def ctx(rows: Sequence[int], *, seed: int = 7, row_group: int = 0) -> GenerationContext:
    return GenerationContext(
        seed=seed, column="c", row_group=row_group, row_indices=rows, models=FakeModelCalls()
    )


def test_mix64_is_splitmix64() -> None:
    # The first outputs of splitmix64 seeded with 0 (reference implementation).
    assert mix64(GAMMA) == 0xE220A8397B1DCDAF
    assert mix64(2 * GAMMA) == 0x6E789E6AA1B965F4


def test_row_states_differ_by_column_seed_and_row() -> None:
    base = column_base(1, column_key("a"))
    states = {row_state(base, row) for row in range(1000)}
    states |= {row_state(column_base(2, column_key("a")), row) for row in range(1000)}
    states |= {row_state(column_base(1, column_key("b")), row) for row in range(1000)}
    assert len(states) == 3000
    assert column_key("a") == column_key("a") != column_key("b")


@pytest.mark.parametrize("kind", sorted(SPECS))
async def test_values_do_not_depend_on_the_row_group_split(kind: str) -> None:
    generator = SamplerColumnGenerator(name="col", sampler=SPECS[kind])
    assert generator.strategy is GenerationStrategy.FROM_SCRATCH
    assert generator.get_scheduling_metadata() is None
    whole = await generator.generate_from_scratch(ctx(range(40)))
    split: list[object] = []
    for group, (start, stop) in enumerate([(0, 10), (10, 13), (13, 40)]):
        split.extend(
            await generator.generate_from_scratch(ctx(range(start, stop), row_group=group))
        )
    assert split == list(whole)
    again = SamplerColumnGenerator(name="col", sampler=SPECS[kind])
    assert await again.generate_from_scratch(ctx(range(40))) == whole
    # A subset of rows (e.g. after drops) keeps each row's value.
    assert await generator.generate_from_scratch(ctx([3, 17])) == [whole[3], whole[17]]


@pytest.mark.parametrize("kind", sorted(set(SPECS) - {"boolean"}))
def test_seed_and_column_name_change_the_values(kind: str) -> None:
    first = SamplerColumnGenerator(name="col", sampler=SPECS[kind])
    other = SamplerColumnGenerator(name="other", sampler=SPECS[kind])
    rows = range(30)
    assert first.values(7, rows) != first.values(8, rows)
    assert first.values(7, rows) != other.values(7, rows)


def test_category_weights_are_respected() -> None:
    spec = CategorySampler(values=["a", "b", "c", "never"], weights=[1, 2, 7, 0])
    counts = Counter(SamplerColumnGenerator(name="c", sampler=spec).values(3, range(20_000)))
    assert counts["never"] == 0
    for value, share in {"a": 0.1, "b": 0.2, "c": 0.7}.items():
        assert abs(counts[value] / 20_000 - share) < 0.02


def test_unweighted_category_uses_every_value() -> None:
    spec = CategorySampler(values=[1, 2, 3, 4])
    counts = Counter(SamplerColumnGenerator(name="c", sampler=spec).values(3, range(4000)))
    assert set(counts) == {1, 2, 3, 4}
    assert min(counts.values()) > 800


def test_numeric_ranges() -> None:
    rows = range(5000)
    uniform = SamplerColumnGenerator(name="u", sampler=SPECS["uniform"]).values(1, rows)
    assert all(-1.0 <= v < 1.0 for v in uniform)
    assert abs(statistics.fmean(uniform)) < 0.05
    integers = SamplerColumnGenerator(name="i", sampler=SPECS["integer"]).values(1, rows)
    assert set(integers) == set(range(10))  # both bounds are inclusive
    gauss = SamplerColumnGenerator(name="g", sampler=SPECS["gaussian"]).values(1, rows)
    assert abs(statistics.fmean(gauss) - 10.0) < 0.15
    assert abs(statistics.stdev(gauss) - 2.0) < 0.15
    huge = IntegerSampler(low=0, high=2**70)
    assert all(
        0 <= v <= 2**70 for v in SamplerColumnGenerator(name="h", sampler=huge).values(1, rows)
    )


def test_boolean_probability() -> None:
    values = SamplerColumnGenerator(name="b", sampler=SPECS["boolean"]).values(1, range(10_000))
    assert abs(sum(values) / 10_000 - 0.3) < 0.02
    never = SamplerColumnGenerator(name="b", sampler=BooleanSampler(probability=0.0))
    always = SamplerColumnGenerator(name="b", sampler=BooleanSampler(probability=1.0))
    assert not any(never.values(1, range(1000)))
    assert all(always.values(1, range(1000)))


def test_uuids_are_valid_version_4_and_unique() -> None:
    values = SamplerColumnGenerator(name="id", sampler=UuidSampler()).values(5, range(10_000))
    assert len(set(values)) == 10_000
    for value in values[:500]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value


def test_datetimes_are_datetimes_in_range() -> None:
    values = SamplerColumnGenerator(name="at", sampler=SPECS["datetime"]).values(5, range(2000))
    assert all(isinstance(v, dt.datetime) and START <= v < END for v in values)
    assert max(values) - min(values) > dt.timedelta(hours=20)
    aware = DatetimeSampler(
        start=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), end=dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    )
    for value in SamplerColumnGenerator(name="at", sampler=aware).values(5, range(100)):
        assert value.tzinfo is dt.UTC


@pytest.mark.parametrize(
    "field",
    ["first_name", "last_name", "full_name", "email", "phone", "city", "country", "job", "company"],
)
def test_person_fields_are_non_empty_and_deterministic(field: str) -> None:
    spec = PersonSampler.model_validate({"field": field, "locale": "en_US"})
    first = SamplerColumnGenerator(name="who", sampler=spec).values(9, range(30))
    second = SamplerColumnGenerator(name="who", sampler=spec).values(9, list(reversed(range(30))))
    assert first == list(reversed(second))
    assert all(isinstance(v, str) and v.strip() for v in first)
    assert len(set(first)) > 10
    if field == "email":
        assert all("@" in v for v in first)


def test_person_locale_is_used_and_unknown_locales_are_config_errors() -> None:
    german = SamplerColumnGenerator(
        name="city", sampler=PersonSampler(field="city", locale="de_DE")
    ).values(1, range(5))
    english = SamplerColumnGenerator(
        name="city", sampler=PersonSampler(field="city", locale="en_US")
    ).values(1, range(5))
    assert german != english
    with pytest.raises(ConfigError) as info:
        SamplerColumnGenerator(name="who", sampler=PersonSampler(locale="xx_XX"))
    assert info.value.issues[0].path == "columns (who).sampler.locale"


def _decorations(locale: str) -> set[str]:
    """Every title and suffix the locale's Faker name provider can put around a name."""
    provider = Faker(locale).provider("faker.providers.person")
    words: set[str] = set()
    for attribute in ("prefixes", "prefixes_male", "prefixes_female", "prefixes_nonbinary"):
        words.update(getattr(provider, attribute, ()))
    for attribute in ("suffixes", "suffixes_male", "suffixes_female", "suffixes_nonbinary"):
        words.update(getattr(provider, attribute, ()))
    return words


def test_full_names_are_plain_first_and_last_names_by_default() -> None:
    decorations = _decorations("en_US")
    names = SamplerColumnGenerator(name="who", sampler=PersonSampler()).values(7, range(500))
    decorated = [name for name in names if set(name.split()) & decorations]
    assert decorated == []
    assert all(len(name.split()) == 2 for name in names)
    assert len(set(names)) > 450


def test_full_names_with_titles_draw_decorated_forms_too_and_stay_deterministic() -> None:
    decorations = _decorations("en_US")
    spec = PersonSampler(field="full_name", with_titles=True)
    names = SamplerColumnGenerator(name="who", sampler=spec).values(7, range(500))
    again = SamplerColumnGenerator(name="who", sampler=spec).values(7, range(500))
    assert names == again
    decorated = [name for name in names if set(name.split()) & decorations]
    assert 0 < len(decorated) < len(names)


def test_plain_full_names_are_deterministic_per_seed_and_row() -> None:
    spec = PersonSampler()
    forward = SamplerColumnGenerator(name="who", sampler=spec).values(3, range(40))
    backward = SamplerColumnGenerator(name="who", sampler=spec).values(3, range(39, -1, -1))
    other_seed = SamplerColumnGenerator(name="who", sampler=spec).values(4, range(40))
    assert forward == list(reversed(backward))
    assert forward != other_seed


def test_plain_full_names_follow_the_locale_order() -> None:
    spec = PersonSampler(locale="ja_JP")
    names = SamplerColumnGenerator(name="who", sampler=spec).values(1, range(50))
    provider = Faker("ja_JP").provider("faker.providers.person")
    last_names = set(getattr(provider, "last_names", ()))
    assert all(name.split()[0] in last_names for name in names)


def test_with_titles_applies_to_full_names_only() -> None:
    with pytest.raises(ValidationError) as info:
        PersonSampler(field="email", with_titles=True)
    assert "with_titles only applies to field 'full_name'" in str(info.value)
