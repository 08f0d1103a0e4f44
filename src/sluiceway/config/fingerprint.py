"""The config fingerprint: a hash of exactly the settings that change the generated data.

Scheduling and capacity knobs (buffer sizes, concurrency, retries, timeouts, rate budgets,
simulated latency) and the output location are left out, so tuning them keeps a run resumable.
Callables are represented by ``module:qualname``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from sluiceway.config.models import DatasetConfig

FINGERPRINT_VERSION = 1

_PROVIDER_EXCLUDED = frozenset({"api_key_env", "headers", "budget_key"})
_SIMULATION_EXCLUDED = frozenset(
    {
        "latency_seconds",
        "latency_tail_seconds",
        "capacity",
        "rpm",
        "tpm",
        "retry_after_seconds",
        "queueing",
        "request_log",
        "window_seconds",
    }
)
_MODEL_EXCLUDED = frozenset(
    {"max_parallel_requests", "timeout_seconds", "rpm", "tpm", "latency_gradient"}
)
_COLUMN_EXCLUDED = frozenset({"scheduling", "timeout_seconds"})
_RUN_INCLUDED = ("num_records", "seed")


def canonical_config(config: DatasetConfig) -> dict[str, Any]:
    """The content-relevant part of ``config`` as plain JSON data (what the fingerprint hashes)."""
    dumped = config.model_dump(mode="json")
    providers = []
    for provider in dumped["providers"]:
        kept = {k: v for k, v in provider.items() if k not in _PROVIDER_EXCLUDED}
        kept["simulation"] = {
            k: v for k, v in provider["simulation"].items() if k not in _SIMULATION_EXCLUDED
        }
        providers.append(kept)
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "providers": providers,
        "models": [
            {k: v for k, v in model.items() if k not in _MODEL_EXCLUDED}
            for model in dumped["models"]
        ],
        "columns": [
            {k: v for k, v in column.items() if k not in _COLUMN_EXCLUDED}
            for column in dumped["columns"]
        ],
        "run": {key: dumped["run"][key] for key in _RUN_INCLUDED},
    }


def canonical_json(data: Mapping[str, Any]) -> str:
    """Deterministic JSON text: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_fingerprint(config: DatasetConfig) -> str:
    """SHA-256 hex digest of ``canonical_config(config)``."""
    return hashlib.sha256(canonical_json(canonical_config(config)).encode("utf-8")).hexdigest()


def config_diff(
    old: DatasetConfig | Mapping[str, Any], new: DatasetConfig | Mapping[str, Any]
) -> list[str]:
    """Readable differences between two canonical configs (or configs), e.g. for a refused
    resume: ``columns[summary].prompt: 'Summarize {{ text }}' -> 'Shorten {{ text }}'``.

    List entries that carry a ``name`` or ``alias`` are matched by it, not by position.
    """
    before = canonical_config(old) if isinstance(old, DatasetConfig) else dict(old)
    after = canonical_config(new) if isinstance(new, DatasetConfig) else dict(new)
    lines: list[str] = []
    _diff(before, after, "", lines)
    return lines


_MISSING = object()


def _diff(old: Any, new: Any, path: str, lines: list[str]) -> None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in _ordered_union(list(old), list(new)):
            _diff(old.get(key, _MISSING), new.get(key, _MISSING), _field(path, str(key)), lines)
        return
    if isinstance(old, list) and isinstance(new, list):
        old_keyed, new_keyed = _keyed(old), _keyed(new)
        if old_keyed is not None and new_keyed is not None:
            for key in _ordered_union(list(old_keyed), list(new_keyed)):
                _diff(
                    old_keyed.get(key, _MISSING),
                    new_keyed.get(key, _MISSING),
                    f"{path}[{key}]",
                    lines,
                )
            if [k for k in old_keyed if k in new_keyed] != [k for k in new_keyed if k in old_keyed]:
                lines.append(f"{path}: order changed")
            return
        if len(old) == len(new):
            for index, (a, b) in enumerate(zip(old, new, strict=True)):
                _diff(a, b, f"{path}[{index}]", lines)
            return
    if old is _MISSING:
        lines.append(f"{path}: added {_short(new)}")
    elif new is _MISSING:
        lines.append(f"{path}: removed (was {_short(old)})")
    elif old != new:
        lines.append(f"{path}: {_short(old)} -> {_short(new)}")


def _keyed(items: list[Any]) -> dict[str, Any] | None:
    keyed: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, Mapping):
            return None
        key = item.get("name", item.get("alias"))
        if not isinstance(key, str) or key in keyed:
            return None
        keyed[key] = item
    return keyed


def _ordered_union(first: list[str], second: list[str]) -> list[str]:
    return first + [key for key in second if key not in first]


def _field(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
