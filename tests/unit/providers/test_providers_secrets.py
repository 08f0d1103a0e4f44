"""The API key never leaves the request headers: not into events, logs, errors or any artifact.

Whole runs of the real engine against the loopback mock server (which checks the key), with an
``openai`` provider whose key comes from an environment variable: one run with the right key, with
every event kind written to ``events.jsonl`` and the report built; one with a wrong key, whose
requests are refused (401) and whose rows are dropped with a reason. Every byte written to the
output directory, every event, every log record at DEBUG and every error message is searched
for both keys.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sluiceway.config.loading import parse_config
from sluiceway.config.models import DatasetConfig
from sluiceway.engine.run import RunOptions, run_dataset
from sluiceway.observability import EventBus, MemoryEventSink
from sluiceway.observability.codec import encode_event
from sluiceway.providers.behaviour import SimulationSettings
from sluiceway.providers.mock_server import MockProviderServer, MockServerSettings

KEY = "sk-live-4f9c2e7a1b8d6053SECRETkey"
WRONG = "sk-wrong-77aa11bb22cc33ddWRONGkey"
KEY_ENV = "SLUICEWAY_SECRET_TEST_KEY"


@pytest.fixture
async def server() -> AsyncIterator[MockProviderServer]:
    mock = MockProviderServer(
        MockServerSettings(
            simulation=SimulationSettings(latency_seconds=0.001, capacity=4), api_key=KEY
        )
    )
    await mock.start()
    try:
        yield mock
    finally:
        await mock.aclose()


def _config(base_url: str, out: Path) -> DatasetConfig:
    return parse_config(
        {
            "providers": [
                {"name": "mock", "type": "openai", "base_url": base_url, "api_key_env": KEY_ENV}
            ],
            "models": [
                {"alias": "w", "provider": "mock", "model": "m", "max_parallel_requests": 8}
            ],
            "columns": [
                {
                    "name": "n",
                    "type": "sampler",
                    "sampler": {"kind": "integer", "low": 0, "high": 9},
                },
                {"name": "text", "type": "llm_text", "model": "w", "prompt": "Write about {{ n }}"},
                {
                    "name": "facts",
                    "type": "llm_structured",
                    "model": "w",
                    "prompt": "Facts of {{ text }}",
                    "output_schema": {
                        "type": "object",
                        "properties": {"k": {"type": "string"}},
                        "required": ["k"],
                    },
                },
            ],
            "run": {
                "num_records": 30,
                "seed": 3,
                "buffer_size": 10,
                "retry": {"max_attempts": 2, "backoff_base_seconds": 0.0},
                "early_shutdown": {"enabled": False},
            },
            "output": {"path": str(out)},
        }
    )


def _everything_written(root: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file())


async def _run(
    server: MockProviderServer, out: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, MemoryEventSink]:
    monkeypatch.setenv(KEY_ENV, key)
    sink = MemoryEventSink()
    config = _config(server.base_url, out)
    outcome = await run_dataset(
        config,
        RunOptions(
            output_dir=out,
            events=EventBus([sink]),
            events_file=out / "events.jsonl",
            report=True,
        ),
    )
    info = outcome.info
    shown = repr(info) + repr(outcome.capacity_plan)
    return shown, sink


async def test_the_key_is_sent_but_never_shown_on_success_or_refusal(
    server: MockProviderServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    good, good_events = await _run(server, tmp_path / "good", KEY, monkeypatch)
    assert server.stats()["models"]["m"]["successes"] == 60  # the key did reach the server
    bad, bad_events = await _run(server, tmp_path / "bad", WRONG, monkeypatch)
    assert server.stats()["responses_by_status"]["401"] > 0  # the wrong key was sent and refused

    texts = [good, bad, caplog.text, repr(server.stats())]
    texts += [encode_event(event) for event in (*good_events.events, *bad_events.events)]
    written = _everything_written(tmp_path)
    assert (tmp_path / "good" / "events.jsonl").stat().st_size > 0
    assert any((tmp_path / "bad").glob("*")), "the refused run wrote nothing to search"
    for secret in (KEY, WRONG):
        assert all(secret not in text for text in texts)
        assert secret.encode() not in written
        # Not even a recognizable part of it (a prefix cut off by truncation).
        assert secret[:16] not in caplog.text and secret[:16].encode() not in written
