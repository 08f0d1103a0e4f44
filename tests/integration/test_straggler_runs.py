"""Whole runs on the real event loop against the loopback mock server while some requests hang
(the server holds them, and their slot, until the client gives up): adaptive timeouts abandon
the hangs long before the model's ``timeout_seconds`` and the rows are retried; with hedging,
hedges answer for hanging attempts. Every row is written, every lease released, and the events,
the capacity plan and the report show what happened. No timing assertions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sluiceway.config.models import DatasetConfig
from sluiceway.engine.run import RunOptions, run_dataset
from sluiceway.observability import EventBus, EventKind, MemoryEventSink
from sluiceway.observability.request_events import RequestAdaptiveTimeout, RequestHedgeCompleted
from sluiceway.providers.behaviour import SimulationSettings
from sluiceway.providers.mock_server import MockProviderServer, MockServerSettings

RECORDS = 120
TIMEOUT_SECONDS = 5.0

pytestmark = pytest.mark.timeout(90)


def _config(base_url: str, *, hedging: bool) -> DatasetConfig:
    return DatasetConfig.model_validate(
        {
            "providers": [{"name": "mock", "type": "openai", "base_url": base_url}],
            "models": [
                {
                    "alias": "w",
                    "provider": "mock",
                    "model": "m-1",
                    "max_parallel_requests": 16,
                    "timeout_seconds": TIMEOUT_SECONDS,
                }
            ],
            "columns": [
                {"name": "topic", "type": "sampler", "sampler": {"kind": "uuid"}},
                {"name": "text", "type": "llm_text", "model": "w", "prompt": "On {{ topic }}"},
                {"name": "summary", "type": "llm_text", "model": "w", "prompt": "Sum {{ text }}"},
            ],
            "run": {
                "num_records": RECORDS,
                "seed": 7,
                "buffer_size": 10,
                "max_concurrent_row_groups": 1 if hedging else 2,
                "retry": {"backoff_base_seconds": 0.0, "backoff_max_seconds": 0.0},
                "stragglers": {
                    "min_samples": 5,
                    "min_timeout_seconds": 0.3,
                    "hedging": hedging,
                    "hedge_budget_ratio": 0.25,
                },
                "events": {"trace_sample_rate": 1.0},
            },
        }
    )


def _run(out: Path, *, hedging: bool) -> tuple[dict[str, Any], MemoryEventSink]:
    sink = MemoryEventSink()

    async def run() -> dict[str, Any]:
        server = MockProviderServer(
            MockServerSettings(
                simulation=SimulationSettings(latency_seconds=0.02), hang_rate=0.04, seed=0
            )
        )
        await server.start()
        try:
            await run_dataset(
                _config(server.base_url, hedging=hedging),
                RunOptions(
                    output_dir=out,
                    overwrite=True,
                    events=EventBus([sink]),
                    events_file=out / "events.jsonl",
                    report=True,
                ),
            )
            await asyncio.sleep(0)  # let the server see the last abandoned connections close
            return server.stats()
        finally:
            await server.aclose()

    return asyncio.run(run()), sink


def _runtime(out: Path) -> dict[str, Any]:
    """The run's capacity plan runtime snapshot, after checking the run is complete and every
    lease was released."""
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["rows_written"] == RECORDS
    runtime: dict[str, Any] = json.loads((out / "capacity_plan.json").read_text())[
        "runtime_snapshot"
    ]
    requests = runtime["request_admission"]
    assert requests["live_leases"] == requests["in_flight"] == requests["waiters"] == 0
    assert requests["granted_total"] == requests["released_total"]
    assert requests["release_diagnostics"] == 0
    return runtime


def test_hanging_requests_are_abandoned_at_the_adaptive_timeout(tmp_path: Path) -> None:
    stats, sink = _run(tmp_path, hedging=False)
    runtime = _runtime(tmp_path)
    assert stats["faults"]["hang"] > 0
    assert stats["total"]["in_flight"] == 0  # every held request was given up by the client
    expired = [e for e in sink.events if isinstance(e, RequestAdaptiveTimeout)]
    executor = runtime["model_request_executor"]
    assert len(expired) == executor["adaptive_timeouts"] > 0
    assert all(e.timeout_seconds < TIMEOUT_SECONDS for e in expired)
    assert all(e.correlation is not None for e in expired)
    assert {e.correlation.column for e in expired if e.correlation} <= {"text", "summary"}
    (outcomes,) = runtime["request_admission"]["by_provider_model"].values()
    assert outcomes["outcomes"]["chat"]["provider_timeout"] >= len(expired)
    windows = {w["column"]: w for w in executor["latency_windows"]}
    assert set(windows) == {"text", "summary", None}  # None: the provider/model as a whole
    assert all(0.3 <= w["timeout_seconds"] < TIMEOUT_SECONDS for w in windows.values())
    report = (tmp_path / "report.md").read_text()
    assert "## Stragglers" in report
    assert f"{len(expired):,} adaptive timeout" in report


def test_hedges_answer_for_hanging_requests_within_their_budget(tmp_path: Path) -> None:
    stats, sink = _run(tmp_path, hedging=True)
    runtime = _runtime(tmp_path)
    assert stats["faults"]["hang"] > 0
    assert stats["total"]["in_flight"] == 0
    hedges = runtime["model_request_executor"]["hedges"]
    assert hedges["started"] > 0
    assert hedges["started"] == hedges["won"] + hedges["lost"] + hedges["failed"]
    completed = [e for e in sink.events if isinstance(e, RequestHedgeCompleted)]
    assert len(completed) == hedges["started"]
    started = sum(1 for e in sink.events if e.kind is EventKind.REQUEST_HEDGE_STARTED)
    assert started == hedges["started"]
    attempts = runtime["model_request_executor"]["attempts"]
    assert hedges["started"] <= 0.25 * (attempts - hedges["started"])
    assert "hedged attempt" in (tmp_path / "report.md").read_text()
