"""JSON text for everything storage writes: cell values kept as JSON, and the run documents
(manifest, capacity plan). Documents are deterministic (sorted keys, no NaN, secrets redacted);
cell values keep their own key order so a dict round-trips exactly as the generator returned it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

REDACTED = "[redacted]"

# Key names whose values are never written, whatever object carries them.
_SECRET_KEYS = frozenset(
    {
        "api_key",
        "apikey",
        "x-api-key",
        "authorization",
        "password",
        "secret",
        "client_secret",
        "access_token",
        "refresh_token",
        "bearer_token",
    }
)
_SECRET_SUFFIXES = ("_api_key", "_secret", "_password")


def is_secret_key(key: str) -> bool:
    """True for key names that hold credentials (``api_key``, ``openai_api_key``, ...)."""
    lowered = key.lower()
    return lowered in _SECRET_KEYS or lowered.endswith(_SECRET_SUFFIXES)


def _cell_default(value: object) -> object:
    """What ``json.dumps`` calls for cell values it cannot encode by itself."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(f"values of type {type(value).__qualname__} cannot be stored as JSON")


# One encoder for all cells: ``json.dumps`` with options builds a new encoder on every call.
_CELL_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_cell_default)


def dumps_cell(value: object) -> str:
    """Compact JSON text of one cell value; raises ``TypeError`` for unsupported objects."""
    return _CELL_ENCODER.encode(value)


def loads_cell(text: str) -> Any:
    """The Python value of a cell stored as JSON text."""
    return json.loads(text)


def to_document_value(value: object) -> Any:
    """Turns a value into plain JSON data: string keys, lists, finite numbers, no secrets.

    Enums become their value, datetimes ISO text, dataclasses and mappings objects, tuples and
    sets lists; non-finite floats become the strings ``"inf"``, ``"-inf"``, ``"nan"`` so the
    document stays valid JSON. Values under secret-looking keys become ``"[redacted]"``.
    """
    if isinstance(value, enum.Enum):
        return to_document_value(value.value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if hasattr(value, "get_secret_value"):
        return REDACTED
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = _document_key(key)
            out[name] = REDACTED if is_secret_key(name) else to_document_value(item)
        return out
    if isinstance(value, list | tuple):
        return [to_document_value(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((to_document_value(item) for item in value), key=repr)
    if isinstance(value, np.ndarray):
        return to_document_value(value.tolist())
    if isinstance(value, np.generic):
        return to_document_value(value.item())
    raise TypeError(
        f"values of type {type(value).__qualname__} cannot be written to a JSON document; "
        "convert them to numbers, strings, lists or mappings first"
    )


def _document_key(key: object) -> str:
    if isinstance(key, enum.Enum):
        return str(key.value)
    return key if isinstance(key, str) else str(key)


def dumps_document(value: object) -> str:
    """Deterministic, indented JSON text of a document, ending with a newline."""
    data = to_document_value(value)
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
