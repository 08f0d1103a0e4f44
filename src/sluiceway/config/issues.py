"""Turning pydantic validation errors into ``ConfigIssue``s a user can act on.

Paths are readable (``columns[2] (summary).prompt``, union tags removed), the bad value is shown
truncated, and common mistakes get a hint: close matches for unknown fields, column types,
sampler kinds and literal values, and the list of required fields for missing ones.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Tag, ValidationError
from pydantic_core import ErrorDetails

from sluiceway.config.models import (
    COLUMN_TYPES,
    SAMPLER_KINDS,
    DatasetConfig,
    close_match_hint,
)
from sluiceway.errors import ConfigIssue

_VALUE_PREVIEW_CHARS = 60
_LITERAL_OPTION = re.compile(r"'([^']*)'")


def issues_from_validation_error(
    error: ValidationError,
    data: Any,
    *,
    root: Any = DatasetConfig,
    path_prefix: str = "",
) -> list[ConfigIssue]:
    """One issue per pydantic error of validating ``data`` as ``root``.

    ``path_prefix`` is prepended to every path (e.g. ``columns[3] (title)`` when a single column
    was validated on its own). Errors from the branches of a plain union that land on the same
    path are merged into one issue.
    """
    issues: list[ConfigIssue] = []
    merged: dict[str, int] = {}
    for details in error.errors():
        location = _Location.walk(details["loc"], data, root)
        path = _join(path_prefix, location.path)
        message, hint, path = _explain(details, location, path)
        if location.in_plain_union and path in merged:
            previous = issues[merged[path]]
            got = f"; got {show_value(details.get('input'))}"
            combined = f"{previous.message.removesuffix(got)} or {message[:1].lower()}{message[1:]}"
            issues[merged[path]] = ConfigIssue(path=path, message=combined, hint=previous.hint)
            continue
        if location.in_plain_union:
            merged[path] = len(issues)
        issues.append(ConfigIssue(path=path, message=message, hint=hint))
    return issues


def show_value(value: Any) -> str:
    """A short, truncated rendering of a bad value for messages."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    if len(text) > _VALUE_PREVIEW_CHARS:
        text = text[: _VALUE_PREVIEW_CHARS - 3] + "..."
    return text


class _Location:
    """Where an error points: the readable path, the model owning the last field, and the raw
    input at the error and at its parent."""

    __slots__ = ("in_plain_union", "owner", "path", "value")

    def __init__(self) -> None:
        self.path = ""
        self.owner: type[BaseModel] | None = None
        self.value: Any = None
        self.in_plain_union = False

    @classmethod
    def walk(cls, loc: Sequence[int | str], data: Any, root: Any) -> _Location:
        here = cls()
        node: Any = data
        tp: Any = root
        for part in loc:
            member = _tagged_member(tp, part)
            if member is not None:
                tp = member  # a discriminated-union tag, not a field: keep the data node
                continue
            branch = _plain_union_branch(tp, part)
            if branch is not None:
                here.in_plain_union = True
                tp = branch
                continue
            if isinstance(part, int):
                here.path += f"[{part}]"
                node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
                tp = _item_type(tp)
                label = _entry_label(node)
                if label:
                    here.path += f" ({label})"
                continue
            model = _model_of(tp)
            here.owner = model
            here.path += f".{part}" if here.path else part
            node = _child(node, part)
            tp = _field_type(model, part) if model is not None else _value_type(tp)
        here.value = node
        return here


def _join(prefix: str, path: str) -> str:
    if not prefix:
        return path
    if not path:
        return prefix
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"


