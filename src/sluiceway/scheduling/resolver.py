"""Metadata -> scheduler group and resource request, cached per generator for one run (SPEC §3.2).

The resolver validates each generator's ``get_scheduling_metadata()`` once; invalid metadata with a
fallback is replaced and recorded as a diagnostic, invalid metadata without one stops the run
before any scheduling happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from sluiceway.errors import SchedulingMetadataError
from sluiceway.scheduling.metadata import (
    DEFAULT_METADATA,
    SchedulingKind,
    SchedulingMetadata,
    validate_metadata,
)
from sluiceway.scheduling.tasks import SchedulerResource, SchedulerResourceRequest, TaskGroupSpec


class HasSchedulingMetadata(Protocol):
    name: str

    def get_scheduling_metadata(self) -> SchedulingMetadata | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedTaskScheduling:
    metadata: SchedulingMetadata
    group: TaskGroupSpec
    request: SchedulerResourceRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolutionDiagnostic:
    generator: str
    code: str
    message: str


_LOCAL_REQUEST = SchedulerResourceRequest(
    amounts=MappingProxyType({SchedulerResource.SUBMISSION: 1, SchedulerResource.LOCAL: 1})
)
_MODEL_REQUEST = SchedulerResourceRequest(
    amounts=MappingProxyType({SchedulerResource.SUBMISSION: 1})
)


class TaskSchedulingResolver:
    """Resolves and caches the scheduling of each generator (by name) for one run."""

    def __init__(self) -> None:
        self._cache: dict[str, ResolvedTaskScheduling] = {}
        self.diagnostics: list[ResolutionDiagnostic] = []

    def resolve(self, generator: HasSchedulingMetadata) -> ResolvedTaskScheduling:
        cached = self._cache.get(generator.name)
        if cached is not None:
            return cached
        metadata = self._metadata_of(generator)
        request = _LOCAL_REQUEST if metadata.kind is SchedulingKind.LOCAL else _MODEL_REQUEST
        resolved = ResolvedTaskScheduling(
            metadata=metadata,
            group=TaskGroupSpec(key=metadata.group_key, weight=metadata.weight),
            request=request,
        )
        self._cache[generator.name] = resolved
        return resolved

    def _metadata_of(self, generator: HasSchedulingMetadata) -> SchedulingMetadata:
        owner = f"column {generator.name!r}"
        try:
            raw = generator.get_scheduling_metadata()
            return DEFAULT_METADATA if raw is None else validate_metadata(raw, owner=owner)
        except SchedulingMetadataError as error:
            if not isinstance(error.fallback, SchedulingMetadata):
                raise
            self.diagnostics.append(
                ResolutionDiagnostic(
                    generator=generator.name, code=error.code, message=error.message
                )
            )
            return error.fallback
