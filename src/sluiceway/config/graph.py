"""The column dependency graph: who reads whom, found from template references and ``depends_on``.

A column depends on the *producing* column of every name its templates or ``skip_when`` read
(side columns such as ``reasoning_column`` or custom ``output_columns`` map to their producer).
Building the graph reports every unknown reference, self-reference, cycle and syntax error at once.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import jinja2
import jinja2.meta

from sluiceway.config.models import ColumnBase, close_match_hint
from sluiceway.errors import ConfigError, ConfigIssue

if TYPE_CHECKING:
    from sluiceway.config.models import DatasetConfig

# Names a template may use that are not columns: Jinja's default globals and loop/macro locals.
TEMPLATE_GLOBAL_NAMES: frozenset[str] = frozenset(jinja2.Environment().globals) | frozenset(
    {"loop", "self", "varargs", "kwargs", "caller"}
)

# Parsing only. No globals, so every free name is reported and a column may shadow a global.
_PARSER = jinja2.Environment(autoescape=False)
_PARSER.globals.clear()


def template_variables(source: str) -> frozenset[str]:
    """Top-level variable names a Jinja template reads (raises ``jinja2.TemplateSyntaxError``)."""
    return frozenset(jinja2.meta.find_undeclared_variables(_PARSER.parse(source)))


def expression_variables(expression: str) -> frozenset[str]:
    """Top-level variable names a Jinja expression (e.g. ``language == 'fr'``) reads."""
    return template_variables("{{ (" + expression + ") }}")


def column_path(index: int, name: str | None) -> str:
    """``columns[2] (summary)``: how issues name a column."""
    return f"columns[{index}] ({name})" if name else f"columns[{index}]"


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnGraph:
    """An acyclic dependency graph over the config's columns (by column name).

    Immutable; built only through ``build``/``from_columns``, which raise ``ConfigError``.
    """

    columns: tuple[str, ...]
    """Column names in config order."""
    _dependencies: Mapping[str, tuple[str, ...]] = field(repr=False)
    _dependents: Mapping[str, tuple[str, ...]] = field(repr=False)
    _producers: Mapping[str, str] = field(repr=False)
    _order: tuple[str, ...] = field(repr=False)

    @classmethod
    def build(cls, config: DatasetConfig) -> ColumnGraph:
        """The graph of ``config``'s columns."""
        return cls.from_columns(config.columns)

    @classmethod
    def from_columns(cls, columns: Sequence[ColumnBase]) -> ColumnGraph:
        """The graph of ``columns`` (config order); raises ConfigError listing every problem."""
        graph, issues = analyze_columns(list(enumerate(columns)))
        if issues or graph is None:
            raise ConfigError(issues)
        return graph

    def dependencies(self, column: str) -> tuple[str, ...]:
        """Producing columns that ``column`` reads, in config order."""
        return self._dependencies[self._known(column)]

    def dependents(self, column: str) -> tuple[str, ...]:
        """Columns that read ``column`` (or one of its side columns), in config order."""
        return self._dependents[self._known(column)]

    def topological_order(self) -> tuple[str, ...]:
        """Every column after all of its dependencies; ties keep config order."""
        return self._order

    def producer_of(self, output_column: str) -> str:
        """The column whose generator writes ``output_column`` (itself or a side column)."""
        try:
            return self._producers[output_column]
        except KeyError:
            raise _unknown("output column", output_column, list(self._producers)) from None

    def output_columns(self) -> tuple[str, ...]:
        """Every produced column name (main and side columns), in config order."""
        return tuple(self._producers)

    def _known(self, column: str) -> str:
        if column not in self._dependencies:
            raise _unknown("column", column, list(self.columns))
        return column


def _unknown(what: str, name: str, known: list[str]) -> ConfigError:
    return ConfigError(
        [
            ConfigIssue(
                path="columns",
                message=f"no {what} named {name!r}",
                hint=close_match_hint(name, known),
            )
        ]
    )


