"""Crash safety over HTTP: ``sluiceway run`` and ``sluiceway mock-server`` as real subprocesses.

The run uses an ``openai`` provider pointed at the loopback mock server, which counts the
requests it receives per content hash (``--count-by-content``). The run is killed (SIGKILL) or
interrupted (SIGINT) at seeded points and resumed; the final dataset must equal an uninterrupted
run, and no request whose result was kept (journaled, or in a checkpointed row group) may reach
the server again. The server's counters are the witness: the client side is not trusted to
count itself.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sluiceway.providers.base import ChatMessage, GenerationKind, ModelRequest
from sluiceway.providers.mock_server import (
    MockProviderServer,
    MockServerSettings,
    content_hash,
)
from sluiceway.storage.dataset import load_dataset, read_manifest
from sluiceway.storage.journal import JOURNAL_FILE_NAME, read_journal_keys
from sluiceway.storage.manifest import RowGroupStatus, RunStatus

NUM_RECORDS = 120
BUFFER_SIZE = 20
MODEL_ID = "mock-w"
DEADLINE_SECONDS = 30.0
KEY_ENV = "SLUICEWAY_CRASH_MOCK_KEY"

COLUMN_MODULE = """
async def counted(row, ctx):
    prompt = f"Summarize record {ctx.row_indices[0]}: {row['title']}"
    return await ctx.models.generate_text("writer", prompt)
"""


def _text_prompt(row: pd.Series) -> str:
    return f"Write {row['title']} ({row['uid']})"


def _summary_prompt(index: int, row: pd.Series) -> str:
    return f"Summarize record {index}: {row['title']}"


def _config(base_url: str) -> dict[str, object]:
    return {
        "providers": [
            {"name": "mock", "type": "openai", "base_url": base_url, "api_key_env": KEY_ENV}
        ],
        "models": [
            {"alias": "writer", "provider": "mock", "model": MODEL_ID, "max_parallel_requests": 8}
        ],
        "columns": [
            {
                "name": "topic",
                "type": "sampler",
                "sampler": {"kind": "category", "values": ["a", "b", "c"]},
            },
            {"name": "n", "type": "sampler", "sampler": {"kind": "integer", "low": 0, "high": 99}},
            {"name": "uid", "type": "sampler", "sampler": {"kind": "uuid"}},
            {"name": "title", "type": "expression", "template": "{{ n }} on {{ topic }}"},
            {
                "name": "text",
                "type": "llm_text",
                "model": "writer",
                "prompt": "Write {{ title }} ({{ uid }})",
            },
            {
                "name": "summary",
                "type": "custom",
                "function": "crash_mock_columns:counted",
                "models": ["writer"],
                "depends_on": ["title"],
            },
        ],
        "run": {
            "num_records": NUM_RECORDS,
            "seed": 11,
            "buffer_size": BUFFER_SIZE,
            "max_concurrent_row_groups": 2,
        },
    }


@dataclass(frozen=True)
class MockServer:
    process: subprocess.Popen[bytes]
    base_url: str

    def counts(self) -> Counter[str]:
        with urllib.request.urlopen(f"{self.base_url}/stats", timeout=10) as response:
            stats = json.loads(response.read())
        return Counter(stats["requests_by_content"])


@pytest.fixture(scope="module")
def mock_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockServer]:
    log = tmp_path_factory.mktemp("mock") / "server.stderr"
    command = [sys.executable, "-m", "sluiceway.cli.app", "mock-server", "--port", "0"]
    command += ["--latency-seconds", "0.01", "--count-by-content", "--api-key-env", KEY_ENV]
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            env={**os.environ, KEY_ENV: "mock-key-for-tests", "COLUMNS": "1000"},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        found = None
        while found is None:
            found = re.search(r"http://127\.0\.0\.1:\d+/v1", log.read_text())
            if process.poll() is not None:
                pytest.fail(f"the mock server ended (code {process.returncode}): {log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail("the mock server did not report its address")
            if found is None:
                time.sleep(0.01)
        yield MockServer(process=process, base_url=found.group(0))
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@dataclass(frozen=True)
class Workspace:
    root: Path
    config: Path


def _workspace(root: Path, server: MockServer) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    (root / "crash_mock_columns.py").write_text(COLUMN_MODULE)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(_config(server.base_url)))
    return Workspace(root=root, config=config)


def _start(ws: Workspace, out: Path, name: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, KEY_ENV: "mock-key-for-tests", "COLUMNS": "1000"}
    command = [sys.executable, "-m", "sluiceway.cli.app", "run", str(ws.config)]
    command += ["-o", str(out), "-q", *extra]
    with (ws.root / f"{name}.stderr").open("wb") as stderr:
        return subprocess.Popen(
            command, cwd=ws.root, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )


def _finish(process: subprocess.Popen[bytes]) -> int:
    try:
        return process.wait(timeout=DEADLINE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        raise


def _wait_until(
    process: subprocess.Popen[bytes], condition: Callable[[], bool], what: str, stderr: Path
) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if process.poll() is not None:
            pytest.fail(
                f"the run ended (code {process.returncode}) before {what}: {stderr.read_text()}"
            )
        if time.monotonic() > deadline:
            process.kill()
            process.wait(timeout=10)
            pytest.fail(f"no {what} within {DEADLINE_SECONDS} s")
        time.sleep(0.005)


def _request_hash(prompt: str) -> str:
    return content_hash(
        ModelRequest(
            model_id=MODEL_ID,
            kind=GenerationKind.TEXT,
            messages=(ChatMessage(role="user", content=prompt),),
        )
    )


def _cell_hashes(dataset: pd.DataFrame) -> dict[tuple[str, int], str]:
    """The content hash of every model request of the dataset, by (column, row)."""
    hashes = {}
    for index, row in dataset.iterrows():
        assert isinstance(index, int)
        hashes[("text", index)] = _request_hash(_text_prompt(row))
        hashes[("summary", index)] = _request_hash(_summary_prompt(index, row))
    return hashes


def _kept_cells(out: Path) -> set[tuple[str, int]]:
    """Cells whose result survived the kill: journaled, or in a complete row group's file."""
    kept: set[tuple[str, int]] = set()
    journal = out / JOURNAL_FILE_NAME
    if journal.exists():
        kept |= {(column, row) for _, column, row in read_journal_keys(journal)}
    for group in read_manifest(out).row_groups:
        if group.status is RowGroupStatus.PARTIAL:
            continue
        first = group.index * BUFFER_SIZE
        for row in range(first, first + BUFFER_SIZE):
            kept |= {("text", row), ("summary", row)}
    return kept


