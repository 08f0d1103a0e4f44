"""An ``openai`` provider without ``api_key_env`` sends ``OPENAI_API_KEY``: a whole run against the
loopback mock server, which refuses requests without the key, succeeds, and the key appears in no
file of the output directory, no event and no log record. A remote endpoint whose default variable
is unset stops the run before anything is written, naming the variable."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sluiceway.config.loading import parse_config
from sluiceway.engine.run import RunOptions, run_dataset
from sluiceway.errors import ConfigError
from sluiceway.observability import EventBus, MemoryEventSink
from sluiceway.observability.codec import encode_event
from sluiceway.providers.behaviour import SimulationSettings
from sluiceway.providers.mock_server import MockProviderServer, MockServerSettings

KEY = "sk-default-env-5b1e9c0d7a3f2468DEFAULTkey"


@pytest.fixture
async def server() -> AsyncIterator[MockProviderServer]:
    mock = MockProviderServer(
        MockServerSettings(
            simulation=SimulationSettings(latency_seconds=0.001, capacity=8), api_key=KEY
        )
    )
    await mock.start()
    try:
        yield mock
    finally:
        await mock.aclose()


def _config(base_url: str, out: Path) -> dict[str, Any]:
    return {
        "providers": [{"name": "mock", "type": "openai", "base_url": base_url}],
        "models": [{"alias": "w", "provider": "mock", "model": "m", "max_parallel_requests": 4}],
        "columns": [
            {"name": "n", "type": "sampler", "sampler": {"kind": "integer", "low": 0, "high": 9}},
            {"name": "text", "type": "llm_text", "model": "w", "prompt": "Write about {{ n }}"},
        ],
        "run": {
            "num_records": 12,
            "seed": 5,
            "buffer_size": 4,
            "retry": {"max_attempts": 1},
            "early_shutdown": {"enabled": False},
        },
        "output": {"path": str(out)},
    }


async def test_the_default_variable_is_sent_and_never_written(
    server: MockProviderServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = tmp_path / "out"
    sink = MemoryEventSink()
    outcome = await run_dataset(
        parse_config(_config(server.base_url, out)),
        RunOptions(output_dir=out, events=EventBus([sink]), events_file=out / "events.jsonl"),
    )
    assert outcome.info.rows_written == 12
    assert server.stats()["models"]["m"]["successes"] == 12
    assert server.stats()["responses_by_status"].get("401", 0) == 0

    written = b"".join(path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file())
    assert (out / "events.jsonl").stat().st_size > 0
    assert KEY.encode() not in written and KEY[:16].encode() not in written
    events = "".join(encode_event(event) for event in sink.events)
    shown = repr(outcome.info) + repr(outcome.capacity_plan) + caplog.text
    assert KEY not in events and KEY not in shown


async def test_a_remote_endpoint_without_its_default_variable_stops_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "out"
    config = parse_config(_config("https://llm.example.com/v1", out))
    with pytest.raises(ConfigError) as info:
        await run_dataset(config, RunOptions(output_dir=out))
    assert "OPENAI_API_KEY" in str(info.value)
    assert not out.exists()
