"""``fast_init``: a cheaper ``__init__`` for frozen slotted dataclasses, same class otherwise.

The ``__init__`` that ``dataclasses`` generates for a frozen class stores every field with
``object.__setattr__(self, name, value)``, a generic attribute write that looks the name up on
the type each time. For a slotted class the slot's member descriptor is known when the class is
made, so ``fast_init`` compiles a replacement that stores each field through that descriptor's
bound ``__set__``, looked up once and kept in the function's globals::

    @fast_init
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Point:
        x: int
        y: int = 0
        tags: tuple[str, ...] = field(default_factory=tuple)

The replacement takes the same parameters in the same order and kinds (positional, then
keyword-only) with the same defaults. It calls each ``default_factory`` when its argument is
left out, sets ``init=False`` fields the way the generated one does, and then calls
``__post_init__`` if the class has one. Nothing else about the class changes: instances
are still frozen (assignment raises ``dataclasses.FrozenInstanceError``), and ``__eq__``,
``__hash__``, ``__repr__``, ``__match_args__``, pickling, ``dataclasses.replace`` and
``dataclasses.fields`` are the dataclass's own. Type checkers see the decorated class unchanged
(``fast_init`` is typed ``type[T] -> type[T]``).

It refuses, with ``TypeError``, what it cannot honour: a class that is not a dataclass, a
dataclass with ``init=False`` or its own ``__init__``, a field without a slot (``slots=True``
is required), and ``InitVar`` pseudo-fields. ``fast_init`` acts on one class: a dataclass
subclass gets a new generated ``__init__`` from ``@dataclass`` and needs ``@fast_init`` too.
Put ``@fast_init`` above ``@dataclass`` (it needs the finished class). It recognises the
generated ``__init__`` by CPython's way of compiling it from source (``co_filename``
``"<string>"``), and checks that its parameters are exactly those of the fields.

Measured on the development machine with ``valgrind --tool=callgrind`` (instructions, which
the machine's load does not change): building a 9-field frozen event costs about 18,000
instructions with the dataclass ``__init__`` and 11,500 with ``fast_init``; what is left is
the class call itself (CPython passes keyword arguments to a class as a dict) and one
descriptor call per field.
"""

from __future__ import annotations

import dataclasses
import inspect
import keyword
import types
from typing import Any, TypeVar

__all__ = ["fast_init", "has_fast_init"]

T = TypeVar("T")

_FAST_INIT_MARK = "__sluiceway_fast_init__"


class _Missing:
    """The default of a parameter whose field has a ``default_factory``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<factory default>"


_FACTORY = _Missing()


def has_fast_init(cls: type) -> bool:
    """True if ``cls``'s own ``__init__`` was compiled by :func:`fast_init`."""
    init = vars(cls).get("__init__")
    return bool(getattr(init, _FAST_INIT_MARK, False))


def _refuse(cls: type, why: str, fix: str) -> TypeError:
    return TypeError(f"fast_init cannot compile __init__ for {cls.__qualname__}: {why}; {fix}")


def _slot_setter(cls: type, name: str) -> Any:
    """The bound ``__set__`` of the member descriptor of slot ``name`` (searched along the MRO,
    since a dataclass subclass declares only its new fields as slots)."""
    for klass in cls.__mro__:
        if name in vars(klass):
            found = vars(klass)[name]
            if isinstance(found, types.MemberDescriptorType):
                return found.__set__
            break
    raise _refuse(
        cls,
        f"field {name!r} has no slot",
        "declare the class with @dataclass(slots=True, ...) (and its dataclass bases too)",
    )


def _generated_init_parameters(cls: type) -> list[tuple[str, Any]]:
    """``(name, kind)`` of the parameters of the ``__init__`` the dataclass generated."""
    return [
        (parameter.name, parameter.kind)
        for parameter in inspect.signature(vars(cls)["__init__"]).parameters.values()
    ][1:]


