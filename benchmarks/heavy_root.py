"""Heavy-root scenario: a slow root column feeding a fast downstream column, strict vs borrow.

The whole engine runs (simulated provider in process, real scheduler, task and request
admission, in-memory output) once per policy and repetition. The root column calls a slow model,
the downstream column a fast one that needs the root's answer; both hold a ``submission`` task
lease while their request runs, and ``--max-in-flight-tasks`` bounds them together, so the roots
can crowd out the downstream tasks unless task admission stops them. From the scheduler events:

- first downstream dispatch: seconds from the job start to the first downstream task lease;
- ready-to-dispatch gap of downstream tasks: ``ready_enqueued`` -> ``task_lease_acquired``,
  p50 / p95 / max;
- root over-admission: the most root task leases held at once, and the most held while a
  downstream task was queued (roots started ahead of ready downstream work);
- hidden waiters: ``worker_spawned`` without a prior ``task_lease_acquired`` (must be 0).

    .venv/bin/python benchmarks/heavy_root.py --records 480 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

from sluiceway.config.models import DatasetConfig
from sluiceway.engine.run import RunOptions, run_dataset
from sluiceway.observability import EventBus, EventKind, MemoryEventSink

KINDS = (
    EventKind.SCHEDULER_JOB_STARTED,
    EventKind.READY_ENQUEUED,
    EventKind.TASK_LEASE_ACQUIRED,
    EventKind.TASK_LEASE_RELEASED,
    EventKind.WORKER_SPAWNED,
)


def _config(args: argparse.Namespace, policy: str) -> DatasetConfig:
    def provider(name: str, latency: float, capacity: int) -> dict[str, Any]:
        simulation = {"latency_seconds": latency, "capacity": capacity}
        return {"name": name, "type": "simulated", "simulation": simulation}

    return DatasetConfig.model_validate(
        {
            "providers": [
                provider("p-slow", args.root_seconds, args.root_cap),
                provider("p-fast", args.downstream_seconds, args.downstream_cap),
            ],
            "models": [
                {
                    "alias": "slow",
                    "provider": "p-slow",
                    "model": "slow-1",
                    "max_parallel_requests": args.root_cap,
                },
                {
                    "alias": "fast",
                    "provider": "p-fast",
                    "model": "fast-1",
                    "max_parallel_requests": args.downstream_cap,
                },
            ],
            "columns": [
                {"name": "topic", "type": "sampler", "sampler": {"kind": "uuid"}},
                {
                    "name": "root",
                    "type": "llm_text",
                    "model": "slow",
                    "prompt": "Long: {{ topic }}",
                },
                {
                    "name": "down",
                    "type": "llm_text",
                    "model": "fast",
                    "prompt": "Short: {{ root }}",
                },
            ],
            "run": {
                "num_records": args.records,
                "seed": 7,
                "buffer_size": args.buffer_size,
                "max_concurrent_row_groups": args.row_groups,
                "max_in_flight_tasks": args.max_in_flight_tasks,
                "task_admission": {"policy": policy},
                # The gaps are read from per-task events: trace every task attempt.
                "events": {"trace_sample_rate": 1.0},
            },
        }
    )


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(args: argparse.Namespace, policy: str) -> dict[str, float]:
    sink = MemoryEventSink(KINDS)
    config = _config(args, policy)
    started = time.monotonic()
    asyncio.run(run_dataset(config, RunOptions(output_dir=None, events=EventBus([sink]))))
    wall = time.monotonic() - started
    job_start: float | None = None
    ready_at: dict[tuple[str, int], float] = {}
    leased: set[tuple[str, int]] = set()
    gaps: list[float] = []
    first_downstream: float | None = None
    roots_held = roots_max = roots_max_while_down_waits = 0
    down_queued = 0
    hidden = 0
    for event in sink.events:
        if event.kind is EventKind.SCHEDULER_JOB_STARTED:
            job_start = event.captured_at
            continue
        key = (event.task_id, event.attempt)  # type: ignore[attr-defined]
        column = event.column  # type: ignore[attr-defined]
        if event.kind is EventKind.READY_ENQUEUED:
            ready_at.setdefault(key, event.captured_at)
            if column == "down":
                down_queued += 1
        elif event.kind is EventKind.TASK_LEASE_ACQUIRED:
            leased.add(key)
            if column == "down":
                down_queued -= 1
                gaps.append(event.captured_at - ready_at[key])
                if first_downstream is None:
                    assert job_start is not None
                    first_downstream = event.captured_at - job_start
            elif column == "root":
                roots_held += 1
                roots_max = max(roots_max, roots_held)
                if down_queued:
                    roots_max_while_down_waits = max(roots_max_while_down_waits, roots_held)
        elif event.kind is EventKind.TASK_LEASE_RELEASED:
            if column == "root":
                roots_held -= 1
        elif key not in leased:  # worker_spawned without its lease
            hidden += 1
    assert len(gaps) == args.records
    assert first_downstream is not None
    return {
        "first_downstream_s": first_downstream,
        "gap_p50_s": _percentile(gaps, 0.5),
        "gap_p95_s": _percentile(gaps, 0.95),
        "gap_max_s": max(gaps),
        "root_leases_max": roots_max,
        "root_leases_max_while_downstream_queued": roots_max_while_down_waits,
        "hidden_waiters": hidden,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=480)
    parser.add_argument("--buffer-size", type=int, default=100)
    parser.add_argument("--row-groups", type=int, default=4, help="max_concurrent_row_groups")
    parser.add_argument("--max-in-flight-tasks", type=int, default=16)
    parser.add_argument("--root-seconds", type=float, default=0.1)
    parser.add_argument("--root-cap", type=int, default=16)
    parser.add_argument("--downstream-seconds", type=float, default=0.005)
    parser.add_argument("--downstream-cap", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON line per run")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"bounded_borrow": [], "strict_fair": []}
    for _ in range(args.repeat):  # alternate, so drift on a shared machine hits both alike
        for policy, runs in results.items():
            result = measure(args, policy)
            runs.append(result)
            if args.json:
                print(json.dumps({"policy": policy, **result}))
    if args.json:
        return
    print(f"{args.repeat} run(s) per policy; median [min - max]", file=sys.stderr)
    names = list(results["bounded_borrow"][0])
    print("metric".ljust(42) + "".join(policy.ljust(30) for policy in results))
    for name in names:
        cells = []
        for runs in results.values():
            values = [run[name] for run in runs]
            cells.append(
                f"{statistics.median(values):.4g} [{min(values):.4g} - {max(values):.4g}]".ljust(30)
            )
        print(name.ljust(42) + "".join(cells))


if __name__ == "__main__":
    main()