def analyze_columns(
    indexed_columns: Sequence[tuple[int, ColumnBase]],
    *,
    unparsed_names: Collection[str] = (),
) -> tuple[ColumnGraph | None, list[ConfigIssue]]:
    """Build the graph of the columns that parsed, collecting issues instead of raising.

    ``indexed_columns`` pairs each column with its index in the config (for issue paths);
    references to ``unparsed_names`` (columns that failed structural validation and are reported
    elsewhere) are ignored rather than reported as unknown.
    """
    issues: list[ConfigIssue] = []
    producers: dict[str, str] = {}
    producer_paths: dict[str, str] = {}
    paths: dict[str, str] = {}
    order_index: dict[str, int] = {}
    accepted: list[tuple[int, ColumnBase]] = []

    for index, column in indexed_columns:
        here = column_path(index, column.name)
        if column.name in paths:
            issues.append(
                ConfigIssue(
                    path=f"{here}.name",
                    message=f"column name {column.name!r} is already used by {paths[column.name]}",
                    hint="give every column a distinct name",
                )
            )
            continue
        paths[column.name] = here
        order_index[column.name] = len(accepted)
        accepted.append((index, column))
        for output in column.produced_columns():
            if output in producers:
                issues.append(
                    ConfigIssue(
                        path=here,
                        message=f"output column {output!r} is also produced by "
                        f"{producer_paths[output]}",
                        hint="rename the reasoning_column / output_columns entry",
                    )
                )
                continue
            producers[output] = column.name
            producer_paths[output] = here

    ignored = frozenset(unparsed_names) - producers.keys()
    # Names of columns that failed to parse are defined too: they appear in did-you-mean hints.
    known_names = sorted(producers.keys() | ignored)
    dependencies: dict[str, set[str]] = {name: set() for name in order_index}

    for index, column in accepted:
        here = column_path(index, column.name)
        references: list[tuple[str, frozenset[str]]] = []
        for field_name, source in column.template_fields().items():
            try:
                references.append((field_name, template_variables(source)))
            except jinja2.TemplateSyntaxError as exc:
                issues.append(_syntax_issue(f"{here}.{field_name}", "template", exc))
        if column.skip_when is not None:
            if _has_template_delimiters(column.skip_when):
                issues.append(_delimited_expression_issue(f"{here}.skip_when", column.skip_when))
            else:
                try:
                    references.append(("skip_when", expression_variables(column.skip_when)))
                except jinja2.TemplateSyntaxError as exc:
                    issues.append(_syntax_issue(f"{here}.skip_when", "expression", exc))

        for field_name, names in references:
            for name in sorted(names):
                if name in producers:
                    _add_dependency(issues, dependencies, column, producers[name], here, field_name)
                elif name in TEMPLATE_GLOBAL_NAMES or name in ignored:
                    continue
                else:
                    issues.append(
                        ConfigIssue(
                            path=f"{here}.{field_name}",
                            message=f"references unknown column {name!r}",
                            hint=close_match_hint(name, known_names),
                        )
                    )
        for name in column.depends_on:
            target = producers.get(name) or (name if name in order_index else None)
            if target is not None:
                _add_dependency(issues, dependencies, column, target, here, "depends_on")
            elif name not in ignored:
                issues.append(
                    ConfigIssue(
                        path=f"{here}.depends_on",
                        message=f"depends on unknown column {name!r}",
                        hint=close_match_hint(name, sorted(order_index.keys() | ignored)),
                    )
                )

    names_in_order = [column.name for _, column in accepted]
    order, cycles = _topological_order(names_in_order, dependencies, order_index)
    for cycle in cycles:
        issues.append(
            ConfigIssue(
                path=paths[cycle[0]],
                message=f"dependency cycle: {' -> '.join([*cycle, cycle[0]])}",
                hint="each column reads the next one; remove one of these references",
            )
        )
    if issues:
        return None, issues

    dependents: dict[str, list[str]] = {name: [] for name in names_in_order}
    for name in names_in_order:
        for dependency in dependencies[name]:
            dependents[dependency].append(name)
    graph = ColumnGraph(
        columns=tuple(names_in_order),
        _dependencies=MappingProxyType(
            {n: tuple(sorted(dependencies[n], key=order_index.__getitem__)) for n in names_in_order}
        ),
        _dependents=MappingProxyType({n: tuple(dependents[n]) for n in names_in_order}),
        _producers=MappingProxyType(dict(producers)),
        _order=tuple(order),
    )
    return graph, []


