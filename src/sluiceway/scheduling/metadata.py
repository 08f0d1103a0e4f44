"""Static scheduling metadata of a column generator (SPEC §3.2).

Metadata says what kind of resource a generator's tasks use and how much weight their group gets.
It never carries queue state, limits, cooldowns or a promise of how many requests a task makes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sluiceway.errors import SchedulingMetadataError


class SchedulingKind(enum.Enum):
    LOCAL = "local"
    MODEL = "model"
    CUSTOM_MODEL = "custom_model"


_IDENTITY_LENGTH = {
    SchedulingKind.LOCAL: 2,
    SchedulingKind.MODEL: 4,
    SchedulingKind.CUSTOM_MODEL: 4,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulingMetadata:
    """``identity`` is a tuple of strings whose first element is ``kind.value``.

    - local: ``("local", resource_name)``
    - model: ``("model", provider, canonical_model_id, generation_kind)``
    - custom_model: ``("custom_model", namespace, resource_name, version)``
    """

    kind: SchedulingKind
    identity: tuple[str, ...]
    weight: int = 1

    @classmethod
    def local(cls, resource_name: str = "default") -> SchedulingMetadata:
        return cls(kind=SchedulingKind.LOCAL, identity=("local", resource_name), weight=1)

    @classmethod
    def model(
        cls, *, provider: str, model_id: str, generation_kind: str, weight: int
    ) -> SchedulingMetadata:
        return cls(
            kind=SchedulingKind.MODEL,
            identity=("model", provider, model_id, generation_kind),
            weight=weight,
        )

    @classmethod
    def custom_model(
        cls, *, namespace: str, resource_name: str, version: str = "1", weight: int = 1
    ) -> SchedulingMetadata:
        return cls(
            kind=SchedulingKind.CUSTOM_MODEL,
            identity=("custom_model", namespace, resource_name, version),
            weight=weight,
        )

    @property
    def group_key(self) -> str:
        return ":".join(self.identity)


DEFAULT_METADATA = SchedulingMetadata.local()


def validate_metadata(metadata: object, *, owner: str) -> SchedulingMetadata:
    """Check a generator's metadata; raise :class:`SchedulingMetadataError` naming ``owner``."""
    if not isinstance(metadata, SchedulingMetadata):
        raise SchedulingMetadataError(
            "invalid_type",
            f"{owner}: get_scheduling_metadata() returned {type(metadata).__name__}; "
            "return a SchedulingMetadata (or None for the local default)",
            fallback=DEFAULT_METADATA,
        )
    if not isinstance(metadata.kind, SchedulingKind):
        raise SchedulingMetadataError(
            "invalid_kind", f"{owner}: kind {metadata.kind!r} is not a SchedulingKind"
        )
    identity = metadata.identity
    expected = _IDENTITY_LENGTH[metadata.kind]
    if (
        not isinstance(identity, tuple)
        or len(identity) != expected
        or not all(isinstance(part, str) and part for part in identity)
        or identity[0] != metadata.kind.value
    ):
        raise SchedulingMetadataError(
            "invalid_identity",
            f"{owner}: identity {identity!r} must be a tuple of {expected} non-empty strings "
            f"starting with {metadata.kind.value!r}",
        )
    if not isinstance(metadata.weight, int) or isinstance(metadata.weight, bool):
        raise SchedulingMetadataError(
            "invalid_weight", f"{owner}: weight {metadata.weight!r} must be an int >= 1"
        )
    if metadata.weight < 1:
        raise SchedulingMetadataError(
            "invalid_weight", f"{owner}: weight {metadata.weight} must be >= 1"
        )
    return metadata
