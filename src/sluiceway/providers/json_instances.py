"""Schema-valid JSON instances for the simulated provider, and its plausible vocabulary.

A JSON schema (the common subset: types, enum/const, bounds, formats, anyOf/oneOf/allOf, local
``$ref``) is compiled once into a tree of small generator nodes; each call draws one instance
from a seeded ``random.Random``. Recursive schemas terminate: past ``_SHALLOW_DEPTH`` nesting
levels only required members are generated and non-recursive branches are preferred.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from sluiceway.errors import BadRequestError

# 256 words, so one random byte picks one word uniformly.
WORDS: tuple[str, ...] = (
    "account", "action", "advice", "agent", "amount", "answer", "apple", "area", "argument",
    "army", "article", "aspect", "audience", "author", "balance", "basket", "battery", "beach",
    "bicycle", "bird", "blanket", "board", "bottle", "bridge", "budget", "builder", "cabinet",
    "camera", "canal", "candle", "capital", "carbon", "career", "castle", "cellar", "century",
    "chapter", "charter", "circle", "citizen", "climate", "cloud", "coast", "coffee", "column",
    "comfort", "company", "concept", "contract", "corner", "cotton", "council", "country",
    "courage", "crystal", "culture", "current", "custom", "danger", "debate", "decade",
    "decision", "desert", "design", "detail", "device", "diamond", "dinner", "distance",
    "doctor", "dragon", "drawer", "driver", "eagle", "economy", "editor", "effort", "element",
    "energy", "engine", "evening", "example", "factor", "family", "farmer", "feather",
    "festival", "field", "figure", "finance", "flavor", "flight", "forest", "fortune", "fountain",
    "freedom", "friend", "future", "galaxy", "garden", "gateway", "glacier", "granite",
    "gravity", "guitar", "habit", "harbor", "harvest", "health", "height", "history", "holiday",
    "horizon", "hunter", "idea", "image", "impact", "income", "index", "insight", "island",
    "journey", "judge", "jungle", "kernel", "kettle", "kingdom", "kitchen", "ladder", "lantern",
    "lawyer", "leader", "lesson", "letter", "library", "lighthouse", "limit", "liquid", "machine",
    "magnet", "manner", "market", "meadow", "measure", "medium", "memory", "method", "meteor",
    "minute", "mirror", "moment", "monitor", "morning", "mountain", "museum", "nation", "nature",
    "network", "notion", "number", "object", "ocean", "office", "opinion", "orbit", "orchard",
    "outcome", "owner", "painter", "palace", "paper", "parcel", "pattern", "pencil", "people",
    "pepper", "period", "person", "picture", "pilot", "planet", "player", "pocket", "poetry",
    "policy", "portrait", "power", "practice", "prairie", "problem", "process", "product",
    "program", "project", "puzzle", "quality", "quarter", "question", "rabbit", "railway",
    "reason", "record", "region", "report", "result", "ribbon", "river", "rocket", "routine",
    "sailor", "saddle", "sample", "schedule", "science", "season", "second", "section", "signal",
    "silver", "sister", "sluice", "society", "soldier", "source", "speaker", "spirit", "spring",
    "station", "story", "strategy", "stream", "student", "summer", "surface", "system", "table",
    "teacher", "theory", "thunder", "ticket", "timber", "tower", "traffic", "travel", "treasure",
    "tunnel", "valley", "vessel", "village", "violin", "vision", "volume", "voyage", "wagon",
    "water", "weather", "window", "winter", "wisdom", "worker", "yellow", "zenith",
)  # fmt: skip

# Past this many nested levels, generate minimal instances so recursive schemas terminate.
_SHALLOW_DEPTH = 6
# A schema still nesting deeper than this has no finite instance (a required self-reference).
_MAX_DEPTH = 64

_TLDS = ("com", "org", "net", "io")


class _Unsatisfiable(Exception):
    """A (sub)schema admits no instance this module can produce; anyOf/oneOf try the next branch."""


class _Node(Protocol):
    # True when generating may follow a ``$ref`` (and so possibly recurse).
    has_ref: bool

    def generate(self, rng: random.Random, depth: int) -> Any: ...


InstanceFactory = Callable[[random.Random], Any]


def instance_for_schema(schema: Mapping[str, Any] | bool, rng: random.Random) -> Any:
    """Draw one instance valid for ``schema``; raises :class:`BadRequestError` when impossible."""
    return compile_instance_factory(schema)(rng)


def compile_instance_factory(schema: Mapping[str, Any] | bool) -> InstanceFactory:
    """Compile ``schema`` once; the returned function draws a fresh valid instance per call.

    ``pattern`` is best effort (a few candidates are tried); unsupported keywords (``not``,
    ``if``/``then``, ``patternProperties``, ``contains``, ...) are ignored, so instances of
    schemas relying on them may not validate.
    """
    try:
        node = _Compiler(schema).compile(schema, "#")
    except _Unsatisfiable as error:
        raise BadRequestError(
            f"json schema: no instance can satisfy {error}; "
            "relax the schema (bounds, enum, required members)"
        ) from None

    def factory(rng: random.Random) -> Any:
        return node.generate(rng, 0)

    return factory


# --------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------


class _Const:
    has_ref = False

    def __init__(self, value: Any) -> None:
        self.value = value

    def generate(self, rng: random.Random, depth: int) -> Any:
        return self.value


class _Enum:
    has_ref = False

    def __init__(self, values: Sequence[Any]) -> None:
        self.values = tuple(values)

    def generate(self, rng: random.Random, depth: int) -> Any:
        return self.values[rng.randrange(len(self.values))]


class _Boolean:
    has_ref = False

    def generate(self, rng: random.Random, depth: int) -> Any:
        return rng.random() < 0.5


class _Integer:
    has_ref = False

    def __init__(self, low: int, high: int, multiple_of: int | None) -> None:
        self.low = low
        self.high = high
        self.multiple_of = multiple_of

    def generate(self, rng: random.Random, depth: int) -> Any:
        if self.multiple_of is None:
            return rng.randint(self.low, self.high)
        step = self.multiple_of
        return step * rng.randint(-(-self.low // step), self.high // step)


class _Number:
    has_ref = False

    def __init__(
        self, low: float, high: float, *, low_open: bool, high_open: bool, multiple_of: float | None
    ) -> None:
        self.low = low
        self.high = high
        self.low_open = low_open
        self.high_open = high_open
        self.multiple_of = multiple_of

    def _inside(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def generate(self, rng: random.Random, depth: int) -> Any:
        if self.multiple_of is not None:
            step = self.multiple_of
            first = math.ceil(self.low / step)
            last = math.floor(self.high / step)
            for _ in range(16):
                candidate = step * rng.randint(first, last)
                # Validators test multipleOf by float division: keep only exact quotients.
                if self._inside(candidate) and (candidate / step).is_integer():
                    return candidate
            raise BadRequestError(
                f"json schema: found no multiple of {step} in [{self.low}, {self.high}] that "
                "survives float division; widen the bounds or use an integer multipleOf"
            )
        value = self.low + (self.high - self.low) * rng.random()
        rounded = round(value, 2)
        if self._inside(rounded):
            return rounded
        if self._inside(value):
            return value
        return (self.low + self.high) / 2


class _String:
    has_ref = False

    def __init__(
        self,
        min_length: int,
        max_length: int | None,
        string_format: str | None,
        pattern: re.Pattern[str] | None = None,
    ) -> None:
        self.min_length = min_length
        self.max_length = max_length
        self.string_format = string_format
        self.pattern = pattern

    def generate(self, rng: random.Random, depth: int) -> Any:
        if self.pattern is None:
            return self._draw(rng)
        # Best effort: a few plausible candidates, the first one the pattern finds wins.
        candidate = ""
        for attempt in range(12):
            word = WORDS[rng.getrandbits(8)]
            shape = attempt % 6
            if shape == 0:
                candidate = word
            elif shape == 1:
                candidate = self._draw(rng)
            elif shape == 2:
                candidate = self._draw(rng).replace(" ", "_")
            elif shape == 3:
                candidate = f"{word}{rng.randint(0, 99)}"
            elif shape == 4:
                candidate = str(rng.randint(0, 99_999))
            else:
                candidate = word.capitalize()
            if self.pattern.search(candidate):
                return candidate
        return candidate

    def _draw(self, rng: random.Random) -> str:
        formatted = _formatted_string(self.string_format, rng)
        if formatted is not None:
            return formatted
        words = [WORDS[rng.getrandbits(8)] for _ in range(rng.randint(1, 4))]
        text = " ".join(words)
        while len(text) < self.min_length:
            text += " " + WORDS[rng.getrandbits(8)]
        if self.max_length is not None and len(text) > self.max_length:
            text = text[: self.max_length]
            if text.endswith(" "):
                text = text[:-1] + "a"
        return text


class _Array:
    def __init__(
        self,
        prefix: tuple[_Node, ...],
        items: _Node | None,
        min_items: int,
        max_items: int | None,
        unique: bool,
    ) -> None:
        self.prefix = prefix
        self.items = items
        self.min_items = min_items
        self.max_items = max_items
        self.unique = unique
        self.has_ref = any(node.has_ref for node in prefix) or (items is not None and items.has_ref)

    def _length(self, rng: random.Random, depth: int) -> int:
        if self.items is None:
            # Only prefix items may appear.
            length = len(self.prefix) if depth <= _SHALLOW_DEPTH else self.min_items
            return length if self.max_items is None else min(length, self.max_items)
        if depth > _SHALLOW_DEPTH:
            return self.min_items
        low = max(self.min_items, 1)
        high = low + 2 if self.max_items is None else min(self.max_items, low + 2)
        if high < low:
            return self.min_items
        return rng.randint(low, high)

    def generate(self, rng: random.Random, depth: int) -> Any:
        length = self._length(rng, depth)
        values: list[Any] = []
        for index in range(length):
            node = self.prefix[index] if index < len(self.prefix) else self.items
            assert node is not None  # _length never exceeds the prefix without an items schema
            value = node.generate(rng, depth + 1)
            if self.unique:
                for _ in range(16):
                    if value not in values:
                        break
                    value = node.generate(rng, depth + 1)
            values.append(value)
        return values


class _Object:
    def __init__(
        self,
        properties: tuple[tuple[str, _Node, bool], ...],
        additional: _Node | None,
        min_properties: int,
    ) -> None:
        self.properties = properties
        self.additional = additional
        self.min_properties = min_properties
        self.has_ref = any(node.has_ref for _, node, _ in properties) or (
            additional is not None and additional.has_ref
        )

    def generate(self, rng: random.Random, depth: int) -> Any:
        shallow = depth <= _SHALLOW_DEPTH
        value: dict[str, Any] = {}
        for name, node, required in self.properties:
            if required or shallow:
                value[name] = node.generate(rng, depth + 1)
        if self.additional is not None:
            extra = max(self.min_properties - len(value), 0)
            if not self.properties and shallow:
                extra = max(extra, rng.randint(1, 3))
            index = 0
            while extra > 0:
                index += 1
                key = f"{WORDS[rng.getrandbits(8)]}_{index}"
                if key not in value:
                    value[key] = self.additional.generate(rng, depth + 1)
                    extra -= 1
        return value


class _Choice:
    """anyOf / oneOf / a list of types: the first viable branch; shallow-first when deep."""

    def __init__(self, branches: tuple[_Node, ...]) -> None:
        self.branches = branches
        self.has_ref = any(node.has_ref for node in branches)
        self.shallow_branch = next((node for node in branches if not node.has_ref), branches[0])

    def generate(self, rng: random.Random, depth: int) -> Any:
        node = self.branches[0] if depth <= _SHALLOW_DEPTH else self.shallow_branch
        return node.generate(rng, depth)


class _Ref:
    has_ref = True

    def __init__(self, pointer: str) -> None:
        self.pointer = pointer
        self.target: _Node | None = None

    def generate(self, rng: random.Random, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise BadRequestError(
                f"json schema: {self.pointer!r} nests deeper than {_MAX_DEPTH} levels; "
                "a required member refers back to its own type, make it optional or nullable"
            )
        assert self.target is not None  # set by _Compiler before any generation
        return self.target.generate(rng, depth)


# --------------------------------------------------------------------------------------------
# Compiler
# --------------------------------------------------------------------------------------------


class _Compiler:
    def __init__(self, root: Mapping[str, Any] | bool) -> None:
        self.root = root
        self.refs: dict[str, _Ref] = {}

    def compile(self, schema: Any, where: str) -> _Node:
        if schema is True:
            return _String(0, None, None)
        if schema is False:
            raise _Unsatisfiable(f"{where} (schema false)")
        if not isinstance(schema, Mapping):
            raise BadRequestError(
                f"json schema: {where} is {schema!r}, not a schema object; "
                "use a JSON object (or true/false) at every schema position"
            )
        if "$ref" in schema:
            return self._ref(schema["$ref"], where)
        if "const" in schema:
            return _Const(schema["const"])
        if "enum" in schema:
            values = list(schema["enum"])
            if not values:
                raise _Unsatisfiable(f"{where}.enum (empty)")
            return _Enum(values)
        if "allOf" in schema:
            return self.compile(self._merge_all_of(schema, where), where)
        for keyword in ("anyOf", "oneOf"):
            if keyword in schema:
                return self._choice(
                    [_with_siblings(branch, schema, keyword) for branch in schema[keyword]],
                    f"{where}.{keyword}",
                )
        declared = schema.get("type")
        if isinstance(declared, list):
            # Nullable and multi-type schemas: the first non-null type, null when deep.
            ordered = [t for t in declared if t != "null"] + [t for t in declared if t == "null"]
            return self._choice([{**schema, "type": t} for t in ordered], f"{where}.type")
        return self._typed(schema, _infer_type(schema, declared), where)

    def _ref(self, pointer: Any, where: str) -> _Node:
        if not isinstance(pointer, str) or not pointer.startswith("#"):
            raise BadRequestError(
                f"json schema: {where}.$ref is {pointer!r}; only local references "
                "('#', '#/$defs/Name', '#/definitions/Name') are supported"
            )
        known = self.refs.get(pointer)
        if known is not None:
            return known
        ref = _Ref(pointer)
        self.refs[pointer] = ref  # registered before compiling the target: breaks cycles
        ref.target = self.compile(_resolve_pointer(self.root, pointer, where), pointer)
        return ref

    def _merge_all_of(self, schema: Mapping[str, Any], where: str) -> dict[str, Any]:
        """allOf flattened into one schema: references resolved, properties and required united.

        The first part to name a keyword wins (apart from properties and required).
        """
        parts: list[Any] = list(schema["allOf"])
        merged: dict[str, Any] = {key: value for key, value in schema.items() if key != "allOf"}
        if "$ref" in merged:
            parts.insert(0, {"$ref": merged.pop("$ref")})
        for index, part in enumerate(parts):
            if part is True:
                continue
            if part is False:
                raise _Unsatisfiable(f"{where}.allOf[{index}] (schema false)")
            if not isinstance(part, Mapping):
                raise BadRequestError(
                    f"json schema: {where}.allOf[{index}] is {part!r}; "
                    "every allOf entry must be a schema object"
                )
            if "$ref" in part:
                resolved = _resolve_pointer(self.root, part["$ref"], f"{where}.allOf[{index}]")
                rest = {key: value for key, value in part.items() if key != "$ref"}
                part = {**resolved, **rest} if isinstance(resolved, Mapping) else resolved
                if part is False:
                    raise _Unsatisfiable(f"{where}.allOf[{index}] (schema false)")
                if part is True:
                    continue
            if "allOf" in part:
                part = self._merge_all_of(part, f"{where}.allOf[{index}]")
            for key, value in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = sorted({*merged.get("required", ()), *value})
                else:
                    merged.setdefault(key, value)
        return merged

    def _choice(self, branches: list[Any], where: str) -> _Node:
        viable: list[_Node] = []
        for index, branch in enumerate(branches):
            try:
                viable.append(self.compile(branch, f"{where}[{index}]"))
            except _Unsatisfiable:
                continue
        if not viable:
            raise _Unsatisfiable(f"{where} (no viable branch)")
        return viable[0] if len(viable) == 1 else _Choice(tuple(viable))

    def _typed(self, schema: Mapping[str, Any], kind: str, where: str) -> _Node:
        if kind == "object":
            return self._object(schema, where)
        if kind == "array":
            return self._array(schema, where)
        if kind == "string":
            return self._string(schema, where)
        if kind == "integer":
            return _integer(schema, where)
        if kind == "number":
            return _number(schema, where)
        if kind == "boolean":
            return _Boolean()
        if kind == "null":
            return _Const(None)
        raise BadRequestError(
            f"json schema: {where}.type is {kind!r}; use one of object, array, string, "
            "integer, number, boolean, null"
        )

    def _object(self, schema: Mapping[str, Any], where: str) -> _Node:
        declared: Mapping[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        additional_schema = schema.get("additionalProperties", True)
        min_properties = int(schema.get("minProperties", 0))
        additional: _Node | None = None
        if additional_schema is not False and (
            additional_schema is not True or not declared or min_properties > len(declared)
        ):
            # Extra members only for maps (no declared properties) or to reach minProperties.
            additional = self.compile(additional_schema, f"{where}.additionalProperties")
        properties: list[tuple[str, _Node, bool]] = []
        for name, sub in declared.items():
            node = self.compile(sub, f"{where}.properties.{name}")
            properties.append((name, node, name in required))
        for name in sorted(required - set(declared)):
            if additional is None and additional_schema is False:
                raise _Unsatisfiable(f"{where} (requires undeclared {name!r})")
            properties.append((name, additional or _String(0, None, None), True))
        return _Object(tuple(properties), additional, min_properties)

    def _array(self, schema: Mapping[str, Any], where: str) -> _Node:
        prefix_schemas = schema.get("prefixItems")
        items_schema = schema.get("items", True)
        if isinstance(items_schema, list):  # draft 4-7 tuple form
            prefix_schemas, items_schema = items_schema, schema.get("additionalItems", True)
        prefix = tuple(
            self.compile(sub, f"{where}.prefixItems[{index}]")
            for index, sub in enumerate(prefix_schemas or ())
        )
        items: _Node | None = None
        if items_schema is not False:
            items = self.compile(items_schema, f"{where}.items")
        min_items = int(schema.get("minItems", 0))
        max_items = schema.get("maxItems")
        if max_items is not None and int(max_items) < min_items:
            raise _Unsatisfiable(f"{where} (maxItems {max_items} < minItems {min_items})")
        if items is None and min_items > len(prefix):
            raise _Unsatisfiable(f"{where} (minItems {min_items} > {len(prefix)} tuple items)")
        return _Array(
            prefix,
            items,
            min_items,
            None if max_items is None else int(max_items),
            bool(schema.get("uniqueItems", False)),
        )

    def _string(self, schema: Mapping[str, Any], where: str) -> _Node:
        min_length = int(schema.get("minLength", 0))
        max_length = schema.get("maxLength")
        if max_length is not None and int(max_length) < min_length:
            raise _Unsatisfiable(f"{where} (maxLength {max_length} < minLength {min_length})")
        string_format = schema.get("format")
        if string_format not in _FORMATS:
            string_format = None
        pattern: re.Pattern[str] | None = None
        if isinstance(schema.get("pattern"), str):
            try:
                pattern = re.compile(schema["pattern"])
            except re.error:
                pattern = None  # a dialect Python cannot read: generate without it
        return _String(
            min_length, None if max_length is None else int(max_length), string_format, pattern
        )


def _infer_type(schema: Mapping[str, Any], declared: Any) -> str:
    if isinstance(declared, str):
        return declared
    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    if "minimum" in schema or "maximum" in schema:
        return "number"
    return "string"


_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly"}
    | {"writeOnly", "$schema", "$id", "$defs", "definitions"}
)


def _with_siblings(branch: Any, parent: Mapping[str, Any], keyword: str) -> Any:
    """A branch of anyOf/oneOf joined with the parent's other constraining keywords."""
    siblings = {
        key: value for key, value in parent.items() if key != keyword and key not in _ANNOTATIONS
    }
    if not siblings or isinstance(branch, bool):
        return branch
    return {"allOf": [branch, siblings]}