@pytest.fixture(scope="module")
def baseline(
    tmp_path_factory: pytest.TempPathFactory, mock_server: MockServer
) -> tuple[pd.DataFrame, dict[tuple[str, int], str]]:
    ws = _workspace(tmp_path_factory.mktemp("baseline"), mock_server)
    out = ws.root / "data"
    before = mock_server.counts()
    code = _finish(_start(ws, out, "baseline"))
    assert code == 0, (ws.root / "baseline.stderr").read_text()
    sent = mock_server.counts() - before
    dataset = load_dataset(out)
    hashes = _cell_hashes(dataset)
    # The test's hashes name exactly the requests the server received, each once.
    assert len(set(hashes.values())) == 2 * NUM_RECORDS
    assert sent == Counter(set(hashes.values()))
    return dataset, hashes


@dataclass(frozen=True)
class StopPoint:
    signal: signal.Signals
    after: int  # requests received by the server before the signal is sent

    def __str__(self) -> str:
        return f"{self.signal.name}-after-{self.after}-requests"


def _stop_points() -> list[StopPoint]:
    """Seeded points, one in each third of the run's 240 requests (each run of the CLI costs
    seconds, so a few)."""
    rng = random.Random(20250302)
    return [
        StopPoint(signal.SIGKILL, rng.randint(10, 80)),
        StopPoint(signal.SIGINT, rng.randint(80, 160)),
        StopPoint(signal.SIGKILL, rng.randint(160, 2 * NUM_RECORDS - 20)),
    ]


@pytest.mark.parametrize("point", _stop_points(), ids=str)
def test_a_stopped_run_over_http_resumes_without_resending_kept_requests(
    tmp_path: Path,
    mock_server: MockServer,
    baseline: tuple[pd.DataFrame, dict[tuple[str, int], str]],
    point: StopPoint,
) -> None:
    after = point.after
    expected, hashes = baseline
    # Another seed would make other requests; the same seed must make exactly the baseline's,
    # which the server has already seen once each. Counting starts from its current totals.
    ws = _workspace(tmp_path, mock_server)
    out = tmp_path / "data"
    start = mock_server.counts()

    first = _start(ws, out, "first")
    _wait_until(
        first,
        lambda: sum((mock_server.counts() - start).values()) >= after,
        f"{after} requests at the server",
        tmp_path / "first.stderr",
    )
    first.send_signal(point.signal)
    assert _finish(first) != 0
    killed = mock_server.counts()
    first_sent = killed - start
    stopped = read_manifest(out)
    if point.signal is signal.SIGINT:
        assert stopped.status is RunStatus.CANCELLED
    # A reader of the stopped run's directory sees complete files that agree with the manifest.
    assert len(load_dataset(out)) == stopped.rows_written
    kept = _kept_cells(out)

    second = _start(ws, out, "second", "--resume")
    assert _finish(second) == 0, (tmp_path / "second.stderr").read_text()
    second_sent = mock_server.counts() - killed

    pd.testing.assert_frame_equal(load_dataset(out), expected)
    assert read_manifest(out).status is RunStatus.COMPLETED
    assert not (out / JOURNAL_FILE_NAME).exists()
    kept_hashes = {hashes[cell] for cell in kept}
    assert kept_hashes, "the kill came before anything was kept; the point is too early"
    assert kept_hashes <= set(first_sent), "a kept result was never requested"
    resent = sorted(cell for cell in kept if hashes[cell] in second_sent)
    assert resent == [], f"requests whose result was kept were sent again: {resent}"
    # The resumed run sends the requests of exactly the cells that were not kept. Sets, not
    # counts: a request of the first run still in flight at the stop may be counted late.
    assert set(second_sent) == {hashes[cell] for cell in hashes.keys() - kept}
    # Every request was made in one of the two runs, at most once in each.
    assert set(first_sent) | set(second_sent) == set(hashes.values())
    assert max((first_sent + second_sent).values()) <= 2


def test_the_server_counts_requests_by_content_only_when_asked() -> None:
    import asyncio

    import httpx

    async def scenario(count: bool) -> dict[str, object]:
        server = MockProviderServer(MockServerSettings(count_by_content=count))
        await server.start()
        try:
            body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
            async with httpx.AsyncClient(base_url=server.base_url) as client:
                for _ in range(2):
                    (await client.post("/chat/completions", json=body)).raise_for_status()
                await client.post("/chat/completions", json={**body, "model": "other"})
            return server.stats()
        finally:
            await server.aclose()

    stats = asyncio.run(scenario(True))
    hello = content_hash(
        ModelRequest(
            model_id="m",
            kind=GenerationKind.TEXT,
            messages=(ChatMessage(role="user", content="hello"),),
        )
    )
    counts = stats["requests_by_content"]
    assert isinstance(counts, dict) and counts[hello] == 2 and sorted(counts.values()) == [1, 2]
    assert "requests_by_content" not in asyncio.run(scenario(False))