def fast_init(cls: type[T]) -> type[T]:
    """Replace the dataclass ``cls``'s generated ``__init__`` by one that stores fields through
    their slots; returns ``cls`` itself. See the module docstring for what is kept and what is
    refused (``TypeError``)."""
    if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
        raise TypeError(f"fast_init needs a dataclass class, got {cls!r}")
    params = vars(cls).get("__dataclass_params__")
    if params is None or "__dataclass_fields__" not in vars(cls):
        raise _refuse(
            cls, "it is not itself a dataclass (only a base is)", "decorate it with @dataclass"
        )
    if not params.init:
        raise _refuse(cls, "it was declared with init=False", "drop fast_init or init=False")
    generated = vars(cls).get("__init__")
    code = getattr(generated, "__code__", None)
    if code is None or code.co_filename != "<string>" or has_fast_init(cls):
        raise _refuse(
            cls,
            "its __init__ is not the one @dataclass generated (it defines its own, or fast_init "
            "was already applied)",
            "apply fast_init once, directly above @dataclass, to a class without __init__",
        )
    all_fields: dict[str, dataclasses.Field[Any]] = vars(cls)["__dataclass_fields__"]
    fields = dataclasses.fields(cls)  # ordered; no ClassVar or InitVar pseudo-fields
    field_names = {f.name for f in fields}
    pseudo = [name for name in all_fields if name not in field_names]
    expected = [
        (
            f.name,
            inspect.Parameter.KEYWORD_ONLY
            if f.kw_only
            else inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
        for f in fields
        if f.init
    ]
    expected = [item for item in expected if item[1] is not inspect.Parameter.KEYWORD_ONLY] + [
        item for item in expected if item[1] is inspect.Parameter.KEYWORD_ONLY
    ]
    generated_parameters = _generated_init_parameters(cls)
    initvars = [name for name, _ in generated_parameters if name in pseudo]
    if initvars:
        raise _refuse(
            cls,
            f"InitVar pseudo-field(s) {', '.join(initvars)} are not supported",
            "turn them into fields, or leave this class's generated __init__ as it is",
        )
    if generated_parameters != expected:
        raise _refuse(
            cls,
            f"its __init__ parameters {generated_parameters} are not those of its fields",
            "leave this class's generated __init__ as it is",
        )

    # Globals of the compiled function get a prefix no field name starts with, so a parameter
    # never shadows one.
    prefix = "_fi"
    while any(f.name.startswith(prefix) for f in fields):
        prefix += "_"
    factory_sentinel = f"{prefix}FACTORY"
    namespace: dict[str, Any] = {factory_sentinel: _FACTORY}
    positional: list[str] = []
    keyword_only: list[str] = []
    body: list[str] = []
    for index, f in enumerate(fields):
        name = f.name
        if not name.isidentifier() or keyword.iskeyword(name) or name == "self":
            raise _refuse(cls, f"field name {name!r} cannot be a parameter", "rename the field")
        setter = f"{prefix}set{index}"
        has_factory = f.default_factory is not dataclasses.MISSING
        has_default = f.default is not dataclasses.MISSING
        if f.init:
            if has_factory:
                namespace[f"{prefix}factory{index}"] = f.default_factory
                parameter = f"{name}={factory_sentinel}"
                value = f"{prefix}factory{index}() if {name} is {factory_sentinel} else {name}"
            elif has_default:
                namespace[f"{prefix}default{index}"] = f.default
                parameter = f"{name}={prefix}default{index}"
                value = name
            else:
                parameter = name
                value = name
            (keyword_only if f.kw_only else positional).append(parameter)
        elif has_factory:
            namespace[f"{prefix}factory{index}"] = f.default_factory
            value = f"{prefix}factory{index}()"
        elif has_default:
            namespace[f"{prefix}default{index}"] = f.default
            value = f"{prefix}default{index}"
        else:
            continue  # an init=False field without a default stays unset, as with @dataclass
        namespace[setter] = _slot_setter(cls, name)
        body.append(f"    {setter}(self, {value})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    if not body:
        body.append("    pass")
    parameters = ["self", *positional]
    if keyword_only:
        parameters += ["*", *keyword_only]
    source = f"def __init__({', '.join(parameters)}):\n" + "\n".join(body) + "\n"
    # The source holds only field names checked above and names of ``namespace``.
    exec(compile(source, f"<fast_init {cls.__qualname__}>", "exec"), namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = getattr(generated, "__doc__", None)
    init.__annotations__ = dict(getattr(generated, "__annotations__", {}))
    setattr(init, _FAST_INIT_MARK, True)
    type.__setattr__(cls, "__init__", init)
    return cls
