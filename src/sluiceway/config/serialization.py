"""Writing a ``DatasetConfig`` back out as plain data, YAML or JSON that loads to an equal config.

Callables of custom columns are written as ``module:qualname`` references; they load back only
if that reference is importable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from sluiceway.config.loading import JSON_SUFFIXES
from sluiceway.config.models import DatasetConfig


def config_to_dict(config: DatasetConfig) -> dict[str, Any]:
    """The config as JSON-compatible data (every field, defaults included)."""
    return config.model_dump(mode="json")


def config_to_yaml(config: DatasetConfig) -> str:
    """The config as YAML text, fields in declaration order."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)


def dump_config(config: DatasetConfig, path: str | Path) -> Path:
    """Write the config to ``path`` as JSON (``.json``) or YAML (anything else)."""
    target = Path(path)
    if target.suffix.lower() in JSON_SUFFIXES:
        text = json.dumps(config_to_dict(config), indent=2, ensure_ascii=False) + "\n"
    else:
        text = config_to_yaml(config)
    target.write_text(text, encoding="utf-8")
    return target
