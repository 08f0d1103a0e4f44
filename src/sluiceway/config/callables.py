"""Resolution of custom-column function references (``package.module:attribute``) to callables.

Config validation checks only the reference syntax; importing happens here, when the engine
builds generators, and failures become ``ConfigError`` naming the column.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from sluiceway.errors import ConfigError, ConfigIssue


def resolve_callable(
    ref: str | Callable[..., Any], *, column_name: str | None = None
) -> Callable[..., Any]:
    """Return ``ref`` itself if callable, else import ``module:attr.attr`` and return it.

    Raises ConfigError when the module cannot be imported, the attribute is missing, or the
    object is not callable.
    """
    if not isinstance(ref, str):
        if callable(ref):
            return ref
        raise _error(column_name, f"function {ref!r} is not callable", None)
    module_name, sep, attribute_path = ref.partition(":")
    if not sep or not module_name or not attribute_path:
        raise _error(
            column_name,
            f"function {ref!r} is not a 'package.module:attribute' reference",
            "e.g. `function: my_pkg.columns:make_title`",
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise _error(
            column_name,
            f"cannot import module {module_name!r} for function {ref!r}: {exc}",
            "check the module path and that the package is installed or on PYTHONPATH",
        ) from exc
    for part in attribute_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise _error(
                column_name,
                f"{module_name!r} has no attribute {attribute_path!r} (function {ref!r})",
                "check the name after ':'",
            ) from exc
    if not callable(target):
        raise _error(
            column_name,
            f"{ref!r} resolves to a {type(target).__name__}, which is not callable",
            "point at a function or a class",
        )
    resolved: Callable[..., Any] = target
    return resolved


def _error(column_name: str | None, message: str, hint: str | None) -> ConfigError:
    path = f"columns ({column_name}).function" if column_name else "function"
    return ConfigError([ConfigIssue(path=path, message=message, hint=hint)])
