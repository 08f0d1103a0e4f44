"""Summary statistics, the leak finder and the event-derived metrics of the benchmark harness."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sluiceway.bench.results import percentile, summarize
from sluiceway.bench.scenarios import SCENARIOS, Endpoint
from sluiceway.bench.worker import _event_metrics, _leaks
from sluiceway.config.models import DatasetConfig


def test_summary_statistics() -> None:
    summary = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (summary.mean, summary.p50, summary.min, summary.max) == (3.0, 3.0, 1.0, 5.0)
    assert summary.p95 == pytest.approx(4.8)
    assert summary.stdev == pytest.approx(1.5811, abs=1e-4)
    assert percentile([7.0], 0.95) == 7.0


def test_leaks_name_every_left_over_lease_and_waiter() -> None:
    clean = {
        "task_admission": {"active_leases": 0, "leased": {"submission": 0}},
        "request_admission": {"live_leases": 0, "in_flight": 0, "waiters": 0},
    }
    assert _leaks(clean) == []
    leaky = {
        "task_admission": {"active_leases": 1, "acquired_total": 3, "released_total": 2},
        "request_admission": {"waiters": 2, "by_provider_model": {"p/m": {"waiters": 2}}},
    }
    found = _leaks(leaky)
    assert "task_admission.active_leases = 1" in found
    assert "request_admission.waiters = 2" in found
    assert "request_admission.p/m.waiters = 2" in found
    assert any("acquired 3" in line for line in found)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario_builds_a_valid_config(name: str) -> None:
    config = SCENARIOS[name].build(10, "http://127.0.0.1:9/v1")
    assert DatasetConfig.model_validate(config).run.num_records == 10


def test_physical_limit_is_capacity_over_latency() -> None:
    endpoint = Endpoint(alias="m", latency_seconds=0.02, capacity=8, client_cap=16)
    assert endpoint.limit_per_second == pytest.approx(400.0)


def _completed(at: float, provider: str, latency: float) -> SimpleNamespace:
    return SimpleNamespace(
        kind=SimpleNamespace(value="model_request_completed"),
        captured_at=at,
        provider=provider,
        model=f"bench-{provider}",
        outcome=SimpleNamespace(value="success"),
        latency_seconds=latency,
    )


def test_the_busy_provider_is_measured_inside_the_other_ones_cooldown() -> None:
    limited = SimpleNamespace(
        kind=SimpleNamespace(value="request_rate_limited"),
        captured_at=10.0,
        provider="a",
        cooldown_seconds=1.0,
    )
    # B (capacity 2) answers at 10.2, 10.6, 10.9 and 11.0; A cools down over [10, 11].
    events = [
        limited,
        _completed(10.2, "b", 0.4),
        _completed(10.6, "b", 0.4),
        _completed(10.9, "b", 1.0),
        _completed(11.0, "b", 0.4),
    ]
    analysis = {"cooldown_provider": "a", "busy_provider": "b", "busy_capacity": 2}
    metrics = _event_metrics(events, 0.0, analysis)
    assert metrics["cooldown_window_seconds"] == pytest.approx(1.0)
    assert metrics["busy_provider_calls_per_second_in_cooldown"] == pytest.approx(4.0)
    # In flight inside the window: 0.2 + 0.4 + 0.9 + 0.4 = 1.9 request-seconds of 2.
    assert metrics["busy_provider_in_flight_share_in_cooldown"] == pytest.approx(0.95)
