"""The column graph: dependencies from templates, side-column mapping, order and errors."""

from __future__ import annotations

import pytest

from sluiceway.config import (
    CategorySampler,
    ColumnGraph,
    CustomColumnConfig,
    ExpressionColumnConfig,
    LLMTextColumnConfig,
    SamplerColumnConfig,
    expression_variables,
    template_variables,
)
from sluiceway.errors import ConfigError


def sampler(name: str) -> SamplerColumnConfig:
    return SamplerColumnConfig(name=name, sampler=CategorySampler(values=["a"]))


def expr(name: str, template: str, **fields: object) -> ExpressionColumnConfig:
    return ExpressionColumnConfig.model_validate({"name": name, "template": template, **fields})


def test_topological_order_puts_dependencies_first_and_keeps_config_order_for_ties() -> None:
    graph = ColumnGraph.from_columns(
        [
            expr("greeting", "Hi {{ full }}"),
            sampler("first"),
            expr("full", "{{ first }} {{ last }}"),
            sampler("last"),
            sampler("unrelated"),
        ]
    )
    assert graph.topological_order() == ("first", "last", "full", "greeting", "unrelated")
    assert graph.columns == ("greeting", "first", "full", "last", "unrelated")


def test_dependencies_and_dependents_are_in_config_order() -> None:
    graph = ColumnGraph.from_columns(
        [sampler("b"), sampler("a"), expr("c", "{{ a }}{{ b }}"), expr("d", "{{ b }}")]
    )
    assert graph.dependencies("c") == ("b", "a")
    assert graph.dependents("b") == ("c", "d")
    assert graph.dependencies("a") == ()


def test_side_columns_map_to_their_producer() -> None:
    graph = ColumnGraph.from_columns(
        [
            LLMTextColumnConfig(
                name="answer", model="m", prompt="Q", reasoning_column="answer_trace"
            ),
            CustomColumnConfig(name="split", function="pkg.mod:fn", output_columns=["x", "y"]),
            expr("review", "{{ answer_trace }} {{ y }}"),
        ]
    )
    assert graph.dependencies("review") == ("answer", "split")
    assert graph.producer_of("answer_trace") == "answer"
    assert graph.producer_of("y") == "split"
    assert graph.output_columns() == ("answer", "answer_trace", "x", "y", "review")


def test_skip_when_and_depends_on_add_dependencies() -> None:
    graph = ColumnGraph.from_columns(
        [
            sampler("language"),
            sampler("other"),
            expr("text", "static", skip_when="language == 'fr'", depends_on=["other"]),
        ]
    )
    assert graph.dependencies("text") == ("language", "other")


def test_custom_columns_have_no_implicit_dependencies() -> None:
    graph = ColumnGraph.from_columns(
        [sampler("a"), CustomColumnConfig(name="c", function="pkg.mod:fn", depends_on=["a"])]
    )
    assert graph.dependencies("c") == ("a",)


def test_jinja_locals_and_globals_are_not_columns() -> None:
    graph = ColumnGraph.from_columns(
        [
            sampler("items"),
            expr(
                "listing",
                "{% for item in items %}{{ loop.index }}{{ item }}{% endfor %}"
                "{% set n = 3 %}{{ range(n) | list }}",
            ),
        ]
    )
    assert graph.dependencies("listing") == ("items",)


def test_a_column_may_shadow_a_jinja_global() -> None:
    graph = ColumnGraph.from_columns([sampler("range"), expr("r", "{{ range }}")])
    assert graph.dependencies("r") == ("range",)


def test_longer_cycle_is_printed_in_dependency_order() -> None:
    with pytest.raises(ConfigError) as excinfo:
        ColumnGraph.from_columns(
            [expr("a", "{{ b }}"), expr("b", "{{ c }}"), expr("c", "{{ a }}"), sampler("d")]
        )
    messages = [issue.message for issue in excinfo.value.issues]
    assert messages == ["dependency cycle: a -> b -> c -> a"]


def test_two_independent_cycles_are_both_reported() -> None:
    with pytest.raises(ConfigError) as excinfo:
        ColumnGraph.from_columns(
            [expr("a", "{{ b }}"), expr("b", "{{ a }}"), expr("x", "{{ y }}"), expr("y", "{{ x }}")]
        )
    assert [issue.message for issue in excinfo.value.issues] == [
        "dependency cycle: a -> b -> a",
        "dependency cycle: x -> y -> x",
    ]


def test_reading_own_side_column_is_a_self_dependency() -> None:
    with pytest.raises(ConfigError) as excinfo:
        ColumnGraph.from_columns(
            [LLMTextColumnConfig(name="a", model="m", prompt="{{ a_r }}", reasoning_column="a_r")]
        )
    (issue,) = excinfo.value.issues
    assert issue.path == "columns[0] (a).prompt"
    assert "depends on itself" in issue.message


def test_unknown_names_raise_with_suggestions() -> None:
    with pytest.raises(ConfigError) as excinfo:
        ColumnGraph.from_columns([sampler("alpha"), expr("b", "{{ alpah }}", depends_on=["zz"])])
    rendered = [issue.render() for issue in excinfo.value.issues]
    assert rendered[0].startswith("columns[1] (b).template: references unknown column 'alpah'")
    assert "did you mean 'alpha'" in rendered[0]
    assert rendered[1].startswith("columns[1] (b).depends_on: depends on unknown column 'zz'")


def test_lookups_of_unknown_names_raise_config_error() -> None:
    graph = ColumnGraph.from_columns([sampler("alpha")])
    with pytest.raises(ConfigError, match="alpha"):
        graph.dependencies("alpah")
    with pytest.raises(ConfigError, match="did you mean 'alpha'"):
        graph.producer_of("alpah")


def test_variable_helpers() -> None:
    assert template_variables("{{ a }} {% if b %}{{ c.d }}{% endif %}") == {"a", "b", "c"}
    assert expression_variables("language == 'fr' and not draft") == {"language", "draft"}