def _add_dependency(
    issues: list[ConfigIssue],
    dependencies: dict[str, set[str]],
    column: ColumnBase,
    target: str,
    here: str,
    field_name: str,
) -> None:
    if target == column.name:
        issues.append(
            ConfigIssue(
                path=f"{here}.{field_name}",
                message=f"column {column.name!r} depends on itself",
                hint="a column cannot read its own value or its own side columns",
            )
        )
        return
    dependencies[column.name].add(target)


def _syntax_issue(path: str, what: str, exc: jinja2.TemplateSyntaxError) -> ConfigIssue:
    return ConfigIssue(
        path=path,
        message=f"{what} syntax error at line {exc.lineno}: {exc.message}",
        hint="check the {{ }} / {% %} delimiters and the expression syntax",
    )


def _has_template_delimiters(expression: str) -> bool:
    return any(mark in expression for mark in ("{{", "}}", "{%", "%}"))


def _delimited_expression_issue(path: str, expression: str) -> ConfigIssue:
    bare = expression.strip().removeprefix("{{").removesuffix("}}").strip()
    example = bare if bare and not _has_template_delimiters(bare) else "language == 'fr'"
    return ConfigIssue(
        path=path,
        message=f"skip_when takes an expression without `{{{{ }}}}`; got {expression!r}",
        hint=f'drop the delimiters: `skip_when: "{example}"`',
    )


def _topological_order(
    names: list[str], dependencies: Mapping[str, set[str]], order_index: Mapping[str, int]
) -> tuple[list[str], list[list[str]]]:
    """Kahn's algorithm with config order breaking ties; returns (order, cycles found)."""
    waiting = {name: len(dependencies[name]) for name in names}
    dependents: dict[str, list[str]] = {name: [] for name in names}
    for name in names:
        for dependency in dependencies[name]:
            dependents[dependency].append(name)
    ready = [(order_index[name], name) for name in names if waiting[name] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for dependent in dependents[name]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, (order_index[dependent], dependent))
    if len(order) == len(names):
        return order, []
    stuck = [name for name in names if waiting[name] > 0]
    return order, _find_cycles(stuck, dependencies, order_index)


def _find_cycles(
    stuck: list[str], dependencies: Mapping[str, set[str]], order_index: Mapping[str, int]
) -> list[list[str]]:
    """One cycle per strongly connected component among ``stuck`` (Tarjan), each starting at
    its earliest column and following dependencies."""
    members = set(stuck)
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    def sorted_deps(name: str) -> list[str]:
        return sorted((d for d in dependencies[name] if d in members), key=order_index.__getitem__)

    def visit(root: str) -> None:
        nonlocal counter
        # Iterative Tarjan: (node, iterator over its dependencies).
        work: list[tuple[str, list[str]]] = []
        index_of[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work.append((root, sorted_deps(root)))
        while work:
            node, pending = work[-1]
            if pending:
                nxt = pending.pop(0)
                if nxt not in index_of:
                    index_of[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted_deps(nxt)))
                elif nxt in on_stack:
                    low[node] = min(low[node], index_of[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index_of[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)

    for name in sorted(members, key=order_index.__getitem__):
        if name not in index_of:
            visit(name)

    cycles: list[list[str]] = []
    for component in sorted(components, key=lambda c: min(order_index[n] for n in c)):
        inside = set(component)
        start = min(component, key=order_index.__getitem__)
        cycles.append(_cycle_through(start, inside, dependencies, order_index))
    return cycles


def _cycle_through(
    start: str,
    inside: set[str],
    dependencies: Mapping[str, set[str]],
    order_index: Mapping[str, int],
) -> list[str]:
    """A simple cycle from ``start`` back to itself inside one strongly connected component
    (breadth-first, so the shortest one, ties by config order)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        next_frontier: list[str] = []
        for node in frontier:
            for dep in sorted(dependencies[node] & inside, key=order_index.__getitem__):
                if dep == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return list(reversed(path))
                if dep not in parents:
                    parents[dep] = node
                    next_frontier.append(dep)
        frontier = next_frontier
    raise AssertionError(f"no cycle through {start!r} in a strongly connected component")
