"""Sandboxed templates: compiled once, rendered without copying rows, failures named."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import jinja2
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from sluiceway.columns.templates import TemplateEnvironment
from sluiceway.errors import ConfigError, NonRetryableGenerationError

ROW: dict[str, Any] = {
    "topic": "cats",
    "n": 3,
    "tags": ["a", "b"],
    "facts": {"tone": "warm"},
    "flag": False,
}


@pytest.mark.parametrize(
    "source",
    [
        "Write about {{ topic }} ({{ n }})",
        "{{ facts.tone }} / {{ facts['tone'] }} / {{ tags | join(',') }}",
        "{% for t in tags %}{{ loop.index }}={{ t }};{% endfor %}",
        "{% for i in range(n) %}{{ i }}{% endfor %}",
        "{% set ns = namespace(total=0) %}{% for i in range(n) %}"
        "{% set ns.total = ns.total + i %}{% endfor %}{{ ns.total }}",
        "{% set greeting = 'hi ' ~ topic %}{{ greeting | upper }}",
        "{% if flag %}yes{% else %}no{% endif %} {{ n * 2 }}",
        "{% macro twice(x) %}{{ x }}{{ x }}{% endmacro %}{{ twice(topic) }}",
    ],
)
def test_render_matches_jinja_for_the_same_template(source: str) -> None:
    compiled = TemplateEnvironment().compile_template(source, column="c", field="template")
    reference = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(source)
    assert compiled.render(ROW) == reference.render(ROW)


def test_render_reads_any_mapping_and_never_writes_to_the_row() -> None:
    compiled = TemplateEnvironment().compile_template(
        "{% set topic = 'dogs' %}{{ topic }} {{ n }}", column="c", field="template"
    )
    row = MappingProxyType({"topic": "cats", "n": 1})
    assert compiled.render(row) == "dogs 1"
    assert dict(row) == {"topic": "cats", "n": 1}


def test_a_column_shadows_a_jinja_global_of_the_same_name() -> None:
    compiled = TemplateEnvironment().compile_template(
        "{{ range }} {{ dict(a=1)['a'] }}", column="c", field="template"
    )
    assert compiled.render({"range": "wide"}) == "wide 1"


def test_each_template_is_compiled_once_however_often_it_renders() -> None:
    env = TemplateEnvironment()
    prompt = env.compile_template("Hi {{ topic }}", column="c", field="prompt")
    skip = env.compile_expression("n > 2", column="c")
    for n in range(50):
        assert prompt.render({"topic": n}) == f"Hi {n}"
        assert skip.evaluate({"n": n}) is (n > 2)
    stats = env.statistics()
    assert (stats.templates_compiled, stats.expressions_compiled) == (1, 1)


def test_the_sandbox_blocks_private_attribute_access() -> None:
    compiled = TemplateEnvironment().compile_template(
        "{{ ''.__class__.__mro__ }}", column="story", field="prompt"
    )
    with pytest.raises(NonRetryableGenerationError, match=r"'story'.*prompt") as info:
        compiled.render(ROW)
    assert isinstance(info.value.__cause__, SecurityError)
    assert "private attributes" in str(info.value)


def test_the_immutable_sandbox_blocks_mutating_row_values() -> None:
    compiled = TemplateEnvironment().compile_template(
        "{{ tags.append('c') }}", column="c", field="template"
    )
    with pytest.raises(NonRetryableGenerationError, match="SecurityError"):
        compiled.render(ROW)
    assert ROW["tags"] == ["a", "b"]


def test_an_undefined_variable_at_run_time_names_column_field_and_variable() -> None:
    compiled = TemplateEnvironment().compile_template(
        "{{ topic }} {{ missing }}", column="title", field="template"
    )
    with pytest.raises(NonRetryableGenerationError) as info:
        compiled.render(ROW)
    message = str(info.value)
    assert "'title'" in message and "template" in message and "missing" in message
    assert isinstance(info.value.__cause__, jinja2.UndefinedError)


def test_a_template_error_in_user_logic_is_non_retryable() -> None:
    compiled = TemplateEnvironment().compile_template("{{ n / 0 }}", column="c", field="template")
    with pytest.raises(NonRetryableGenerationError, match="ZeroDivisionError"):
        compiled.render(ROW)


def test_syntax_errors_are_config_errors_naming_the_field() -> None:
    env = TemplateEnvironment()
    with pytest.raises(ConfigError) as info:
        env.compile_template("{{ topic ", column="title", field="template")
    assert info.value.issues[0].path == "columns (title).template"
    with pytest.raises(ConfigError) as info:
        env.compile_expression("n >", column="title")
    assert info.value.issues[0].path == "columns (title).skip_when"
    assert env.statistics().templates_compiled == 0


def test_expressions_return_values_and_use_globals() -> None:
    env = TemplateEnvironment()
    assert env.compile_expression("topic ~ '!'", column="c").evaluate(ROW) == "cats!"
    assert env.compile_expression("n in range(5)", column="c").evaluate(ROW) is True
    assert env.compile_expression("facts.tone == 'warm'", column="c").evaluate(ROW) is True


def test_an_undefined_expression_value_is_an_error_not_none() -> None:
    expression = TemplateEnvironment().compile_expression("missing", column="c")
    with pytest.raises(NonRetryableGenerationError, match=r"'c'.*skip_when.*missing"):
        expression.evaluate(ROW)


_FRAGMENTS = st.sampled_from(
    [
        "Write on ",
        " ",
        "{",
        "}",
        "{x}",
        "\n",
        "{{ topic }}",
        "{{topic}}",
        "{{- n -}}",
        "{{ n }}",
        "{{ missing }}",
        "{{ none }}",
        "{% raw %}{{ a }}{% endraw %}",
        "{# note #}",
        "-",
        "%",
    ]
)
_VALUES = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8))


@settings(max_examples=200, deadline=None)
@given(
    fragments=st.lists(_FRAGMENTS, max_size=8),
    trailing_newline=st.booleans(),
    topic=_VALUES,
    n=_VALUES,
    none=st.none(),
)
def test_text_and_bare_names_render_exactly_as_jinja_does(
    fragments: list[str], trailing_newline: bool, topic: object, n: object, none: None
) -> None:
    source = "".join(fragments) + ("\n" if trailing_newline else "")
    row = {"topic": topic, "n": n, "none": none}
    environment = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
    try:
        reference = environment.from_string(source)
    except jinja2.TemplateSyntaxError:
        assume(False)  # fragments like "{" "{" join into a tag that never closes
    compiled = TemplateEnvironment().compile_template(source, column="c", field="template")
    problem: str | None = None
    try:
        expected = reference.render(row)
    except jinja2.UndefinedError as exc:
        problem = str(exc)
    if problem is None:
        assert compiled.render(row) == expected
    else:
        with pytest.raises(NonRetryableGenerationError, match="UndefinedError") as caught:
            compiled.render(row)
        assert problem in str(caught.value)
