"""Runs freeze the objects that existed before them and give them back to the collector after,
also when runs overlap, and leave a process that froze objects itself alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from sluiceway.engine.collector import long_lived_objects_frozen


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_objects_alive_at_entry_are_frozen_during_the_run_only() -> None:
    assert gc.get_freeze_count() == 0
    with long_lived_objects_frozen():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        created_inside = [[] for _ in range(100)]
        assert gc.get_freeze_count() == frozen  # objects made by the run stay collectable
    assert gc.get_freeze_count() == 0
    assert created_inside


def test_overlapping_runs_unfreeze_when_the_last_one_ends() -> None:
    first = long_lived_objects_frozen()
    second = long_lived_objects_frozen()
    first.__enter__()
    frozen = gc.get_freeze_count()
    second.__enter__()
    assert gc.get_freeze_count() == frozen  # not frozen twice
    first.__exit__(None, None, None)
    assert gc.get_freeze_count() == frozen  # the second run is still going
    second.__exit__(None, None, None)
    assert gc.get_freeze_count() == 0


def test_a_freeze_made_by_the_process_is_left_as_it_was() -> None:
    gc.freeze()
    before = gc.get_freeze_count()
    with long_lived_objects_frozen():
        assert gc.get_freeze_count() == before
    assert gc.get_freeze_count() == before


def test_unfreezes_when_the_run_raises() -> None:
    with pytest.raises(RuntimeError), long_lived_objects_frozen():
        raise RuntimeError("the run failed")
    assert gc.get_freeze_count() == 0
