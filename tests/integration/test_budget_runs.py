"""Whole runs whose rpm or tpm budget is the binding limit, on the real event loop.

The endpoint enforces the same window as the client's budget (a short one, so the budget binds
several times within a test): the simulated provider in-process, and the loopback mock server
over HTTP; and, with no client budget at all, windows the mock server reports only in its
rate-limit headers. The endpoint is the witness: a client that sends past a window is refused
there. Every run must finish with every row written and every lease released.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sluiceway.config.models import DatasetConfig
from sluiceway.engine.run import RunOptions, run_dataset
from sluiceway.observability import EventBus, EventKind, MemoryEventSink
from sluiceway.providers.behaviour import RateWindowKind, SimulationSettings
from sluiceway.providers.mock_server import MockProviderServer, MockServerSettings

WINDOW_SECONDS = 1.0
RECORDS = 50
RPM = 20  # per window: the run needs three windows
TPM = 500

pytestmark = pytest.mark.timeout(60)


def _config(provider: dict[str, Any], budget: dict[str, int], *, ramp: float = 0.0) -> Any:
    return DatasetConfig.model_validate(
        {
            "providers": [provider],
            "models": [
                {
                    "alias": "w",
                    "provider": provider["name"],
                    "model": "m-1",
                    "max_parallel_requests": 8,
                    "parameters": {"max_tokens": 12},
                    **budget,
                }
            ],
            "columns": [
                {"name": "topic", "type": "sampler", "sampler": {"kind": "uuid"}},
                {"name": "text", "type": "llm_text", "model": "w", "prompt": "On {{ topic }}"},
            ],
            "run": {
                "num_records": RECORDS,
                "seed": 5,
                "buffer_size": 20,
                "retry": {"backoff_base_seconds": 0.0, "backoff_max_seconds": 0.0},
                "request_admission": {
                    "budget_window_seconds": WINDOW_SECONDS,
                    "startup_ramp_seconds": ramp,
                },
            },
        }
    )


def _simulated(**limits: int) -> dict[str, Any]:
    simulation = {"latency_seconds": 0.005, "window_seconds": WINDOW_SECONDS, **limits}
    return {"name": "sim", "type": "simulated", "simulation": simulation}


def _finished(out: Path) -> dict[str, Any]:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["rows_written"] == RECORDS
    plan = json.loads((out / "capacity_plan.json").read_text())["runtime_snapshot"]
    requests = plan["request_admission"]
    assert requests["live_leases"] == 0 and requests["waiters"] == 0
    assert requests["granted_total"] == requests["released_total"]
    return requests  # type: ignore[no-any-return]


def _rate_limited(requests: dict[str, Any]) -> int:
    return sum(
        outcomes["rate_limited"]
        for model in requests["by_provider_model"].values()
        for outcomes in model["outcomes"].values()
    )


def _run(config: DatasetConfig, out: Path) -> None:
    asyncio.run(run_dataset(config, RunOptions(output_dir=out, overwrite=True)))


def test_an_rpm_budget_paces_a_run_without_a_refusal(tmp_path: Path) -> None:
    _run(_config(_simulated(rpm=RPM), {"rpm": RPM}), tmp_path)
    requests = _finished(tmp_path)
    assert _rate_limited(requests) == 0
    (model,) = requests["by_provider_model"].values()
    (budget,) = model["budgets"]
    assert budget["kind"] == "rpm" and budget["charged_total"] == RECORDS
    assert model["max_waiters"] > 0  # the budget held requests back


def test_a_tpm_budget_paces_a_run_with_a_ramp_and_failures(tmp_path: Path) -> None:
    provider = _simulated(tpm=TPM, failure_rate=0.1)  # type: ignore[arg-type]
    _run(_config(provider, {"tpm": TPM}, ramp=0.2), tmp_path)
    requests = _finished(tmp_path)
    # The estimate is corrected at release: only the first window may see refusals.
    assert _rate_limited(requests) <= 8


@pytest.mark.parametrize("budget", [{"rpm": RPM}, {"tpm": TPM}])
def test_budgets_pace_a_run_over_http_against_the_mock_server(
    tmp_path: Path, budget: dict[str, int]
) -> None:
    async def run() -> dict[str, Any]:
        simulation = SimulationSettings(
            latency_seconds=0.005, window_seconds=WINDOW_SECONDS, **budget
        )
        server = MockProviderServer(MockServerSettings(simulation=simulation))
        await server.start()
        try:
            provider = {"name": "mock", "type": "openai", "base_url": server.base_url}
            await run_dataset(
                _config(provider, budget), RunOptions(output_dir=tmp_path, overwrite=True)
            )
            return server.stats()
        finally:
            await server.aclose()

    stats = asyncio.run(run())
    requests = _finished(tmp_path)
    refused = stats["responses_by_status"].get("429", 0)
    assert refused == _rate_limited(requests)
    assert refused <= (0 if "rpm" in budget else 8)
    assert stats["responses_by_status"]["200"] == RECORDS


@pytest.mark.parametrize("window", ["rpm", "tpm"])
def test_windows_the_server_reports_pace_a_run_with_no_client_budget(
    tmp_path: Path, window: str
) -> None:
    # The server refills its window continuously (as providers describe theirs) and says so in
    # its x-ratelimit-* headers; the client has no budget of its own. Pacing by those headers
    # leaves the refusals to the first window at most (the client learns the window from the
    # first answers), then none.
    limits = {"rpm": RPM} if window == "rpm" else {"tpm": TPM}

    async def run() -> tuple[dict[str, Any], list[Any]]:
        simulation = SimulationSettings(
            latency_seconds=0.005,
            window_seconds=WINDOW_SECONDS,
            rate_window=RateWindowKind.BUCKET,
            **limits,
        )
        server = MockProviderServer(MockServerSettings(simulation=simulation))
        await server.start()
        sink = MemoryEventSink([EventKind.REQUEST_PACING_HELD])
        try:
            provider = {"name": "mock", "type": "openai", "base_url": server.base_url}
            await run_dataset(
                _config(provider, {}),
                RunOptions(output_dir=tmp_path, overwrite=True, events=EventBus([sink])),
            )
            return server.stats(), list(sink.events)
        finally:
            await server.aclose()

    stats, held = asyncio.run(run())
    requests = _finished(tmp_path)
    assert stats["responses_by_status"]["200"] == RECORDS
    assert held, "the reported window never held a grant back"
    assert stats["responses_by_status"].get("429", 0) == _rate_limited(requests)
    # Measured at the server: no refusal once the first window has passed.
    model = stats["models"]["m-1"]
    series = model["series"]
    first_window_end = model["first_admitted_at"] + WINDOW_SECONDS
    refused_then = [
        refused
        for at, refused in zip(series["at_seconds"], series["rate_limited"], strict=True)
        if at <= first_window_end
    ]
    # A token window is paced by estimates (prompt / 4 + max_tokens, scaled by the usage
    # answers report), so a request or two may still pass it when answers run long.
    late = series["rate_limited"][-1] - refused_then[-1]
    assert late == 0 if window == "rpm" else late <= 2
