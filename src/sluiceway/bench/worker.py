"""One benchmark job in its own process: run a config a few times and print one JSON line per
iteration (timings, counts, event-derived metrics, leak findings, capacity plan, output hash).

The runner copies this file next to the job and starts it with the interpreter of the checkout
under test, so it imports only the engine's public entry points (``DatasetConfig``,
``run_dataset``, ``RunOptions``) and the observability bus when that exists. It is also the module
the dynamic-calls scenario names as its custom column (``sluiceway_bench_worker:dynamic_calls``).

    python sluiceway_bench_worker.py JOB.json
"""

from __future__ import annotations

import asyncio
import copy
import gc
import hashlib
import json
import resource
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

WORKER_MODULE = "sluiceway_bench_worker"
"""The module name this file has once the runner copied it next to a job."""


async def dynamic_calls(row: Mapping[str, Any], ctx: Any) -> dict[str, Any]:
    """Custom column making ``row["calls"]`` model calls in a row (0, 1 or many)."""
    answers = [
        await ctx.models.generate_text("dyn", f"Step {step} on {row['topic']}")
        for step in range(int(row["calls"]))
    ]
    return {"answers": answers, "answer_count": len(answers)}


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _union_seconds(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _event_metrics(
    events: Iterable[Any], started_at: float, analysis: Mapping[str, Any]
) -> dict[str, float | int | None]:
    """Metrics of SPEC §10 read from the run's events (monotonic ``captured_at`` seconds)."""
    metrics: dict[str, float | int | None] = {}
    leased: set[tuple[str, int]] = set()
    hidden_waiters = 0
    ready_at: dict[tuple[str, int], float] = {}
    gaps: list[float] = []
    first_downstream: float | None = None
    downstream = analysis.get("downstream_column")
    busy = analysis.get("busy_provider")
    completions: list[tuple[float, str, str]] = []
    busy_spans: list[tuple[float, float]] = []  # (start, answer) of the busy provider's requests
    limited: list[tuple[float, str, float]] = []
    latency_sum: dict[str, float] = {}
    latency_count: dict[str, int] = {}
    for event in events:
        kind = str(event.kind.value)
        if kind in ("ready_enqueued", "task_lease_acquired", "worker_spawned"):
            key = (event.task_id, event.attempt)
            if kind == "ready_enqueued":
                ready_at.setdefault(key, event.captured_at)
            elif kind == "task_lease_acquired":
                leased.add(key)
                if event.column == downstream:
                    if key in ready_at:
                        gaps.append(event.captured_at - ready_at[key])
                    if first_downstream is None:
                        first_downstream = event.captured_at - started_at
            elif key not in leased:
                hidden_waiters += 1  # a worker started without a task lease
        elif kind == "model_request_completed":
            outcome = str(event.outcome.value)
            completions.append((event.captured_at, event.provider, outcome))
            if event.provider == busy:
                busy_spans.append((event.captured_at - event.latency_seconds, event.captured_at))
            if outcome == "success":
                latency_sum[event.model] = latency_sum.get(event.model, 0.0) + event.latency_seconds
                latency_count[event.model] = latency_count.get(event.model, 0) + 1
        elif kind == "request_rate_limited":
            limited.append((event.captured_at, event.provider, event.cooldown_seconds or 0.0))
    if leased:  # task events were captured
        metrics["hidden_scheduler_waiters"] = hidden_waiters
    if downstream is not None:
        metrics["first_downstream_dispatch_seconds"] = first_downstream
        metrics["downstream_ready_to_dispatch_p50_seconds"] = _percentile(gaps, 0.5)
        metrics["downstream_ready_to_dispatch_p95_seconds"] = _percentile(gaps, 0.95)
    capacities: Mapping[str, int] = analysis.get("capacity_by_model", {})
    if capacities and latency_count:
        # SPEC §10: the limit of a model is capacity / mean latency, the latency each answered
        # request took from its start to its answer (timer overshoot included).
        means = {model: latency_sum[model] / latency_count[model] for model in latency_count}
        metrics["mean_latency_seconds"] = sum(latency_sum.values()) / sum(latency_count.values())
        metrics["measured_limit_per_second"] = sum(
            capacity / means[model] for model, capacity in capacities.items() if model in means
        )
    settle = analysis.get("settle_seconds")
    if settle is not None and completions:  # request events were captured
        after = started_at + float(settle)
        answered = sum(1 for at, _, _ in completions if at >= after)
        refused = sum(1 for at, _, _ in limited if at >= after)
        good = [at for at, _, outcome in completions if at >= after and outcome == "success"]
        metrics["rate_limited_share_after_settle"] = refused / answered if answered else None
        if good:
            span = max(good) - after
            metrics["goodput_after_settle_per_second"] = len(good) / span if span > 0 else None
        metrics["last_rate_limit_seconds"] = (
            max(at for at, _, _ in limited) - started_at if limited else 0.0
        )
        # The opening burst: refusals in the run's first second (five round trips here).
        metrics["opening_rate_limited"] = sum(1 for at, _, _ in limited if at < started_at + 1.0)
    cooled = analysis.get("cooldown_provider")
    if cooled is not None and busy is not None and completions:
        busy_done = [at for at, provider, _ in completions if provider == busy]
        # Only while B still has work: its rate after its last answer says nothing.
        busy_end = max(busy_done) if busy_done else started_at
        windows = [
            (start, min(end, busy_end))
            for start, end in _union_seconds(
                [
                    (at, at + cool)
                    for at, provider, cool in limited
                    if provider == cooled and cool > 0
                ]
            )
            if start < busy_end
        ]
        window_seconds = sum(end - start for start, end in windows)
        inside = sum(
            1
            for at, provider, outcome in completions
            if provider == busy
            and outcome == "success"
            and any(start <= at <= end for start, end in windows)
        )
        metrics["cooldown_window_seconds"] = window_seconds
        metrics["busy_provider_calls_per_second_in_cooldown"] = (
            inside / window_seconds if window_seconds > 0 else None
        )
        capacity = analysis.get("busy_capacity")
        if capacity and window_seconds > 0:
            # Answers lag their requests by one latency, so a window opening as the run starts
            # counts none in its first latency however busy B is; its requests in flight do not.
            held = sum(
                max(0.0, min(end, w_end) - max(start, w_start))
                for start, end in busy_spans
                for w_start, w_end in windows
            )
            metrics["busy_provider_in_flight_share_in_cooldown"] = (
                held / window_seconds / float(capacity)
            )
    return metrics


def _server_call(base_url: str, path: str, *, post: bool = False) -> Any:
    """A control or stats call to the loopback mock server the scenario runs against."""
    root = base_url.removesuffix("/").removesuffix("/v1")
    request = urllib.request.Request(f"{root}{path}", method="POST" if post else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _server_metrics(stats: Mapping[str, Any], analysis: Mapping[str, Any]) -> dict[str, Any]:
    """SPEC §6.6 figures measured at the mock server (its per-model time series, seconds since
    the schedule epoch: the run's first request), independent of the client."""
    epoch = stats.get("schedule_epoch_at")
    model = stats.get("models", {}).get(analysis["server_model"])
    if epoch is None or model is None:
        return {}
    series = model["series"]
    points = [
        (at - epoch, in_flight, requests, limited, successes)
        for at, in_flight, requests, limited, successes in zip(
            series["at_seconds"],
            series["in_flight"],
            series["requests"],
            series["rate_limited"],
            series["successes"],
            strict=True,
        )
        if at >= epoch
    ]
    if len(points) < 2:
        return {}
    metrics: dict[str, Any] = {}
    # The run's end: the first sample that counts the run's last answer.
    last_done = points[-1][4]
    end = next(at for at, *_, done in points if done == last_done)
    restore = analysis.get("restore_at_seconds")
    capacity = analysis.get("restored_capacity")
    latency = analysis.get("latency_seconds")
    if restore is not None and capacity and end > restore:
        reached = [
            at for at, in_flight, *_ in points if at >= restore and in_flight >= 0.9 * capacity
        ]
        metrics["recovery_seconds"] = reached[0] - restore if reached else None
        start = restore + 5.0
        kept = [(at, done) for at, *_, done in points if start <= at <= end]
        if len(kept) >= 2 and kept[-1][0] > kept[0][0] and latency:
            rate = (kept[-1][1] - kept[0][1]) / (kept[-1][0] - kept[0][0])
            metrics["calls_per_second_after_recovery"] = rate
            metrics["goodput_after_recovery_ratio"] = rate / (capacity / latency)
    first_window = analysis.get("window_seconds")
    if first_window is not None and end > first_window:
        after = [
            (at, refused, done) for at, _, _, refused, done in points if first_window <= at <= end
        ]
        metrics["rate_limited_after_first_window"] = after[-1][1] - after[0][1]
        if after[-1][0] > after[0][0]:
            rate = (after[-1][2] - after[0][2]) / (after[-1][0] - after[0][0])
            metrics["calls_per_second_after_first_window"] = rate
            metrics["window_goodput_ratio"] = rate / float(analysis["window_rate_per_second"])
    changes = analysis.get("change_at_seconds")
    if changes is not None:
        settle = float(analysis.get("settle_after_change_seconds", 2.0))
        requests = limited = 0
        for (at, _, sent, refused, _), (_, _, sent_before, refused_before, _) in zip(
            points[1:], points, strict=False
        ):
            if at > end or any(change <= at < change + settle for change in changes):
                continue
            requests += sent - sent_before
            limited += refused - refused_before
        metrics["rate_limited_share_outside_changes"] = limited / requests if requests else None
        metrics["server_rate_limited"] = points[-1][3] - points[0][3]
    return metrics


def _leaks(snapshot: Mapping[str, Any]) -> list[str]:
    """Leaked leases or waiters in the capacity plan's final runtime snapshot (empty: none)."""
    found: list[str] = []
    task = snapshot.get("task_admission", {})
    request = snapshot.get("request_admission", {})
    scheduler = snapshot.get("scheduler", {})
    checks: list[tuple[str, Any]] = [
        ("task_admission.active_leases", task.get("active_leases", 0)),
        ("request_admission.live_leases", request.get("live_leases", 0)),
        ("request_admission.in_flight", request.get("in_flight", 0)),
        ("request_admission.waiters", request.get("waiters", 0)),
        ("scheduler.queued_tasks", scheduler.get("queued_tasks", 0)),
    ]
    checks.extend(
        (f"task_admission.leased.{name}", count) for name, count in task.get("leased", {}).items()
    )
    for key, pm in request.get("by_provider_model", {}).items():
        checks.append((f"request_admission.{key}.in_flight", pm.get("in_flight", 0)))
        checks.append((f"request_admission.{key}.waiters", pm.get("waiters", 0)))
    if task.get("acquired_total") != task.get("released_total"):
        found.append(
            f"task leases acquired {task.get('acquired_total')} != "
            f"released {task.get('released_total')}"
        )
    if request.get("granted_total") != request.get("released_total"):
        found.append(
            f"request leases granted {request.get('granted_total')} != "
            f"released {request.get('released_total')}"
        )
    found.extend(f"{name} = {value}" for name, value in checks if value)
    return found


def _output_hash(directory: Path) -> str:
    """SHA-256 of the dataset rows (canonical JSON, in file then row order), not of the bytes."""
    import pyarrow.parquet as pq

    digest = hashlib.sha256()
    for part in sorted(directory.glob("part-*.parquet")):
        table = pq.read_table(part)
        for batch in table.to_batches(max_chunksize=10_000):
            for row in batch.to_pylist():
                digest.update(json.dumps(row, sort_keys=True, default=str).encode())
                digest.update(b"\n")
    return digest.hexdigest()


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


async def _run_once(job: Mapping[str, Any], output: Path) -> dict[str, Any]:
    from sluiceway.config.models import DatasetConfig
    from sluiceway.engine.run import RunOptions, run_dataset

    raw = copy.deepcopy(job["config"])
    kinds = job.get("event_kinds", [])
    if kinds:
        from sluiceway.observability.sampling import TRACED_KINDS

        if {kind.value for kind in TRACED_KINDS}.intersection(kinds):
            # The metrics count per-attempt events: every task attempt must be traced.
            raw.setdefault("run", {}).setdefault("events", {})["trace_sample_rate"] = 1.0
    config = DatasetConfig.model_validate(raw)
    options = RunOptions(output_dir=output, overwrite=True, journal=bool(job["journal"]))
    sink = None
    if kinds:
        from sluiceway.observability import EventBus
        from sluiceway.observability.kinds import EventKind
        from sluiceway.observability.memory_sink import MemoryEventSink

        sink = MemoryEventSink([EventKind(kind) for kind in kinds])
        options.events = EventBus([sink])
    analysis = job.get("analysis", {})
    base_url = raw["providers"][0].get("base_url") if analysis.get("server_model") else None
    if base_url is not None:
        # Second 0 of the server's schedules and competitors: this run's first request.
        _server_call(base_url, "/mock/epoch?at=next-request", post=True)
    gc.collect()
    started_at = time.monotonic()
    wall_started = time.perf_counter()
    cpu_started = time.process_time()
    outcome = await run_dataset(config, options)
    wall = time.perf_counter() - wall_started
    cpu = time.process_time() - cpu_started
    info = outcome.info
    metrics: dict[str, Any] = {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "rows_written": info.rows_written,
        "rows_dropped": info.rows_dropped,
        "model_requests": info.model_requests,
        "model_calls_succeeded": info.model_calls_succeeded,
        "rate_limited": info.rate_limited,
        "model_calls_per_second": info.model_calls_succeeded / wall if wall > 0 else None,
        "model_requests_per_second": info.model_requests / wall if wall > 0 else None,
        "rate_limited_share": info.rate_limited / info.model_requests
        if info.model_requests
        else 0.0,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if sink is not None:
        metrics.update(_event_metrics(sink.events, started_at, analysis))
    if base_url is not None:
        metrics.update(_server_metrics(_server_call(base_url, "/stats"), analysis))
    plan = outcome.capacity_plan.to_dict()
    return {
        "metrics": metrics,
        "leaks": _leaks(plan.get("runtime_snapshot", {})),
        "capacity_plan": _json_safe(plan),
    }


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[1]).read_text())
    work = Path(job["work_dir"])
    for index, warmup in enumerate(job["iterations"]):
        output = work / f"run-{index}"
        result = asyncio.run(_run_once(job, output))
        result["warmup"] = bool(warmup)
        result["output_hash"] = _output_hash(output) if job.get("hash", True) else None
        shutil.rmtree(output, ignore_errors=True)
        print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