def _resolve_pointer(root: Any, pointer: str, where: str) -> Any:
    target = root
    for raw in pointer[1:].split("/")[1:] if pointer != "#" else ():
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(target, Mapping) and token in target:
            target = target[token]
        elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
            target = target[int(token)]
        else:
            raise BadRequestError(
                f"json schema: {where}.$ref {pointer!r} points nowhere; "
                "define the target under '$defs' (or 'definitions') of the root schema"
            )
    return target


def _integer(schema: Mapping[str, Any], where: str) -> _Node:
    low, high, low_open, high_open = _bounds(schema)
    low_int = -(10**6) if low is None else math.floor(low) + 1 if low_open else math.ceil(low)
    high_int = 10**6 if high is None else math.ceil(high) - 1 if high_open else math.floor(high)
    if low is None and high is None:
        low_int, high_int = 0, 100
    elif low is None:
        low_int = high_int - 100
    elif high is None:
        high_int = low_int + 100
    multiple = schema.get("multipleOf")
    multiple_of = int(multiple) if multiple is not None and float(multiple).is_integer() else None
    if multiple_of is not None and multiple_of > 0:
        if -(-low_int // multiple_of) > high_int // multiple_of:
            raise _Unsatisfiable(f"{where} (no multiple of {multiple_of} in bounds)")
    else:
        multiple_of = None
    if low_int > high_int:
        raise _Unsatisfiable(f"{where} (integer bounds {low}..{high} are empty)")
    return _Integer(low_int, high_int, multiple_of)


def _number(schema: Mapping[str, Any], where: str) -> _Node:
    low, high, low_open, high_open = _bounds(schema)
    if low is None and high is None:
        low, high = 0.0, 100.0
    elif low is None:
        assert high is not None
        low = high - 100.0
    elif high is None:
        high = low + 100.0
    if low > high or (low == high and (low_open or high_open)):
        raise _Unsatisfiable(f"{where} (number bounds {low}..{high} are empty)")
    multiple = schema.get("multipleOf")
    multiple_of = float(multiple) if multiple is not None and multiple > 0 else None
    if multiple_of is not None and math.ceil(low / multiple_of) > math.floor(high / multiple_of):
        raise _Unsatisfiable(f"{where} (no multiple of {multiple_of} in {low}..{high})")
    return _Number(
        float(low), float(high), low_open=low_open, high_open=high_open, multiple_of=multiple_of
    )


def _bounds(schema: Mapping[str, Any]) -> tuple[float | None, float | None, bool, bool]:
    """(low, high, low_open, high_open) from draft 4 (boolean) and draft 6+ (numeric) keywords."""
    low: float | None = schema.get("minimum")
    high: float | None = schema.get("maximum")
    low_open = high_open = False
    exclusive_low = schema.get("exclusiveMinimum")
    if isinstance(exclusive_low, bool):
        low_open = exclusive_low and low is not None
    elif exclusive_low is not None and (low is None or exclusive_low >= low):
        low, low_open = exclusive_low, True
    exclusive_high = schema.get("exclusiveMaximum")
    if isinstance(exclusive_high, bool):
        high_open = exclusive_high and high is not None
    elif exclusive_high is not None and (high is None or exclusive_high <= high):
        high, high_open = exclusive_high, True
    return low, high, low_open, high_open


# --------------------------------------------------------------------------------------------
# String formats
# --------------------------------------------------------------------------------------------


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1990, 2030):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _time(rng: random.Random) -> str:
    return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"


def _email(rng: random.Random) -> str:
    return f"{WORDS[rng.getrandbits(8)]}.{WORDS[rng.getrandbits(8)]}@example.{rng.choice(_TLDS)}"


def _uri(rng: random.Random) -> str:
    return f"https://{WORDS[rng.getrandbits(8)]}.example.{rng.choice(_TLDS)}/{WORDS[rng.getrandbits(8)]}"


def _uuid(rng: random.Random) -> str:
    digits = f"{rng.getrandbits(128):032x}"
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-a{digits[17:20]}-{digits[20:]}"


_FORMATS: Mapping[str, Callable[[random.Random], str]] = {
    "date": _date,
    "time": _time,
    "date-time": lambda rng: f"{_date(rng)}T{_time(rng)}",
    "email": _email,
    "uri": _uri,
    "url": _uri,
    "uuid": _uuid,
    "hostname": lambda rng: f"{WORDS[rng.getrandbits(8)]}.example.{rng.choice(_TLDS)}",
    "ipv4": lambda rng: ".".join(str(rng.randint(1, 254)) for _ in range(4)),
}


def _formatted_string(string_format: str | None, rng: random.Random) -> str | None:
    if string_format is None:
        return None
    return _FORMATS[string_format](rng)
