"""Request-admission benchmarks against the loopback mock server (issue 4, SPEC §10).

Each scenario starts ``sluiceway mock-server`` as a subprocess on 127.0.0.1 (200 ms latency,
true capacity 32 concurrent requests for the model), runs a 3-column LLM chain (sampler ->
llm_text -> llm_structured -> llm_judge, all on one model) through the real engine with an
``openai`` provider pointed at the server, and stops the server by PID.

- ``A``: client cap 32 = true capacity. Utilization = achieved successful requests/s at the
  server / (capacity / latency).
- ``B``: client cap 64 = 2x true capacity, 429 + Retry-After (1 s, the server's default) beyond
  it. Goodput / true capacity, share of requests answered 429 after the first 10 s, seconds
  until the 429s stop. ``B-ramp`` is the same with a 2 s startup ramp of the limit.
- ``C``: queueing server (no 429, latency grows by ``in_flight / capacity``), client cap 64,
  latency-gradient limit off vs on: throughput and client-observed p50/p95 latency.

Request counts and the time window come from the server's ``/stats`` (the window from its first
admitted request to its last answer; the in-flight series, sampled every 100 ms, for the share in
the middle of the run and for how it fills and drains); latencies and per-attempt timestamps
from a thin wrapper around the provider client. Results are printed as JSON and written to
``--json``.

    .venv/bin/python benchmarks/request_admission.py                # 2,000 records, A B C
    .venv/bin/python benchmarks/request_admission.py --quick        # 200 records, a few seconds
    .venv/bin/python benchmarks/request_admission.py --records 500 --scenarios A,B
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sluiceway.config.loading import parse_config
from sluiceway.config.models import DatasetConfig
from sluiceway.engine.run import RunOptions, run_dataset
from sluiceway.errors import RateLimitedError
from sluiceway.providers.base import ModelRequest, ModelResponse, ProviderClient
from sluiceway.providers.registry import build_provider_client

PROVIDER = "mock"
MODEL_ID = "mock-chain-1"
KEY_ENV = "SLUICEWAY_BENCH_MOCK_KEY"
POLL_SECONDS = 0.25
WINDOW_SECONDS = 1.0  # bucket width of the 429-share series used for convergence
RETRY_AFTER_SECONDS = 1.0  # what the server's 429s ask for (the mock server's default)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


@dataclass(slots=True)
class _Attempt:
    started: float
    ended: float
    status: str  # "ok", "429", "error"


@dataclass(slots=True)
class RecordingClient:
    """Forwards to the real client and records each attempt's times and outcome."""

    inner: ProviderClient
    name: str
    attempts: list[_Attempt] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    async def send(self, request: ModelRequest) -> ModelResponse:
        started = time.monotonic()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        status = "error"
        try:
            response = await self.inner.send(request)
            status = "ok"
            return response
        except RateLimitedError:
            status = "429"
            raise
        finally:
            self.in_flight -= 1
            self.attempts.append(_Attempt(started, time.monotonic(), status))

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    description: str
    client_cap: int
    queueing: bool = False
    latency_gradient: bool = False
    startup_ramp_seconds: float = 0.0


SCENARIOS: dict[str, list[Scenario]] = {
    "A": [Scenario(name="A", description="client cap = true capacity", client_cap=32)],
    "B": [
        Scenario(name="B", description="client cap = 2x true capacity", client_cap=64),
        Scenario(
            name="B-ramp",
            description="client cap = 2x true capacity, 2 s startup ramp",
            client_cap=64,
            startup_ramp_seconds=2.0,
        ),
    ],
    "C": [
        Scenario(
            name="C-gradient-off",
            description="queueing server, client cap 2x capacity, gradient limit off",
            client_cap=64,
            queueing=True,
        ),
        Scenario(
            name="C-gradient-on",
            description="queueing server, client cap 2x capacity, gradient limit on",
            client_cap=64,
            queueing=True,
            latency_gradient=True,
        ),
    ],
}


