"""Summary statistics and the leak finder of the benchmark harness."""

from __future__ import annotations

import pytest

from sluiceway.bench.results import percentile, summarize
from sluiceway.bench.scenarios import SCENARIOS, Endpoint
from sluiceway.bench.worker import _leaks
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
