"""Readiness contracts of the CompletionTracker: cell vs batch, drops, idempotent handoff."""

from __future__ import annotations

import pytest

from sluiceway.errors import EngineError
from sluiceway.scheduling.tasks import Task, TaskKind
from sluiceway.scheduling.tracker import CompletionTracker, TrackerNode

ROOT = TrackerNode(name="root", kind=TaskKind.FROM_SCRATCH, dependencies=())
CELL = TrackerNode(name="cell", kind=TaskKind.CELL, dependencies=(0,))
BATCH = TrackerNode(name="batch", kind=TaskKind.BATCH, dependencies=(1,))
AFTER = TrackerNode(name="after", kind=TaskKind.CELL, dependencies=(1, 2))


def _ids(tracker: CompletionTracker) -> list[str]:
    return [task.task_id for task in tracker.ready_frontier()]


def _take(tracker: CompletionTracker) -> list[Task]:
    tasks = tracker.ready_frontier()
    tracker.mark_enqueued(task.task_id for task in tasks)
    return tasks


def test_cell_tasks_become_ready_per_row_and_batch_waits_for_all_rows() -> None:
    tracker = CompletionTracker([ROOT, CELL, BATCH, AFTER])
    tracker.add_row_group(0, 3)
    (root,) = _take(tracker)
    assert root.task_id == "root/0/*"
    tracker.mark_complete(root)
    cells = _take(tracker)
    assert [t.task_id for t in cells] == ["cell/0/0", "cell/0/1", "cell/0/2"]
    tracker.mark_complete(cells[0])
    tracker.mark_complete(cells[1])
    assert _ids(tracker) == []  # batch waits for the last row; `after` waits for the batch
    tracker.mark_complete(cells[2])
    (batch,) = _take(tracker)
    assert batch.kind is TaskKind.BATCH
    tracker.mark_complete(batch)
    afters = _take(tracker)
    assert [t.task_id for t in afters] == ["after/0/0", "after/0/1", "after/0/2"]
    completed: list[int] = []
    for task in afters:
        completed += tracker.mark_complete(task)
    assert completed == [0]
    assert tracker.is_row_group_complete(0)


def test_a_dropped_row_unblocks_batch_readiness() -> None:
    tracker = CompletionTracker([ROOT, CELL, BATCH])
    tracker.add_row_group(7, 2)
    tracker.mark_complete(_take(tracker)[0])
    first, _second = _take(tracker)
    tracker.mark_complete(first)
    assert _ids(tracker) == []
    withdrawn, completed = tracker.drop_rows(7, [1])
    assert withdrawn == ["cell/7/1"]  # it was handed out and must leave the queue
    assert completed == []
    assert _ids(tracker) == ["batch/7/*"]
    assert tracker.live_rows(7) == [0]


def test_dropping_a_row_withdraws_its_not_yet_enqueued_tasks() -> None:
    tracker = CompletionTracker([ROOT, CELL])
    tracker.add_row_group(0, 2)
    tracker.mark_complete(_take(tracker)[0])
    assert _ids(tracker) == ["cell/0/0", "cell/0/1"]
    withdrawn, _ = tracker.drop_rows(0, [0])
    assert withdrawn == ["cell/0/0"]
    assert _ids(tracker) == ["cell/0/1"]


def test_dropping_every_row_completes_the_group() -> None:
    tracker = CompletionTracker([ROOT, CELL])
    tracker.add_row_group(0, 2)
    root = _take(tracker)[0]
    tracker.mark_complete(root)
    _take(tracker)
    _, completed = tracker.drop_rows(0, [0, 1])
    assert completed == [0]


def test_handoff_is_acknowledged_once_and_retry_re_enters_through_the_tracker() -> None:
    tracker = CompletionTracker([ROOT, CELL])
    tracker.add_row_group(0, 1)
    (root,) = tracker.ready_frontier()
    assert _ids(tracker) == ["root/0/*"]  # not acknowledged yet: still offered
    tracker.mark_enqueued([root.task_id])
    assert _ids(tracker) == []
    tracker.mark_ready_again(root)
    assert _ids(tracker) == ["root/0/*"]


def test_double_completion_is_an_engine_error() -> None:
    tracker = CompletionTracker([ROOT, CELL])
    tracker.add_row_group(0, 1)
    tracker.mark_complete(_take(tracker)[0])
    (cell,) = _take(tracker)
    tracker.mark_complete(cell)
    with pytest.raises(EngineError, match="completed twice"):
        tracker.mark_complete(cell)


def test_no_state_for_row_groups_not_admitted() -> None:
    tracker = CompletionTracker([ROOT, CELL])
    assert tracker.statistics().row_groups_active == 0
    assert tracker.ready_frontier() == []