def _config(scenario: Scenario, *, port: int, records: int, out: Path) -> DatasetConfig:
    return parse_config(
        {
            "providers": [
                {
                    "name": PROVIDER,
                    "type": "openai",
                    "base_url": f"http://127.0.0.1:{port}/v1",
                    "api_key_env": KEY_ENV,
                }
            ],
            "models": [
                {
                    "alias": "chain",
                    "provider": PROVIDER,
                    "model": MODEL_ID,
                    "max_parallel_requests": scenario.client_cap,
                    "timeout_seconds": 30.0,
                }
            ],
            "columns": [
                {
                    "name": "topic",
                    "type": "sampler",
                    "sampler": {"kind": "category", "values": ["canal", "weir", "lock", "dam"]},
                },
                {
                    "name": "draft",
                    "type": "llm_text",
                    "model": "chain",
                    "prompt": "Write two sentences about a {{ topic }}.",
                },
                {
                    "name": "facts",
                    "type": "llm_structured",
                    "model": "chain",
                    "prompt": "Extract the facts of: {{ draft }}",
                    "output_schema": {
                        "type": "object",
                        "properties": {
                            "subject": {"type": "string"},
                            "tone": {"type": "string", "enum": ["calm", "urgent", "neutral"]},
                        },
                        "required": ["subject", "tone"],
                        "additionalProperties": False,
                    },
                },
                {
                    "name": "quality",
                    "type": "llm_judge",
                    "model": "chain",
                    "prompt": "Rate this text about {{ topic }}: {{ draft }} ({{ facts.tone }})",
                    "rubrics": [{"name": "clarity", "description": "Is it clear?"}],
                },
            ],
            "run": {
                "num_records": records,
                "seed": 7,
                "buffer_size": 100,
                "max_concurrent_row_groups": 4,
                "retry": {"max_attempts": 30, "backoff_base_seconds": 0.05},
                "request_admission": {
                    "latency_gradient": scenario.latency_gradient,
                    "startup_ramp_seconds": scenario.startup_ramp_seconds,
                },
            },
            "output": {"path": str(out), "overwrite": True},
        }
    )


