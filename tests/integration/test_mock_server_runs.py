"""Whole-engine runs against the loopback mock server while it changes: an Anthropic provider
(429s from a competing client, injected 529s), competing clients that hold every slot and then
leave (polite and retrying at once), and a capacity that drops and comes back. Every run writes
every row and leaves no task lease, request lease or waiter; the server's counters are the
witness that the regime happened. Also ``sluiceway mock-server`` with its schedule and
competitor flags as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import pytest

from sluiceway.config.models import DatasetConfig
from sluiceway.engine.run import RunOptions, run_dataset
from sluiceway.providers.behaviour import EndpointLimit, SimulationSettings
from sluiceway.providers.mock_competitor import CompetitorMode, CompetitorSettings
from sluiceway.providers.mock_schedule import ScheduleEpoch, parse_limit_schedule
from sluiceway.providers.mock_server import (
    MockProviderServer,
    MockServerSettings,
    RetryAfterFormat,
)

KEY_ENV = "SLUICEWAY_MOCK_RUNS_KEY"
KEY = "sk-mock-runs-0123456789"
MODEL_ID = "mock-w"
SCHEMA = {
    "type": "object",
    "properties": {"tone": {"type": "string", "enum": ["warm", "cold"]}, "n": {"type": "integer"}},
    "required": ["tone", "n"],
    "additionalProperties": False,
}
TEXT = {"name": "text", "type": "llm_text", "model": "w", "prompt": "Describe {{ who }}"}
FACTS = {
    "name": "facts",
    "type": "llm_structured",
    "model": "w",
    "prompt": "Facts of {{ text }}",
    "output_schema": SCHEMA,
}


def _config(
    base_url: str, provider_type: str, *, records: int, cap: int, columns: list[dict[str, Any]]
) -> DatasetConfig:
    return DatasetConfig.model_validate(
        {
            "providers": [
                {
                    "name": "mock",
                    "type": provider_type,
                    "base_url": base_url,
                    "api_key_env": KEY_ENV,
                }
            ],
            "models": [
                {"alias": "w", "provider": "mock", "model": MODEL_ID, "max_parallel_requests": cap}
            ],
            "columns": [
                {"name": "who", "type": "sampler", "sampler": {"kind": "uuid"}},
                *columns,
            ],
            "run": {
                "num_records": records,
                "seed": 5,
                "buffer_size": 25,
                # Refusals count as attempts: enough for a competitor's whole stay.
                "retry": {
                    "max_attempts": 200,
                    "backoff_base_seconds": 0.01,
                    "backoff_max_seconds": 0.05,
                },
            },
        }
    )


def _simulation(**overrides: Any) -> SimulationSettings:
    values: dict[str, Any] = {"latency_seconds": 0.01, "retry_after_seconds": 0.05}
    values.update(overrides)
    return SimulationSettings(**values)


def _run(
    settings: MockServerSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    provider_type: str = "openai",
    records: int,
    cap: int,
    columns: list[dict[str, Any]],
) -> tuple[Path, dict[str, Any]]:
    """Run the engine against a mock server with ``settings``; (output dir, server /stats)."""
    monkeypatch.setenv(KEY_ENV, KEY)
    out = tmp_path / "run"

    async def run() -> dict[str, Any]:
        server = MockProviderServer(settings)
        await server.start()
        try:
            config = _config(
                server.base_url, provider_type, records=records, cap=cap, columns=columns
            )
            await run_dataset(config, RunOptions(output_dir=out))
            return server.stats()
        finally:
            await server.aclose()

    return out, asyncio.run(run())


def _assert_every_row_and_lease(out: Path, records: int) -> pd.DataFrame:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert (manifest["rows_written"], manifest["rows_dropped"]) == (records, 0)
    plan = json.loads((out / "capacity_plan.json").read_text())["runtime_snapshot"]
    tasks = plan["task_admission"]
    assert tasks["active_leases"] == 0 and tasks["acquired_total"] == tasks["released_total"]
    requests = plan["request_admission"]
    assert requests["live_leases"] == 0 and requests["in_flight"] == 0
    assert requests["waiters"] == 0
    assert requests["granted_total"] == requests["released_total"]
    rows = pd.concat(pd.read_parquet(path) for path in sorted(out.glob("part-*.parquet")))
    assert len(rows) == records and rows["text"].str.len().min() > 0
    return rows


def test_an_anthropic_provider_run_writes_every_row_through_429s_and_529s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = 25
    settings = MockServerSettings(
        simulation=_simulation(capacity=3),
        api_key=KEY,
        retry_after_format=RetryAfterFormat.SECONDS,
        error_529_rate=0.04,  # each costs a cooldown: a few are enough
        # Every slot is taken when the first request comes: it is refused with a retry-after.
        competitors=(
            CompetitorSettings(duration_seconds=0.2, slots=3, latency_seconds=0.02, model=MODEL_ID),
        ),
        schedule_epoch=ScheduleEpoch.FIRST_REQUEST,
    )
    out, stats = _run(
        settings,
        tmp_path,
        monkeypatch,
        provider_type="anthropic",
        records=records,
        cap=4,
        columns=[TEXT, FACTS],
    )
    rows = _assert_every_row_and_lease(out, records)
    for facts in rows["facts"]:
        jsonschema.validate(json.loads(facts) if isinstance(facts, str) else facts, SCHEMA)
    model = stats["models"][MODEL_ID]
    # Each row's text and facts were answered exactly once, over /v1/messages.
    assert model["successes"] == 2 * records
    assert model["rate_limited_by_reason"]["capacity"] >= 1
    assert stats["faults"]["529"] >= 1
    assert stats["responses_by_status"]["529"] == stats["faults"]["529"]


@pytest.mark.parametrize("mode", list(CompetitorMode))
def test_a_run_against_a_competitor_that_holds_every_slot_then_leaves_writes_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: CompetitorMode
) -> None:
    records = 100
    settings = MockServerSettings(
        simulation=_simulation(capacity=8),
        api_key=KEY,
        retry_after_format=RetryAfterFormat.MILLISECONDS,
        competitors=(CompetitorSettings(duration_seconds=0.3, slots=8, mode=mode),),
        schedule_epoch=ScheduleEpoch.FIRST_REQUEST,
    )
    out, stats = _run(settings, tmp_path, monkeypatch, records=records, cap=8, columns=[TEXT])
    _assert_every_row_and_lease(out, records)
    model = stats["models"][MODEL_ID]
    assert model["successes"] == records
    assert model["rate_limited"] >= 1  # the first request found every slot taken
    competitor = model["competitor"]
    assert competitor["in_flight"] == 0 and competitor["completed"] >= 8
    assert competitor["requests"] == competitor["completed"] + competitor["rate_limited"]


def test_a_run_through_a_capacity_drop_and_return_writes_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = 150  # at 8 x 50 ms at most 160 per second: the run outlasts the schedule
    settings = MockServerSettings(
        simulation=_simulation(capacity=8, latency_seconds=0.05),
        api_key=KEY,
        retry_after_format=RetryAfterFormat.MILLISECONDS,
        schedules=(parse_limit_schedule("0:8,0.2:2,0.5:8", EndpointLimit.CAPACITY, source="t"),),
        schedule_epoch=ScheduleEpoch.FIRST_REQUEST,
    )
    out, stats = _run(settings, tmp_path, monkeypatch, records=records, cap=8, columns=[TEXT])
    _assert_every_row_and_lease(out, records)
    assert [change["value"] for change in stats["limit_changes"]] == [8, 2, 8]
    model = stats["models"][MODEL_ID]
    assert model["successes"] == records and model["limits"]["capacity"] == 8


def test_the_mock_server_command_serves_schedules_and_competitors(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "sluiceway.cli.app",
        "mock-server",
        "--port",
        "0",
        "--latency-seconds",
        "0.05",
        "--capacity",
        "4",
        "--capacity-schedule",
        "0:4,600:1",
        "--rpm-schedule",
        "m=0:600",
        "--competitor",
        "start=0,duration=600,slots=3,mode=retry-at-once",
        "--schedule-epoch",
        "first-request",
        "--retry-after-format",
        "none",
        "--rate-window",
        "bucket",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line, "the server exited before it listened"
            if match := re.search(r"listening on (http://127\.0\.0\.1:\d+/v1)", line):
                url = match.group(1)
        assert url is not None
        body = json.dumps(
            {"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
        ).encode()
        request = urllib.request.Request(
            f"{url}/messages", data=body, headers={"anthropic-version": "2023-06-01"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
            headers = response.headers
        with urllib.request.urlopen(f"{url}/stats?series=0", timeout=10) as response:
            stats = json.loads(response.read())
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()
    assert answer["type"] == "message"
    assert headers["anthropic-ratelimit-requests-limit"] == "600"
    assert [s["limit"] for s in stats["schedules"]] == ["capacity", "rpm"]
    assert stats["competitors"][0]["mode"] == "retry-at-once"
    model = stats["models"]["m"]
    assert model["limits"] == {"capacity": 4, "rpm": 600, "tpm": None}
    assert model["successes"] == 1 and model["competitor"]["requests"] >= 3
