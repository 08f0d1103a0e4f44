"""The OpenTelemetry sink records the expected metrics, with bounded labels only."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from observability_samples import synthetic_run
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import sluiceway
from sluiceway.observability import EventBus
from sluiceway.observability.otel import OpenTelemetryEventSink

ALLOWED_LABELS = {"stream", "kind", "group_kind", "outcome", "reason", "domain", "result"}
ALLOWED_LABELS |= {"direction"}


def _collect(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource_metrics in data.resource_metrics:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def _bridge() -> tuple[EventBus, InMemoryMetricReader, MeterProvider]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    return EventBus([OpenTelemetryEventSink(provider)]), reader, provider


def test_the_bridge_records_the_expected_metrics() -> None:
    bus, reader, provider = _bridge()
    for event in synthetic_run():
        bus.emit(event)
    metrics = _collect(reader)
    provider.shutdown()

    def total(name: str, **attributes: str) -> float:
        return sum(
            point.value
            for point in metrics[name]
            if all(point.attributes.get(k) == v for k, v in attributes.items())
        )

    assert total("sluiceway.events", kind="task_completed") == 4
    assert total("sluiceway.events", stream="request") == 20  # 1 + 3 attempts * 6 + 1
    assert total("sluiceway.scheduler.tasks.completed", outcome="succeeded") == 4
    assert total("sluiceway.scheduler.tasks.completed", group_kind="model") == 2
    assert total("sluiceway.scheduler.tasks.running") == 0
    assert total("sluiceway.request.in_flight", domain="chat") == 0
    assert total("sluiceway.request.rate_limited", domain="chat") == 1
    assert total("sluiceway.scheduler.rows.written") == 2
    (wait,) = metrics["sluiceway.request.wait.duration"]
    assert wait.count == 3
    assert abs(wait.sum - 0.3) < 1e-9
    durations = {p.attributes["outcome"]: p.count for p in metrics["sluiceway.request.duration"]}
    assert durations == {"success": 2, "rate_limited": 1}


def test_metric_labels_are_bounded() -> None:
    bus, reader, provider = _bridge()
    for event in synthetic_run():
        bus.emit(event)
    metrics = _collect(reader)
    provider.shutdown()
    for points in metrics.values():
        for point in points:
            assert set(point.attributes) <= ALLOWED_LABELS
            values = {str(value) for value in point.attributes.values()}
            # No model id, task id, group key, column name or run id as a label value.
            assert not values & {"sim-writer", "text/0/0", "model:sim:sim-writer:text", "text"}
            assert not any("run-1" in value or "/" in value for value in values)


def test_without_counting_every_kind_only_metric_kinds_are_listened_for() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    sink = OpenTelemetryEventSink(provider, count_every_kind=False)
    bus = EventBus([sink])
    assert not bus.wants(synthetic_run()[0].kind)  # scheduler_job_started feeds no instrument
    for event in synthetic_run():
        bus.emit(event)
    metrics = _collect(reader)
    provider.shutdown()
    assert "sluiceway.events" not in metrics
    assert "sluiceway.request.duration" in metrics


def test_the_package_imports_the_opentelemetry_api_only() -> None:
    """The SDK is the application's choice: Sluiceway imports ``opentelemetry-api`` only."""
    root = Path(sluiceway.__file__).parent
    checked = 0
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                if module.startswith("opentelemetry"):
                    checked += 1
                    assert not module.startswith("opentelemetry.sdk"), path
    assert checked >= 1  # the bridge does import the API
