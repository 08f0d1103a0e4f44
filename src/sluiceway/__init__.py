"""Sluiceway: dataset generation through layered admission control.

The public API is importable from here (``__all__``): ``generate``, ``generate_async``,
``preview``, ``preview_async``, ``start_generation`` and their result types, ``load_config`` /
``DatasetConfig``, ``load_dataset``, the errors a caller catches, and ``__version__``. Names
load lazily on first use so that ``import sluiceway`` stays cheap; ``dir(sluiceway)`` lists
exactly the public names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sluiceway.version import __version__

if TYPE_CHECKING:
    from sluiceway.api import (
        GenerationHandle,
        GenerationResult,
        generate,
        generate_async,
        preview,
        preview_async,
        start_generation,
    )
    from sluiceway.config.loading import load_config
    from sluiceway.config.models import DatasetConfig
    from sluiceway.engine.run import RunInfo
    from sluiceway.errors import (
        ConfigError,
        RunCancelledError,
        RunStoppedError,
        SluicewayError,
        StorageError,
    )
    from sluiceway.storage.dataset import load_dataset

_LAZY = {
    "generate": "sluiceway.api",
    "generate_async": "sluiceway.api",
    "preview": "sluiceway.api",
    "preview_async": "sluiceway.api",
    "start_generation": "sluiceway.api",
    "GenerationHandle": "sluiceway.api",
    "GenerationResult": "sluiceway.api",
    "RunInfo": "sluiceway.engine.run",
    "load_config": "sluiceway.config.loading",
    "DatasetConfig": "sluiceway.config.models",
    "load_dataset": "sluiceway.storage.dataset",
    "SluicewayError": "sluiceway.errors",
    "ConfigError": "sluiceway.errors",
    "StorageError": "sluiceway.errors",
    "RunStoppedError": "sluiceway.errors",
    "RunCancelledError": "sluiceway.errors",
}

__all__ = [
    "ConfigError",
    "DatasetConfig",
    "GenerationHandle",
    "GenerationResult",
    "RunCancelledError",
    "RunInfo",
    "RunStoppedError",
    "SluicewayError",
    "StorageError",
    "__version__",
    "generate",
    "generate_async",
    "load_config",
    "load_dataset",
    "preview",
    "preview_async",
    "start_generation",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sluiceway' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
