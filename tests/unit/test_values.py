"""``fast_init``: the compiled ``__init__`` builds the same instances as the dataclass one, keeps
them frozen, and refuses what it cannot honour."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import pickle
from dataclasses import KW_ONLY, FrozenInstanceError, InitVar, dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway.values import fast_init, has_fast_init

_calls: list[str] = []


def _counted_factory() -> list[int]:
    _calls.append("made")
    return []


def _make_record(*, fast: bool) -> type[Any]:
    """The same class twice: with the dataclass ``__init__`` and with ``fast_init``."""

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Record:
        name: str
        count: int = 0
        ratio: float | None = None
        tags: tuple[str, ...] = ()
        items: list[int] = field(default_factory=_counted_factory)
        label: str = field(default="x", init=False)
        hidden: int = field(default_factory=lambda: 7, init=False)

    return fast_init(Record) if fast else Record


Stock = _make_record(fast=False)
Fast = _make_record(fast=True)


def test_it_marks_the_class_and_returns_it() -> None:
    assert has_fast_init(Fast) and not has_fast_init(Stock)
    assert Fast.__init__.__qualname__ == "_make_record.<locals>.Record.__init__"
    assert Fast.__name__ == Stock.__name__ == "Record"


def test_the_signature_is_the_dataclass_one() -> None:
    fast = inspect.signature(Fast.__init__).parameters
    stock = inspect.signature(Stock.__init__).parameters
    assert [(p.name, p.kind) for p in fast.values()] == [(p.name, p.kind) for p in stock.values()]
    assert fast["count"].default == 0 and fast["ratio"].default is None


@given(
    name=st.text(),
    count=st.integers(),
    ratio=st.none() | st.floats(allow_nan=False),
    tags=st.lists(st.text(max_size=3), max_size=3).map(tuple),
    items=st.none() | st.lists(st.integers(), max_size=3),
    leave_out=st.sets(st.sampled_from(["count", "ratio", "tags", "items"])),
)
def test_fast_and_stock_instances_built_from_the_same_arguments_are_equal(
    name: str,
    count: int,
    ratio: float | None,
    tags: tuple[str, ...],
    items: list[int] | None,
    leave_out: set[str],
) -> None:
    arguments: dict[str, Any] = {"name": name, "count": count, "ratio": ratio, "tags": tags}
    if items is not None:
        arguments["items"] = items
    for name_left_out in leave_out:
        arguments.pop(name_left_out, None)
    fast, stock = Fast(**copy.deepcopy(arguments)), Stock(**copy.deepcopy(arguments))
    assert dataclasses.astuple(fast) == dataclasses.astuple(stock)
    assert repr(fast) == repr(stock)
    assert fast == Fast(**copy.deepcopy(arguments))


def test_instances_stay_frozen_hashable_and_comparable() -> None:
    record = Fast(name="a", count=2, tags=("t",))
    with pytest.raises(FrozenInstanceError):
        record.count = 3
    with pytest.raises(FrozenInstanceError):
        del record.name
    assert record == Fast(name="a", count=2, tags=("t",))
    assert record != Fast(name="a", count=3, tags=("t",))
    assert record != Stock(name="a", count=2, tags=("t",))  # another class, as before
    with pytest.raises(TypeError):
        hash(record)  # the default list makes it unhashable, exactly as the stock class
    with pytest.raises(TypeError):
        hash(Stock(name="a", count=2, tags=("t",)))


def test_a_default_factory_runs_only_when_its_argument_is_left_out() -> None:
    _calls.clear()
    first, second = Fast(name="a"), Fast(name="b")
    assert _calls == ["made", "made"] and first.items is not second.items
    given_items = [1]
    assert Fast(name="c", items=given_items).items is given_items
    assert _calls == ["made", "made"]


def test_fields_without_init_are_set_as_the_dataclass_sets_them() -> None:
    record = Fast(name="a")
    assert (record.label, record.hidden) == ("x", 7)
    with pytest.raises(TypeError):
        Fast(name="a", label="y")


def test_wrong_arguments_raise_type_error_as_before() -> None:
    with pytest.raises(TypeError):
        Fast()  # name is required
    with pytest.raises(TypeError):
        Fast(name="a", nope=1)
    with pytest.raises(TypeError):
        Fast("a")  # keyword-only


def test_positional_and_keyword_only_fields_and_post_init() -> None:
    seen: list[str] = []

    def make(*, fast: bool) -> type[Any]:
        @dataclass(frozen=True, slots=True)
        class Point:
            x: int
            y: int = 2
            _: KW_ONLY
            unit: str = "m"
            norm: float = field(default=0.0, init=False)

            def __post_init__(self) -> None:
                seen.append("post")
                object.__setattr__(self, "norm", math.hypot(self.x, self.y))

        return fast_init(Point) if fast else Point

    fast, stock = make(fast=True), make(fast=False)
    assert fast(3, 4, unit="km") == fast(3, y=4, unit="km")
    assert dataclasses.astuple(fast(3, 4, unit="km")) == dataclasses.astuple(stock(3, 4, unit="km"))
    assert hash(fast(3, 4, unit="km")) == hash(stock(3, 4, unit="km"))
    assert repr(fast(3, 4)) == repr(stock(3, 4))
    assert fast(3, 4).norm == 5.0 and seen.count("post") == 9
    with pytest.raises(TypeError):
        fast(1, 2, "km")  # unit is keyword-only
    assert [p.kind for p in inspect.signature(fast.__init__).parameters.values()][1:] == [
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    ]


def test_a_field_without_default_and_init_stays_unset_as_before() -> None:
    def make(*, fast: bool) -> type[Any]:
        @dataclass(slots=True)
        class Late:
            a: int
            b: int = field(init=False)

        return fast_init(Late) if fast else Late

    for cls in (make(fast=True), make(fast=False)):
        late = cls(1)
        with pytest.raises(AttributeError):
            _ = late.b
        late.b = 2  # not frozen: plain assignment works for both
        assert (late.a, late.b) == (1, 2)


def test_inherited_fields_are_set_through_the_base_slots() -> None:
    @fast_init
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Base:
        a: int
        b: str = "b"

    @fast_init
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Child(Base):
        c: float = 1.0
        b: str = "child"  # a redefined field keeps the base's slot

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Plain(Base):  # no fast_init: the dataclass __init__ of its own
        d: int = 4

    child = Child(a=1)
    assert (child.a, child.b, child.c) == (1, "child", 1.0)
    assert Plain(a=2).d == 4 and not has_fast_init(Plain)
    with pytest.raises(FrozenInstanceError):
        child.c = 2.0


def test_pickle_copy_and_replace_still_work() -> None:
    @fast_init
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Value:
        a: int
        b: tuple[int, ...] = ()

    globals()["Value"] = Value  # pickle finds the class by name
    Value.__qualname__ = "Value"
    try:
        value = Value(a=1, b=(2,))
        assert pickle.loads(pickle.dumps(value)) == value
        assert copy.copy(value) == value and copy.deepcopy(value) == value
        assert dataclasses.replace(value, a=5) == Value(a=5, b=(2,))
    finally:
        del globals()["Value"]


def test_field_names_like_its_own_helpers_do_not_clash() -> None:
    @fast_init
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Clash:
        _fiset0: int = 1
        _fifactory1: list[int] = field(default_factory=list)
        _fiFACTORY: int = 3

    clash = Clash(_fiset0=5)
    assert (clash._fiset0, clash._fifactory1, clash._fiFACTORY) == (5, [], 3)


def test_it_refuses_what_it_cannot_honour() -> None:
    class NotADataclass:
        pass

    with pytest.raises(TypeError, match="needs a dataclass"):
        fast_init(NotADataclass)

    @dataclass(frozen=True)
    class NoSlots:
        a: int

    with pytest.raises(TypeError, match=r"NoSlots.*has no slot.*slots=True"):
        fast_init(NoSlots)

    @dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int
        scale: InitVar[int] = 1

        def __post_init__(self, scale: int) -> None:
            pass

    with pytest.raises(TypeError, match="InitVar pseudo-field"):
        fast_init(WithInitVar)

    @dataclass(frozen=True, slots=True, init=False)
    class NoInit:
        a: int = 0

    with pytest.raises(TypeError, match="init=False"):
        fast_init(NoInit)

    @dataclass(frozen=True, slots=True)
    class OwnInit:
        a: int

        def __init__(self, a: int) -> None:
            object.__setattr__(self, "a", a * 2)

    with pytest.raises(TypeError, match="not the one @dataclass generated"):
        fast_init(OwnInit)

    @fast_init
    @dataclass(frozen=True, slots=True)
    class Twice:
        a: int

    with pytest.raises(TypeError, match="already applied"):
        fast_init(Twice)

    @dataclass(frozen=True, slots=True)
    class Base:
        a: int

    class Derived(Base):
        pass

    with pytest.raises(TypeError, match="not itself a dataclass"):
        fast_init(Derived)
