"""Sluiceway: dataset generation through layered admission control.

``generate``, ``generate_async``, ``preview`` and ``DatasetConfig`` are importable from here; they
load lazily so that ``import sluiceway`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sluiceway.version import __version__

__all__ = ["DatasetConfig", "__version__", "generate", "generate_async", "load_config", "preview"]

if TYPE_CHECKING:
    from sluiceway.api import generate, generate_async, preview
    from sluiceway.config.loading import load_config
    from sluiceway.config.models import DatasetConfig

_LAZY = {
    "generate": "sluiceway.api",
    "generate_async": "sluiceway.api",
    "preview": "sluiceway.api",
    "load_config": "sluiceway.config.loading",
    "DatasetConfig": "sluiceway.config.models",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sluiceway' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
