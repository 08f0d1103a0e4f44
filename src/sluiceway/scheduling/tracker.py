"""Dependency readiness per admitted row group (SPEC §4): the ``CompletionTracker``.

State exists only for admitted row groups and is O(rows x generators) per group; nothing is
allocated per record of the whole plan. A cell task is ready when its row's cell dependencies are
done and every group-level dependency (batch / from_scratch) of its row group is done; a group-level
task is ready when every live row of its group has its dependencies. Dropping a row withdraws its
pending cell tasks and may make group-level tasks ready.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sluiceway.errors import EngineError
from sluiceway.scheduling.tasks import Task, TaskKind, make_task


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackerNode:
    """A generator as the tracker sees it: its kind and the generators it depends on."""

    name: str
    kind: TaskKind
    dependencies: tuple[int, ...]  # indices of earlier nodes


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackerStatistics:
    row_groups_active: int
    ready_not_enqueued: int
    completed_tasks: int
    dropped_rows: int


class _Node:
    __slots__ = (
        "cell_dependents",
        "group_dependents",
        "index",
        "is_cell",
        "kind",
        "n_cell_deps",
        "n_group_deps",
        "name",
    )

    def __init__(self, index: int, node: TrackerNode) -> None:
        self.index = index
        self.name = node.name
        self.kind = node.kind
        self.is_cell = node.kind is TaskKind.CELL
        self.cell_dependents: list[int] = []
        self.group_dependents: list[int] = []
        self.n_cell_deps = 0
        self.n_group_deps = 0


class _RowGroup:
    """Readiness counters of one admitted row group."""

    __slots__ = (
        "completed",
        "done_nodes",
        "group_deps_waiting",
        "live",
        "live_count",
        "nodes_remaining",
        "pending",
        "reported_complete",
        "rows_remaining",
        "size",
    )

    def __init__(self, nodes: Sequence[_Node], size: int) -> None:
        self.size = size
        self.live = [True] * size
        self.live_count = size
        # Per node: group-level dependencies not yet done in this row group.
        self.group_deps_waiting = [node.n_group_deps for node in nodes]
        # Per cell node: per row, cell dependencies not yet done; and whether the row is done.
        self.pending: list[list[int] | None] = [
            [node.n_cell_deps] * size if node.is_cell else None for node in nodes
        ]
        self.completed: list[list[bool] | None] = [
            [False] * size if node.is_cell else None for node in nodes
        ]
        # Per cell node: live rows that still lack it (0 -> the node is done for the group).
        self.rows_remaining = [size if node.is_cell else 0 for node in nodes]
        self.nodes_remaining = len(nodes)
        self.done_nodes = [False] * len(nodes)
        self.reported_complete = False


class CompletionTracker:
    """Tells which tasks are dependency-ready; never enqueues, orders or admits."""

    def __init__(self, nodes: Sequence[TrackerNode]) -> None:
        self._nodes = [_Node(i, node) for i, node in enumerate(nodes)]
        for index, node in enumerate(nodes):
            for dep in node.dependencies:
                if not 0 <= dep < index:
                    raise EngineError(
                        f"node {node.name!r} depends on index {dep}; nodes must be topological"
                    )
                dep_node = self._nodes[dep]
                if self._nodes[index].is_cell and dep_node.is_cell:
                    dep_node.cell_dependents.append(index)
                    self._nodes[index].n_cell_deps += 1
                else:
                    dep_node.group_dependents.append(index)
                    self._nodes[index].n_group_deps += 1
        self._groups: dict[int, _RowGroup] = {}
        self._frontier: dict[str, Task] = {}
        self._completed_tasks = 0
        self._dropped_rows = 0

    # -- row groups ---------------------------------------------------------------------------

    def add_row_group(self, row_group: int, size: int) -> None:
        if row_group in self._groups:
            raise EngineError(f"row group {row_group} is already tracked")
        if size < 1:
            raise EngineError(f"row group {row_group} must have at least one row, got {size}")
        state = _RowGroup(self._nodes, size)
        self._groups[row_group] = state
        for node in self._nodes:
            if state.group_deps_waiting[node.index] == 0:
                self._node_unblocked(row_group, state, node)

    def is_row_group_complete(self, row_group: int) -> bool:
        return self._groups[row_group].nodes_remaining == 0

    def forget_row_group(self, row_group: int, *, salvaged: bool = False) -> None:
        """Drop the state of a checkpointed row group (``salvaged``: work may be left)."""
        state = self._groups.pop(row_group)
        if state.nodes_remaining and not salvaged:
            raise EngineError(f"row group {row_group} forgotten with work left")

    def root_generators(self) -> list[int]:
        """Generators without dependencies: the first tasks of every row group."""
        return [
            node.index for node in self._nodes if not node.n_cell_deps and not node.n_group_deps
        ]

    def unfinished_rows(self, row_group: int) -> dict[int, str]:
        """Live rows that some generator has not finished, each with the first such generator."""
        state = self._groups[row_group]
        unfinished: dict[int, str] = {}
        for row in range(state.size):
            if not state.live[row]:
                continue
            for node in self._nodes:
                completed = state.completed[node.index]
                done = completed[row] if completed is not None else state.done_nodes[node.index]
                if not done:
                    unfinished[row] = node.name
                    break
        return unfinished

    def tracked_row_groups(self) -> list[int]:
        return list(self._groups)

    def live_rows(self, row_group: int) -> list[int]:
        state = self._groups[row_group]
        return [i for i, alive in enumerate(state.live) if alive]

    def is_live(self, row_group: int, row_index: int) -> bool:
        return self._groups[row_group].live[row_index]

    # -- handoff ------------------------------------------------------------------------------

    def ready_frontier(self) -> list[Task]:
        """Ready tasks not yet acknowledged by :meth:`mark_enqueued`, oldest first."""
        return list(self._frontier.values())

    def has_ready(self) -> bool:
        return bool(self._frontier)

    def mark_enqueued(self, task_ids: Iterable[str]) -> None:
        frontier = self._frontier
        for task_id in task_ids:
            frontier.pop(task_id, None)

    def mark_ready_again(self, task: Task) -> None:
        """Put a task back on the frontier (a retry after its previous lease was released)."""
        if task.row_index is not None and not self.is_live(task.row_group, task.row_index):
            return
        self._frontier[task.task_id] = task

    def mark_complete(self, task: Task) -> list[int]:
        """Record a task's success; return row groups that became complete."""
        self._completed_tasks += 1
        state = self._groups[task.row_group]
        node = self._nodes[task.generator]
        if task.row_index is None:
            self._finish_node(task.row_group, state, node)
        else:
            row = task.row_index
            if not state.live[row]:
                # The row was dropped while this task ran; the drop already did the accounting.
                return self._complete_groups(task.row_group, state)
            completed = state.completed[node.index]
            assert completed is not None
            if completed[row]:
                raise EngineError(f"task {task.task_id} completed twice")
            completed[row] = True
            for dependent in node.cell_dependents:
                pending = state.pending[dependent]
                assert pending is not None
                pending[row] -= 1
                if pending[row] == 0 and state.group_deps_waiting[dependent] == 0:
                    self._make_cell_ready(task.row_group, self._nodes[dependent], row)
            state.rows_remaining[node.index] -= 1
            if state.rows_remaining[node.index] == 0:
                self._finish_node(task.row_group, state, node)
        return self._complete_groups(task.row_group, state)

    def drop_rows(self, row_group: int, rows: Iterable[int]) -> tuple[list[str], list[int]]:
        """Drop rows; return (withdrawn ready task ids, row groups that became complete)."""
        state = self._groups[row_group]
        withdrawn: list[str] = []
        for row in rows:
            if not state.live[row]:
                continue
            state.live[row] = False
            state.live_count -= 1
            self._dropped_rows += 1
            for node in self._nodes:
                if not node.is_cell:
                    continue
                completed = state.completed[node.index]
                assert completed is not None
                if completed[row]:
                    continue
                task_id = f"{node.name}/{row_group}/{row}"
                if self._frontier.pop(task_id, None) is not None or (
                    self._is_unblocked(state, node, row)
                ):
                    withdrawn.append(task_id)
                state.rows_remaining[node.index] -= 1
                if state.rows_remaining[node.index] == 0:
                    self._finish_node(row_group, state, node)
        return withdrawn, self._complete_groups(row_group, state)

    def statistics(self) -> TrackerStatistics:
        return TrackerStatistics(
            row_groups_active=len(self._groups),
            ready_not_enqueued=len(self._frontier),
            completed_tasks=self._completed_tasks,
            dropped_rows=self._dropped_rows,
        )

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _is_unblocked(state: _RowGroup, node: _Node, row: int) -> bool:
        pending = state.pending[node.index]
        assert pending is not None
        return pending[row] == 0 and state.group_deps_waiting[node.index] == 0

    def _complete_groups(self, row_group: int, state: _RowGroup) -> list[int]:
        """Report a row group's completion exactly once."""
        if state.nodes_remaining or state.reported_complete:
            return []
        state.reported_complete = True
        return [row_group]

    def _make_cell_ready(self, row_group: int, node: _Node, row: int) -> None:
        task = make_task(node.index, node.name, row_group, row, TaskKind.CELL)
        self._frontier[task.task_id] = task

    def _node_unblocked(self, row_group: int, state: _RowGroup, node: _Node) -> None:
        """All group-level dependencies of ``node`` are done in this row group."""
        if node.is_cell:
            pending = state.pending[node.index]
            assert pending is not None
            if state.rows_remaining[node.index] == 0:
                # Every row was dropped before the node could run.
                return
            for row in range(state.size):
                if pending[row] == 0 and state.live[row]:
                    self._make_cell_ready(row_group, node, row)
        else:
            task = make_task(node.index, node.name, row_group, None, node.kind)
            self._frontier[task.task_id] = task

    def _finish_node(self, row_group: int, state: _RowGroup, node: _Node) -> None:
        """``node`` is done for every live row of the row group."""
        state.nodes_remaining -= 1
        state.done_nodes[node.index] = True
        if state.nodes_remaining < 0:
            raise EngineError(f"node {node.name!r} finished twice in row group {row_group}")
        for dependent in node.group_dependents:
            state.group_deps_waiting[dependent] -= 1
            if state.group_deps_waiting[dependent] == 0:
                self._node_unblocked(row_group, state, self._nodes[dependent])
