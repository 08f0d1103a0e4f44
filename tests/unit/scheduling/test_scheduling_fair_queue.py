"""Contract tests of the weighted-fair queue shared by tasks and request waiters."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from sluiceway.fair_queue import QueueEntry, WeightedFairQueue


def _entry(item_id: str, group: str, weight: float = 1.0) -> QueueEntry[str]:
    return QueueEntry(item_id=item_id, group=group, weight=weight, item=item_id)


def _drain(queue: WeightedFairQueue[str], count: int) -> list[str]:
    order = []
    for _ in range(count):
        selection = queue.select_next()
        assert selection is not None
        item = queue.commit(selection)
        assert item is not None
        order.append(item)
    return order


def test_weighted_order_across_backlogged_groups() -> None:
    queue: WeightedFairQueue[str] = WeightedFairQueue()
    queue.enqueue(_entry(f"a{i}", "a", 3) for i in range(30))
    queue.enqueue(_entry(f"b{i}", "b", 1) for i in range(30))
    first = _drain(queue, 20)
    shares = Counter(item[0] for item in first)
    assert shares == {"a": 15, "b": 5}
    # FIFO within a group.
    assert [item for item in first if item[0] == "a"] == [f"a{i}" for i in range(15)]


def test_enqueue_is_idempotent_by_id() -> None:
    queue: WeightedFairQueue[str] = WeightedFairQueue()
    assert queue.enqueue([_entry("x", "g"), _entry("y", "g")]) == ["x", "y"]
    assert queue.enqueue([_entry("x", "g"), _entry("z", "h")]) == ["z"]
    assert len(queue) == 3
    assert queue.statistics().duplicates_ignored == 1


def test_selection_is_not_mutating_and_stale_commit_is_refused() -> None:
    queue: WeightedFairQueue[str] = WeightedFairQueue()
    queue.enqueue([_entry("x", "g")])
    first = queue.select_next()
    again = queue.select_next()
    assert first is not None and again is not None
    assert first.entry is again.entry
    queue.enqueue([_entry("y", "h")])
    assert queue.commit(first) is None
    assert len(queue) == 2
    assert queue.statistics().stale_commits == 1


def test_ineligible_head_is_skipped_without_losing_its_turn() -> None:
    queue: WeightedFairQueue[str] = WeightedFairQueue()
    queue.enqueue([_entry("a1", "a"), _entry("b1", "b"), _entry("a2", "a")])
    selection = queue.select_next(lambda entry: entry.group != "a")
    assert selection is not None
    assert selection.entry.item_id == "b1"
    queue.commit(selection)
    assert _drain(queue, 2) == ["a1", "a2"]


def test_newly_active_group_does_not_get_a_burst_of_credit() -> None:
    queue: WeightedFairQueue[str] = WeightedFairQueue()
    queue.enqueue(_entry(f"a{i}", "a") for i in range(10))
    _drain(queue, 6)
    queue.enqueue(_entry(f"b{i}", "b") for i in range(10))
    # Equal weights: the late group alternates with the old one instead of taking six in a row.
    assert Counter(item[0] for item in _drain(queue, 6)) == {"a": 3, "b": 3}


def test_remove_withdraws_an_item_and_keeps_order() -> None:
    queue: WeightedFairQueue[str] = WeightedFairQueue()
    queue.enqueue([_entry("a1", "a"), _entry("a2", "a"), _entry("b1", "b")])
    assert queue.remove("a1") == "a1"
    assert queue.remove("missing") is None
    assert sorted(_drain(queue, 2)) == ["a2", "b1"]
    assert queue.select_next() is None


def test_view_tracks_demand_and_depth_incrementally() -> None:
    queue: WeightedFairQueue[str] = WeightedFairQueue()
    demand = {"submission": 1, "local": 1}
    queue.enqueue(
        QueueEntry(item_id=f"x{i}", group="g", weight=1, item="x", demand=demand) for i in range(3)
    )
    view = queue.view()
    assert view.queued_total == 3
    assert view.demand("g", "local") == 3
    _drain(queue, 1)
    assert view.queued_in_group("g") == 2
    assert view.demand("g", "submission") == 2
    assert not view.has_other_backlogged_group("g")


@given(
    weights=st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=6),
    dispatches=st.integers(min_value=1, max_value=200),
)
def test_backlogged_service_tracks_weights_within_one_item(
    weights: list[int], dispatches: int
) -> None:
    queue: WeightedFairQueue[str] = WeightedFairQueue()
    for g, weight in enumerate(weights):
        queue.enqueue(_entry(f"{g}-{i}", str(g), weight) for i in range(dispatches))
    served = Counter(item.split("-")[0] for item in _drain(queue, dispatches))
    total_weight = sum(weights)
    for g, weight in enumerate(weights):
        ideal = dispatches * weight / total_weight
        assert abs(served[str(g)] - ideal) <= len(weights), (served, weights)
    assert sum(served.values()) == dispatches
    assert len(queue) == dispatches * len(weights) - dispatches


_DEMANDS: list[dict[str, int] | None] = [
    {"submission": 1},
    {"submission": 1},  # equal to the first, another object
    {"submission": 2, "local": 1},
    {"local": 0},
    None,
]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["enqueue", "commit", "remove"]),
            st.integers(0, 2),  # group
            st.integers(0, len(_DEMANDS) - 1),  # demand
        ),
        max_size=60,
    )
)
def test_demand_is_the_sum_over_queued_entries_whether_or_not_they_share_one(
    steps: list[tuple[str, int, int]],
) -> None:
    """Entries of a group sharing one demand object keep the amounts implicit (a commit that
    leaves the group backlogged changes nothing): the view must still read the exact sums."""
    queue: WeightedFairQueue[str] = WeightedFairQueue()
    view = queue.view()
    queued: dict[str, QueueEntry[str]] = {}
    for number, (action, group, demand) in enumerate(steps):
        if action == "enqueue":
            entry = QueueEntry(
                item_id=f"x{number}",
                group=f"g{group}",
                weight=1 + group,
                item=f"x{number}",
                demand=_DEMANDS[demand],
            )
            queue.enqueue([entry])
            queued[entry.item_id] = entry
        elif action == "commit":
            selection = queue.select_next()
            if selection is not None:
                queue.commit(selection)
                del queued[selection.entry.item_id]
        elif queued:
            item_id = sorted(queued)[demand % len(queued)]
            queue.remove(item_id)
            del queued[item_id]
        for resource in ("submission", "local"):
            expected: Counter[str] = Counter()
            for entry in queued.values():
                expected[entry.group] += (entry.demand or {}).get(resource, 0)
            for key in ("g0", "g1", "g2"):
                assert view.demand(key, resource) == expected[key]
            demanding = [key for key, amount in expected.items() if amount]
            assert view.demanding_groups(resource) == len(demanding)
            weight = sum(1 + int(key[1:]) for key in demanding)
            assert abs(view.demand_weight(resource) - weight) < 1e-9
            tables = view.demand_tables()
            for key in ("g0", "g1", "g2"):
                assert (resource in tables.by_group.get(key, {})) == bool(expected[key])
