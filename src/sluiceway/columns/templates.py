"""Sandboxed Jinja for column templates: one environment per run, each template compiled once.

Rendering reuses the compiled root function with a context whose parent is the row itself, so a
render copies nothing; templates that read Jinja globals (``range``, ``namespace``, ...) get a
small merged scope instead. A template that only puts row values into text (``Write on {{ topic
}}``: literal text and bare names, the common prompt) skips Jinja at render time: its text is a
format string filled with ``str`` of each value, which is what Jinja's output of a bare name is.
If a value is missing (or ``str`` fails), Jinja renders it, so the error is Jinja's own. Render
failures become ``NonRetryableGenerationError`` naming the column and field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from sluiceway.errors import ConfigError, ConfigIssue, NonRetryableGenerationError

_RootRender = Callable[[Context], Iterator[str]]

# Parsing only, without globals, so that every free name (globals included) is reported.
_NAME_PARSER = jinja2.Environment(autoescape=False)
_NAME_PARSER.globals.clear()


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateStatistics:
    """How many templates and expressions this environment compiled."""

    templates_compiled: int
    expressions_compiled: int


class TemplateEnvironment:
    """The run's sandboxed Jinja environment (immutable sandbox, strict undefined, no escaping).

    Build one per run and compile every column template through it before work starts. Compiling
    raises ``ConfigError`` on a syntax error; it never blocks.
    """

    def __init__(self) -> None:
        self._env = ImmutableSandboxedEnvironment(
            undefined=jinja2.StrictUndefined, autoescape=False
        )
        self._templates_compiled = 0
        self._expressions_compiled = 0

    def compile_template(self, source: str, *, column: str, field: str) -> CompiledTemplate:
        """Compile ``source`` (column ``column``, config field ``field``) once."""
        try:
            template = self._env.from_string(source)
            names = _free_names(source)
            substitution = _substitution(self._env.parse(source))
        except jinja2.TemplateSyntaxError as exc:
            raise _syntax_error(column, field, source, exc) from exc
        self._templates_compiled += 1
        globals_used = _globals_used(names, template.globals)
        return CompiledTemplate(
            column=column,
            field=field,
            source=source,
            root=template.root_render_func,
            blocks=template.blocks,
            environment=self._env,
            globals_used=globals_used,
            substitution=None if globals_used else substitution,
        )

    def compile_expression(
        self, source: str, *, column: str, field: str = "skip_when"
    ) -> CompiledExpression:
        """Compile the Jinja expression ``source`` (e.g. ``language == 'fr'``) once."""
        try:
            names = _free_names("{{ (" + source + ") }}")
            expression = self._env.compile_expression(source, undefined_to_none=False)
        except jinja2.TemplateSyntaxError as exc:
            raise _syntax_error(column, field, source, exc) from exc
        self._expressions_compiled += 1
        # compile_expression wraps a one-statement template (``result = <expr>``); reuse it to
        # evaluate without the two row copies TemplateExpression.__call__ makes.
        template = getattr(expression, "_template", None)
        if not isinstance(template, jinja2.Template):
            raise ConfigError(
                [
                    ConfigIssue(
                        path=f"columns ({column}).{field}",
                        message=f"this Jinja version ({jinja2.__version__}) compiles expressions "
                        "in an unsupported way",
                        hint="install a jinja2 3.1.x release",
                    )
                ]
            )
        return CompiledExpression(
            column=column,
            field=field,
            source=source,
            root=template.root_render_func,
            environment=self._env,
            globals_used=_globals_used(names, template.globals),
        )

    def statistics(self) -> TemplateStatistics:
        return TemplateStatistics(
            templates_compiled=self._templates_compiled,
            expressions_compiled=self._expressions_compiled,
        )


class CompiledTemplate:
    """A template compiled once; ``render`` is safe to call concurrently on the loop thread.

    ``render`` raises ``NonRetryableGenerationError`` (with the Jinja error as ``__cause__``) when a
    variable is undefined, the sandbox refuses an access, or the template itself raises.
    """

    __slots__ = (
        "_blocks",
        "_env",
        "_globals",
        "_root",
        "_substitution",
        "column",
        "field",
        "source",
    )

    def __init__(
        self,
        *,
        column: str,
        field: str,
        source: str,
        root: _RootRender,
        blocks: Mapping[str, Callable[[Context], Iterator[str]]],
        environment: jinja2.Environment,
        globals_used: Mapping[str, Any],
        substitution: _Substitution | None = None,
    ) -> None:
        self.column = column
        self.field = field
        self.source = source
        self._root = root
        self._blocks = dict(blocks)
        self._env = environment
        self._globals = dict(globals_used)
        self._substitution = substitution

    def render(self, row: Mapping[str, Any]) -> str:
        substitution = self._substitution
        if substitution is not None:
            text, names = substitution
            try:
                return text.format(*[str(row[name]) for name in names])
            except Exception:  # Jinja renders it again and reports the error
                pass
        context = Context(self._env, _scope(row, self._globals), None, self._blocks)
        try:
            return "".join(self._root(context))
        except Exception as exc:
            raise _render_error(self.column, self.field, exc) from exc

    def __repr__(self) -> str:
        return f"CompiledTemplate(column={self.column!r}, field={self.field!r})"


class CompiledExpression:
    """A Jinja expression compiled once; ``evaluate`` returns its value for a row.

    Raises ``NonRetryableGenerationError`` like :meth:`CompiledTemplate.render`, also when the
    expression's value is undefined.
    """

    __slots__ = ("_env", "_globals", "_root", "column", "field", "source")

    def __init__(
        self,
        *,
        column: str,
        field: str,
        source: str,
        root: _RootRender,
        environment: jinja2.Environment,
        globals_used: Mapping[str, Any],
    ) -> None:
        self.column = column
        self.field = field
        self.source = source
        self._root = root
        self._env = environment
        self._globals = dict(globals_used)

    def evaluate(self, row: Mapping[str, Any]) -> Any:
        context = Context(self._env, _scope(row, self._globals), None, {})
        try:
            for _ in self._root(context):
                pass
            value = context.vars["result"]
            if isinstance(value, jinja2.Undefined):
                str(value)  # a StrictUndefined raises UndefinedError naming the variable
        except Exception as exc:
            raise _render_error(self.column, self.field, exc) from exc
        return value

    def __repr__(self) -> str:
        return f"CompiledExpression(column={self.column!r}, field={self.field!r})"


def _scope(row: Mapping[str, Any], globals_used: Mapping[str, Any]) -> dict[str, Any]:
    # The context only reads its parent (``in`` and ``[]``); assignments go to ``context.vars``.
    # So the row itself can be the parent, and columns shadow globals of the same name.
    if not globals_used:
        return cast("dict[str, Any]", row)
    return {**globals_used, **row}


_Substitution = tuple[str, tuple[str, ...]]  # (format string with "{}" fields, names in order)


def _substitution(template: nodes.Template) -> _Substitution | None:
    """The format string and names of a template that is only literal text and bare names
    (``{{ name }}``), or None for anything else (filters, attributes, tags, constants)."""
    text: list[str] = []
    names: list[str] = []
    for statement in template.body:
        if not isinstance(statement, nodes.Output):
            return None
        for node in statement.nodes:
            if isinstance(node, nodes.TemplateData):
                text.append(node.data.replace("{", "{{").replace("}", "}}"))
            elif isinstance(node, nodes.Name) and node.ctx == "load":
                text.append("{}")
                names.append(node.name)
            else:
                return None
    return "".join(text), tuple(names)


def _free_names(source: str) -> set[str]:
    return jinja2.meta.find_undeclared_variables(_NAME_PARSER.parse(source))


def _globals_used(names: set[str], template_globals: Mapping[str, Any]) -> dict[str, Any]:
    return {name: template_globals[name] for name in sorted(names) if name in template_globals}


def _syntax_error(
    column: str, field: str, source: str, exc: jinja2.TemplateSyntaxError
) -> ConfigError:
    return ConfigError(
        [
            ConfigIssue(
                path=f"columns ({column}).{field}",
                message=f"template syntax error at line {exc.lineno}: {exc.message} "
                f"(source: {_short(source)})",
                hint="check the {{ ... }} and {% ... %} delimiters",
            )
        ]
    )


def _render_error(column: str, field: str, exc: Exception) -> NonRetryableGenerationError:
    if isinstance(exc, SecurityError):
        fix = "templates may not read private attributes or call unsafe methods"
    elif isinstance(exc, jinja2.UndefinedError):
        fix = "every variable must be a column of the row (or a Jinja global)"
    else:
        fix = "fix the template, or the values it reads"
    return NonRetryableGenerationError(
        f"column {column!r}: rendering {field} failed with {type(exc).__name__}: {exc}; {fix}"
    )


def _short(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")
