"""The capacity plan value and capacity_plan.json: deterministic, valid JSON, no secrets."""

from __future__ import annotations

import enum
import json
import math
from pathlib import Path

import pytest

from sluiceway.errors import StorageError
from sluiceway.storage.capacity_plan import (
    CapacityPlan,
    CapacitySource,
    CapacityValue,
    capacity_plan_from_json,
    write_capacity_plan,
)


class Resource(enum.StrEnum):
    LLM = "llm"
    LOCAL = "local"


def _plan() -> CapacityPlan:
    return CapacityPlan(
        configured={
            "run.buffer_size": CapacityValue(value=100, source=CapacitySource.RUN_CONFIG),
            "models.fast.max_parallel_requests": CapacityValue(
                value=8,
                source=CapacitySource.DEFAULT,
                fallback_from=CapacitySource.MODEL_METADATA,
                missing_reason="model card has no concurrency hint",
            ),
            "requests.unbounded_cap": CapacityValue(
                value=math.inf, source=CapacitySource.ENGINE_INTERNAL_CONFIG
            ),
        },
        runtime_snapshot={
            "task_admission": {"limits": {Resource.LOCAL: 4, Resource.LLM: 16}},
            "providers": {"openai": {"api_key": "sk-live-123", "max_tokens": 512}},
            "pairs": (1, 2),
        },
        observed_maxima={"row_groups_in_flight": 3, "queued_tasks_by_group": {"b": 2, "a": 5}},
    )


def test_json_is_deterministic_valid_and_sorted() -> None:
    text = _plan().to_json()

    data = json.loads(text)
    assert text == _plan().to_json()
    assert list(data["configured"]) == sorted(data["configured"])
    assert list(data["observed_maxima"]["queued_tasks_by_group"]) == ["a", "b"]
    assert "Infinity" not in text
    assert data["configured"]["requests.unbounded_cap"]["value"] == "inf"
    assert data["configured"]["models.fast.max_parallel_requests"] == {
        "value": 8,
        "source": "default",
        "fallback_from": "model_metadata",
        "missing_reason": "model card has no concurrency hint",
    }
    assert data["runtime_snapshot"]["task_admission"]["limits"] == {"llm": 16, "local": 4}
    assert data["runtime_snapshot"]["pairs"] == [1, 2]


def test_secrets_are_never_written_but_capacity_numbers_are() -> None:
    text = _plan().to_json()

    assert "sk-live-123" not in text
    provider = json.loads(text)["runtime_snapshot"]["providers"]["openai"]
    assert provider == {"api_key": "[redacted]", "max_tokens": 512}


def test_write_into_a_directory_and_read_back(tmp_path: Path) -> None:
    written = write_capacity_plan(tmp_path, _plan())

    assert written == tmp_path / "capacity_plan.json"
    assert [path.name for path in tmp_path.iterdir()] == ["capacity_plan.json"]
    loaded = capacity_plan_from_json(written.read_text())
    assert loaded.configured["run.buffer_size"] == CapacityValue(
        value=100, source=CapacitySource.RUN_CONFIG
    )
    assert loaded.observed_maxima["row_groups_in_flight"] == 3


def test_write_to_an_explicit_file_path(tmp_path: Path) -> None:
    target = tmp_path / "plan-copy.json"

    assert write_capacity_plan(target, CapacityPlan()) == target
    assert json.loads(target.read_text())["configured"] == {}


def test_unwritable_location_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")

    with pytest.raises(StorageError, match=r"capacity_plan\.json"):
        write_capacity_plan(blocker / "capacity_plan.json", _plan())


def test_a_value_json_cannot_hold_is_a_storage_error(tmp_path: Path) -> None:
    plan = CapacityPlan(runtime_snapshot={"clock": object()})

    with pytest.raises(StorageError, match="cannot represent"):
        write_capacity_plan(tmp_path, plan)
    assert list(tmp_path.iterdir()) == []


def test_plan_mappings_are_read_only_copies() -> None:
    limits = {"a": 1}
    plan = CapacityPlan(observed_maxima=limits)
    limits["a"] = 2

    assert plan.observed_maxima["a"] == 1
    with pytest.raises(TypeError):
        plan.observed_maxima["a"] = 3  # type: ignore[index]