def _start_server(
    port: int, *, latency: float, capacity: int, queueing: bool
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "sluiceway.cli.app",
        "mock-server",
        "--port",
        str(port),
        "--latency-seconds",
        str(latency),
        "--capacity",
        str(capacity),
        "--retry-after-seconds",
        str(RETRY_AFTER_SECONDS),
        "--queueing" if queueing else "--no-queueing",
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is not None:
        return
    os.kill(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)


async def _wait_ready(client: httpx.AsyncClient, server: subprocess.Popen[bytes]) -> None:
    for _ in range(400):
        if server.poll() is not None:
            raise RuntimeError(f"the mock server exited with code {server.returncode}")
        try:
            if (await client.get("/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("the mock server did not become ready")


def _total(stats: dict[str, Any]) -> dict[str, Any]:
    model = stats["models"].get(MODEL_ID)
    return dict(model) if model is not None else {"requests": 0, "successes": 0, "rate_limited": 0}


async def _poll(
    client: httpx.AsyncClient,
    samples: list[tuple[float, dict[str, Any]]],
    recorder: RecordingClient,
) -> None:
    while True:
        stats = (await client.get("/stats")).json()
        total = _total(stats)
        total["client_in_flight"] = recorder.in_flight
        samples.append((time.monotonic(), total))
        await asyncio.sleep(POLL_SECONDS)


def _middle_share(
    series: list[list[float]], first: float, last: float, capacity: int
) -> float | None:
    """Mean sampled in-flight / capacity over the middle 80% of the active window."""
    span = last - first
    middle = [n for t, n in series if first + 0.1 * span <= t <= last - 0.1 * span]
    return round(sum(middle) / len(middle) / capacity, 4) if middle else None


def _rate_limit_metrics(attempts: list[_Attempt], after_seconds: float) -> dict[str, Any]:
    """429 share after ``after_seconds`` and when the 429s stop (client-side timestamps)."""
    if not attempts:
        return {}
    t0 = min(a.started for a in attempts)
    late = [a for a in attempts if a.ended - t0 >= after_seconds]
    late_429 = sum(1 for a in late if a.status == "429")
    buckets: dict[int, list[int]] = {}
    for attempt in attempts:
        bucket = buckets.setdefault(int((attempt.ended - t0) // WINDOW_SECONDS), [0, 0])
        bucket[0] += 1
        bucket[1] += attempt.status == "429"
    over = [b for b, (n, r) in buckets.items() if n and r / n >= 0.03]
    converged = 0.0 if not over else (max(over) + 1) * WINDOW_SECONDS
    return {
        "client_attempts": len(attempts),
        "client_429": sum(1 for a in attempts if a.status == "429"),
        "share_429_after_first_10s_client": round(late_429 / len(late), 5) if late else None,
        "seconds_to_converge": converged,
        "seconds_to_last_429": round(
            max((a.ended - t0 for a in attempts if a.status == "429"), default=0.0), 2
        ),
        "share_429_per_second": [
            round(buckets[b][1] / buckets[b][0], 3) if buckets[b][0] else None
            for b in range(max(buckets) + 1)
            if b in buckets
        ],
    }


def _server_late_share(samples: list[tuple[float, dict[str, Any]]], after: float) -> float | None:
    """429 share of requests the server received from ``after`` s past its first request on."""
    started = next((t for t, s in samples if s["requests"] > 0), None)
    if started is None:
        return None
    # The poll just before traffic started bounds the start from below.
    before = [t for t, s in samples if s["requests"] == 0]
    t0 = before[-1] if before else started
    base = next((s for t, s in samples if t - t0 >= after), None)
    end = samples[-1][1]
    if base is None:
        return None
    requests = end["requests"] - base["requests"]
    return (end["rate_limited"] - base["rate_limited"]) / requests if requests else None


async def _run_scenario(
    scenario: Scenario, *, records: int, latency: float, capacity: int
) -> dict[str, Any]:
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="sluiceway-bench-"))
    server = _start_server(port, latency=latency, capacity=capacity, queueing=scenario.queueing)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as http:
            await _wait_ready(http, server)
            config = _config(scenario, port=port, records=records, out=workdir / "out")
            provider = config.providers[0]
            inner = build_provider_client(provider, seed=config.run.seed, models=config.models)
            recorder = RecordingClient(inner=inner, name=PROVIDER)
            samples: list[tuple[float, dict[str, Any]]] = []
            poller = asyncio.create_task(_poll(http, samples, recorder))
            started = time.monotonic()
            try:
                outcome = await run_dataset(
                    config,
                    RunOptions(
                        output_dir=workdir / "out",
                        overwrite=True,
                        journal=False,
                        extra_providers={PROVIDER: recorder},
                    ),
                )
            finally:
                wall = time.monotonic() - started
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            stats = (await http.get("/stats")).json()
            samples.append((time.monotonic(), _total(stats)))
    finally:
        _stop_server(server)
        shutil.rmtree(workdir, ignore_errors=True)

    model = _total(stats)
    # The busy time at the server: from its first admitted request to its last answer.
    first, last = model["first_admitted_at"], model["last_finished_at"]
    window = max(last - first, 1e-9)
    physical = capacity / latency
    ok_latencies = [a.ended - a.started for a in recorder.attempts if a.status == "ok"]
    info = outcome.info
    result: dict[str, Any] = {
        "scenario": scenario.name,
        "description": scenario.description,
        "client_cap": scenario.client_cap,
        "true_capacity": capacity,
        "latency_seconds": latency,
        "queueing": scenario.queueing,
        "latency_gradient": scenario.latency_gradient,
        "startup_ramp_seconds": scenario.startup_ramp_seconds,
        "server_retry_after_seconds": RETRY_AFTER_SECONDS,
        "records": records,
        "rows_written": info.rows_written,
        "rows_dropped": info.rows_dropped,
        "engine_wall_seconds": round(wall, 3),
        "server_active_window_seconds": round(window, 3),
        "server_requests": model["requests"],
        "server_successes": model["successes"],
        "server_429": model["rate_limited"],
        "server_max_in_flight": model.get("max_in_flight"),
        "server_mean_in_flight": round(model.get("in_flight_seconds", 0.0) / window, 2),
        "physical_limit_rps": round(physical, 1),
        "achieved_success_rps": round(model["successes"] / window, 2),
        "utilization": round(model["successes"] / window / physical, 4),
        "utilization_engine_wall": round(model["successes"] / wall / physical, 4),
        "server_in_flight_share_middle_80pct": _middle_share(
            stats["in_flight_series"], first, last, capacity
        ),
        # The series' first and last 2 s: how fast the run fills the capacity and drains.
        "server_in_flight_first_2s": [
            [round(t - first, 2), n]
            for t, n in stats["in_flight_series"]
            if first <= t <= first + 2
        ],
        "server_in_flight_last_2s": [
            [round(t - first, 2), n] for t, n in stats["in_flight_series"] if last - 2 <= t <= last
        ],
        "client_max_in_flight": recorder.max_in_flight,
        "client_latency_p50_seconds": _round(_percentile(ok_latencies, 0.50)),
        "client_latency_p95_seconds": _round(_percentile(ok_latencies, 0.95)),
        "client_latency_p99_seconds": _round(_percentile(ok_latencies, 0.99)),
    }
    if not scenario.queueing and scenario.client_cap > capacity:
        result["goodput_over_true_capacity"] = result["utilization"]
        result["share_429_after_first_10s_server"] = _round(_server_late_share(samples, 10.0), 5)
        result.update(_rate_limit_metrics(recorder.attempts, 10.0))
    t0 = samples[0][0]
    result["client_in_flight_per_poll"] = [
        [round(t - t0, 2), s.get("client_in_flight", 0)] for t, s in samples
    ]
    return result


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=None, help="records per run (2000)")
    parser.add_argument("--quick", action="store_true", help="200 records unless --records")
    parser.add_argument("--scenarios", default="A,B,C", help="comma-separated: A, B, C")
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--capacity", type=int, default=32)
    parser.add_argument("--json", type=Path, default=Path("out/bench/request_admission.json"))
    args = parser.parse_args()
    records = args.records if args.records is not None else (200 if args.quick else 2000)
    os.environ.setdefault(KEY_ENV, "mock-key-not-secret")
    chosen = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    results = []
    for name in chosen:
        for scenario in SCENARIOS[name]:
            result = asyncio.run(
                _run_scenario(
                    scenario, records=records, latency=args.latency, capacity=args.capacity
                )
            )
            print(json.dumps(result), flush=True)
            results.append(result)
    report = {
        "benchmark": "request_admission",
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