def _explain(details: ErrorDetails, location: _Location, path: str) -> tuple[str, str | None, str]:
    kind = details["type"]
    context = details.get("ctx") or {}
    raw_input = details.get("input")
    field = str(details["loc"][-1]) if details["loc"] else ""

    if kind == "missing":
        owner = location.owner
        hint = None
        if owner is not None:
            required = [n for n, f in owner.model_fields.items() if f.is_required()]
            hint = f"add '{field}'; required here: {', '.join(required)}"
        return "required field is missing", hint, path
    if kind == "extra_forbidden":
        owner = location.owner
        known = list(owner.model_fields) if owner is not None else []
        return f"unknown field {field!r}", close_match_hint(field, known) if known else None, path
    if kind == "unknown_column_type":
        return _unknown_tag("column type", "type", raw_input, list(COLUMN_TYPES), path)
    if kind == "unknown_sampler_kind":
        return _unknown_tag("sampler kind", "kind", raw_input, list(SAMPLER_KINDS), path)
    if kind == "literal_error":
        options = _LITERAL_OPTION.findall(str(context.get("expected", "")))
        hint = close_match_hint(str(raw_input), options) if options else None
        hint = hint.replace("known:", "valid:") if hint else None
        return f"{details['msg']}; got {show_value(raw_input)}", hint, path
    if "hint" in context:
        return details["msg"], str(context["hint"]), path
    if kind in ("value_error", "assertion_error"):
        return (
            details["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, "),
            None,
            path,
        )
    if kind == "too_short":
        minimum = context.get("min_length", 1)
        actual = context.get("actual_length", 0)
        return f"needs at least {minimum} item(s), got {actual}", None, path
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of fields, got {show_value(raw_input)}", None, path
    return f"{details['msg']}; got {show_value(raw_input)}", None, path


def _unknown_tag(
    what: str, key: str, raw_input: Any, valid: list[str], path: str
) -> tuple[str, str | None, str]:
    path = f"{path}.{key}" if path else key
    valid_list = ", ".join(valid)
    if not isinstance(raw_input, Mapping):
        return f"expected a mapping with a '{key}', got {show_value(raw_input)}", None, path
    given = raw_input.get(key)
    if given is None:
        return f"missing '{key}'", f"set '{key}' to one of: {valid_list}", path
    matches = close_match_hint(str(given), valid)
    return f"unknown {what} {show_value(given)}", matches.replace("known:", "valid:"), path


def _entry_label(node: Any) -> str | None:
    for key in ("name", "alias"):
        value = node.get(key) if isinstance(node, Mapping) else getattr(node, key, None)
        if isinstance(value, str) and value:
            return value
    return None


def _child(node: Any, part: str) -> Any:
    if isinstance(node, Mapping):
        return node.get(part)
    if isinstance(node, BaseModel):
        return getattr(node, part, None)
    return None


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _union_members(tp: Any) -> tuple[Any, ...]:
    tp = _strip_annotated(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return ()


def _tagged_member(tp: Any, part: int | str) -> Any:
    for member in _union_members(tp):
        if typing.get_origin(member) is typing.Annotated:
            for meta in member.__metadata__:
                if isinstance(meta, Tag) and meta.tag == part:
                    return typing.get_args(member)[0]
    return None


def _plain_union_branch(tp: Any, part: int | str) -> Any:
    """For non-discriminated unions pydantic adds the branch's type name to the location."""
    if not isinstance(part, str):
        return None
    members = [m for m in _union_members(tp) if m is not type(None)]
    if len(members) < 2:
        return None
    model = _model_of(tp)
    if model is not None and part in model.model_fields:
        return None
    for member in members:
        name = getattr(_strip_annotated(member), "__name__", "")
        if name.lower() == part.lower() or part.lower().startswith(name.lower()):
            return member
    # Callable / generic branches have names pydantic derives itself; skip them as well.
    return members[0] if part in {"callable", "function-plain", "function-after"} else None


def _model_of(tp: Any) -> type[BaseModel] | None:
    tp = _strip_annotated(tp)
    members = [m for m in _union_members(tp) if m is not type(None)]
    if len(members) == 1:
        tp = _strip_annotated(members[0])
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    return None


def _field_type(model: type[BaseModel], part: str) -> Any:
    info = model.model_fields.get(part)
    return None if info is None else info.annotation


def _item_type(tp: Any) -> Any:
    tp = _optional_inner(tp)
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (list, tuple, Sequence) and args:
        return args[0]
    return None


def _value_type(tp: Any) -> Any:
    tp = _optional_inner(tp)
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (dict, Mapping) and len(args) == 2:
        return args[1]
    return None


def _optional_inner(tp: Any) -> Any:
    tp = _strip_annotated(tp)
    members = [m for m in _union_members(tp) if m is not type(None)]
    return _strip_annotated(members[0]) if len(members) == 1 else tp
