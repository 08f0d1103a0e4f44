"""The capacity plan of a run (SPEC §9.2) as a plain value, and ``capacity_plan.json``: configured
limits with where each came from, the final runtime snapshot and the observed maxima. The engine
fills it; this module only holds it and writes it (deterministic JSON, secrets redacted)."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sluiceway.errors import StorageError
from sluiceway.storage.atomic import write_bytes_atomically
from sluiceway.storage.json_encoding import dumps_document, to_document_value

CAPACITY_PLAN_FILE_NAME = "capacity_plan.json"
CAPACITY_PLAN_FORMAT_VERSION = 1

CapacityScalar = int | float | str | bool | None


class CapacitySource(enum.StrEnum):
    """Where a configured capacity value came from."""

    DEFAULT = "default"
    RUN_CONFIG = "run_config"
    MODEL_METADATA = "model_metadata"
    ENGINE_INTERNAL_CONFIG = "engine_internal_config"
    ADAPTER_CONFIG = "adapter_config"
    BENCHMARK_OVERRIDE = "benchmark_override"


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacityValue:
    """One configured value; ``fallback_from`` names the source that was tried first and had
    nothing, ``missing_reason`` says why (both None when the first source answered)."""

    value: CapacityScalar
    source: CapacitySource
    fallback_from: CapacitySource | None = None
    missing_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": to_document_value(self.value),
            "source": self.source.value,
            "fallback_from": None if self.fallback_from is None else self.fallback_from.value,
            "missing_reason": self.missing_reason,
        }


def _read_only(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True, kw_only=True)
class AsyncCapacityPlan:
    """The capacity plan of one run (SPEC §9.2): ``configured`` capacity values by dotted name,
    the ``runtime_snapshot`` taken at the end of the run and the ``observed_maxima``; the last
    two are free-form JSON-like mappings."""

    configured: Mapping[str, CapacityValue] = field(default_factory=dict)
    runtime_snapshot: Mapping[str, Any] = field(default_factory=dict)
    observed_maxima: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Read-only copies, so a plan handed to a writer cannot change under it.
        object.__setattr__(self, "configured", _read_only(self.configured))
        object.__setattr__(self, "runtime_snapshot", _read_only(self.runtime_snapshot))
        object.__setattr__(self, "observed_maxima", _read_only(self.observed_maxima))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data: enums as values, non-finite floats as strings, secrets redacted."""
        return {
            "format_version": CAPACITY_PLAN_FORMAT_VERSION,
            "configured": {name: value.to_dict() for name, value in self.configured.items()},
            "runtime_snapshot": to_document_value(self.runtime_snapshot),
            "observed_maxima": to_document_value(self.observed_maxima),
        }

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys, two-space indent, trailing newline)."""
        return dumps_document(self.to_dict())


CapacityPlan = AsyncCapacityPlan
"""The same class under its short name."""


def capacity_plan_from_json(text: str) -> AsyncCapacityPlan:
    """Reads ``capacity_plan.json`` text back (values as written: redacted, floats as strings)."""
    try:
        data = json.loads(text)
        configured = {
            name: CapacityValue(
                value=item["value"],
                source=CapacitySource(item["source"]),
                fallback_from=(
                    None if item["fallback_from"] is None else CapacitySource(item["fallback_from"])
                ),
                missing_reason=item["missing_reason"],
            )
            for name, item in data["configured"].items()
        }
        return AsyncCapacityPlan(
            configured=configured,
            runtime_snapshot=data["runtime_snapshot"],
            observed_maxima=data["observed_maxima"],
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StorageError(
            f"{CAPACITY_PLAN_FILE_NAME} is not a valid capacity plan ({type(exc).__name__}: "
            f"{exc}); it is damaged or was written by another program. Re-run the dataset to "
            "write a new one."
        ) from exc


def write_capacity_plan(path: Path, plan: AsyncCapacityPlan) -> Path:
    """Writes ``plan`` atomically and returns the file written. ``path`` is either the output
    directory (the file is ``capacity_plan.json`` in it) or the file path itself.

    Blocks (disk I/O and fsync): from the event loop, call it via ``asyncio.to_thread``. Raises
    ``StorageError`` naming the path when the file cannot be written, or when the plan holds a
    value JSON cannot represent.
    """
    target = Path(path)
    if target.is_dir():
        target = target / CAPACITY_PLAN_FILE_NAME
    try:
        text = plan.to_json()
    except (TypeError, ValueError) as exc:
        raise StorageError(
            f"cannot write {target}: the capacity plan holds a value JSON cannot represent "
            f"({exc}); the engine must put only numbers, strings, lists and mappings in it."
        ) from exc
    write_bytes_atomically(target, text.encode("utf-8"))
    return target
