"""The Parquet type of each output column, declared by the config, so every file of a dataset has
the same schema whatever its values (all-null groups, skipped rows, files before and after a
resume).

Plain values keep their kind: strings, integers, numbers (double), booleans, timestamps and
vectors (``list<double>``). A JSON schema (structured and judge columns) maps to an Arrow type:

- ``string``, ``integer``, ``number``, ``boolean`` -> string, int64, double, bool; an ``enum`` or
  ``const`` of one of those types without ``type`` maps the same way;
- ``array`` with an ``items`` schema -> ``list<item>``;
- ``object`` with declared ``properties`` -> ``struct`` of those properties. A required property
  whose schema does not allow null is a non-nullable field, the others are nullable (absent or
  null). Keys the schema does not declare are not stored;
- ``[T, "null"]``, and ``anyOf``/``oneOf`` of one schema and ``{"type": "null"}`` -> nullable T;
- local ``$ref`` (``#/$defs/...``, ``#/definitions/...``, pydantic's nested models) are followed.

Anything else (free-form objects, ``additionalProperties`` or ``patternProperties`` schemas,
unions of several types, tuples, recursive schemas) is stored as JSON text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from sluiceway.config.column_values import DeclaredValue, ValueKind
from sluiceway.storage.column_kinds import ColumnKind, ColumnType

_PRIMITIVES: Mapping[str, Any] = {
    "string": pa.string(),
    "integer": pa.int64(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
}
_COMBINATIONS = ("anyOf", "oneOf", "allOf", "not", "if", "then", "else", "dependentSchemas")
_PLAIN_KINDS: Mapping[ValueKind, ColumnKind] = {
    ValueKind.STRING: ColumnKind.STRING,
    ValueKind.INTEGER: ColumnKind.INT,
    ValueKind.NUMBER: ColumnKind.FLOAT,
    ValueKind.BOOLEAN: ColumnKind.BOOL,
    ValueKind.DATETIME: ColumnKind.TIMESTAMP,
    ValueKind.DATETIME_UTC: ColumnKind.TIMESTAMP_UTC,
    ValueKind.VECTOR: ColumnKind.FLOAT_LIST,
}
_KIND_OF_PRIMITIVE: Mapping[Any, ColumnKind] = {
    pa.string(): ColumnKind.STRING,
    pa.int64(): ColumnKind.INT,
    pa.float64(): ColumnKind.FLOAT,
    pa.bool_(): ColumnKind.BOOL,
}


def column_types(values: Mapping[str, DeclaredValue]) -> dict[str, ColumnType]:
    """The Parquet type of every declared output column (``ANY`` columns are left out: each
    file's values decide their kind)."""
    types: dict[str, ColumnType] = {}
    for name, declared in values.items():
        column_type = column_type_of(declared)
        if column_type is not None:
            types[name] = column_type
    return types


def column_type_of(declared: DeclaredValue) -> ColumnType | None:
    """The Parquet type of one declared value, or None when it is not declared."""
    kind = _PLAIN_KINDS.get(declared.kind)
    if kind is not None:
        return ColumnType.of(kind)
    if declared.kind is not ValueKind.JSON or declared.schema is None:
        return None
    arrow_type = arrow_type_of_schema(declared.schema)
    if arrow_type is None:
        return ColumnType.of(ColumnKind.JSON)
    if pa.types.is_struct(arrow_type) or pa.types.is_list(arrow_type):
        return ColumnType.nested(arrow_type)
    return ColumnType.of(_KIND_OF_PRIMITIVE[arrow_type])


def arrow_type_of_schema(schema: Mapping[str, Any]) -> Any | None:
    """The Arrow type that holds every value valid for ``schema``, or None (JSON text)."""
    return _SchemaMapper(schema).arrow_type(schema, ())


def prune_absent(value: Any, schema: Mapping[str, Any]) -> Any:
    """``value`` read from a struct column with the nulls that stand for absent keys removed:
    a None under a property that is not required and whose schema does not allow null. Used
    before validating a row into a model whose optional fields have other defaults."""
    return _SchemaMapper(schema).prune(value, schema, ())


class _SchemaMapper:
    """Walks one JSON schema, following its local ``$ref``s (never one it is already inside)."""

    __slots__ = ("_root",)

    def __init__(self, root: Mapping[str, Any]) -> None:
        self._root = root

    def arrow_type(self, schema: Any, seen: tuple[str, ...]) -> Any | None:
        resolved = self._resolve(schema, seen)
        if resolved is None:
            return None
        schema, seen = resolved
        inner = _without_null(schema)
        if inner is not None:
            return self.arrow_type(inner, seen)
        if any(key in schema for key in _COMBINATIONS):
            return None  # the keys and types a combination allows are not in one place
        kind = _single_type(schema)
        if kind is not None and kind in _PRIMITIVES:
            return _PRIMITIVES[kind]
        if kind == "array":
            items = schema.get("items")
            if not isinstance(items, Mapping) or "prefixItems" in schema:
                return None
            item_type = self.arrow_type(items, seen)
            return None if item_type is None else pa.list_(item_type)
        if kind == "object":
            return self._struct(schema, seen)
        return None

    def _struct(self, schema: Mapping[str, Any], seen: tuple[str, ...]) -> Any | None:
        properties = schema.get("properties")
        required = schema.get("required", [])
        extra = schema.get("additionalProperties", True)
        if (
            not isinstance(properties, Mapping)
            or not properties
            or not isinstance(extra, bool)
            or "patternProperties" in schema
            or not isinstance(required, list)
            or any(name not in properties for name in required)
        ):
            return None
        fields = []
        for name, property_schema in properties.items():
            field_type = self.arrow_type(property_schema, seen)
            if field_type is None:
                return None
            nullable = name not in required or self._allows_null(property_schema, seen)
            fields.append(pa.field(str(name), field_type, nullable=nullable))
        return pa.struct(fields)

    def prune(self, value: Any, schema: Any, seen: tuple[str, ...]) -> Any:
        resolved = self._resolve(schema, seen)
        if resolved is None or value is None:
            return value
        schema, seen = resolved
        inner = _without_null(schema)
        if inner is not None:
            return self.prune(value, inner, seen)
        if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
            return [self.prune(item, schema["items"], seen) for item in value]
        properties = schema.get("properties")
        if not isinstance(value, dict) or not isinstance(properties, Mapping):
            return value
        required = schema.get("required", [])
        pruned: dict[str, Any] = {}
        for key, item in value.items():
            property_schema = properties.get(key)
            if property_schema is None:
                pruned[key] = item
            elif item is None:
                if key in required or self._allows_null(property_schema, seen):
                    pruned[key] = None
            else:
                pruned[key] = self.prune(item, property_schema, seen)
        return pruned

    def _allows_null(self, schema: Any, seen: tuple[str, ...]) -> bool:
        resolved = self._resolve(schema, seen)
        if resolved is None:
            return True
        schema, _ = resolved
        if _without_null(schema) is not None:
            return True
        kind = schema.get("type")
        choices = schema.get("enum", [])
        return (
            kind == "null"
            or (isinstance(kind, list) and "null" in kind)
            or (isinstance(choices, list) and None in choices)
            or ("const" in schema and schema["const"] is None)
        )

    def _resolve(
        self, schema: Any, seen: tuple[str, ...]
    ) -> tuple[Mapping[str, Any], tuple[str, ...]] | None:
        """``schema`` with its ``$ref`` followed; None for a schema that cannot be mapped
        (not a mapping, a remote or recursive reference, or a ``$ref`` beside other keys)."""
        while isinstance(schema, Mapping) and "$ref" in schema:
            ref = schema["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#/") or ref in seen:
                return None
            if set(schema) - {"$ref", "description", "title", "default"}:
                return None
            target: Any = self._root
            for part in ref[2:].split("/"):
                if not isinstance(target, Mapping) or part not in target:
                    return None
                target = target[part]
            schema, seen = target, (*seen, ref)
        if not isinstance(schema, Mapping):
            return None
        return schema, seen


def _single_type(schema: Mapping[str, Any]) -> str | None:
    """The one non-null JSON type ``schema`` allows, from ``type`` or from its ``enum``/``const``
    values; None when it allows several or does not say."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        return kinds[0] if len(kinds) == 1 and isinstance(kinds[0], str) else None
    if isinstance(kind, str):
        return kind
    choices = schema.get("enum", [schema["const"]] if "const" in schema else [])
    if not isinstance(choices, list):
        return None
    types = {_json_type(choice) for choice in choices if choice is not None}
    return types.pop() if len(types) == 1 else None


def _json_type(value: object) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _without_null(schema: Mapping[str, Any]) -> Any | None:
    """The other branch of ``anyOf``/``oneOf`` [X, {"type": "null"}] (pydantic's ``X | None``)."""
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and len(branches) == 2:
            others = [b for b in branches if not (isinstance(b, Mapping) and _is_null(b))]
            if len(others) == 1:
                return others[0]
    return None


def _is_null(schema: Mapping[str, Any]) -> bool:
    return schema.get("type") == "null"
