"""Scale smoke: N records through sampler -> expression -> llm_text on a zero-latency model.

Reports wall time, model calls per second, CPU seconds (all threads) and peak RSS.
``--no-journal`` turns the cell journal off, to measure what it costs; ``--events`` writes the
events to ``events.jsonl`` in the output directory (no report), to measure what the JSONL sink
costs, with the per-task detail of ``--trace-sample-rate`` of the task attempts (default: the
run config's default, as ``sluiceway run`` does; 1 records every event); ``--live-view``
drives the rich live view of ``sluiceway run`` (rendered into a terminal that discards its
output), to measure what the display costs. Not a test: run it by hand or with ``make smoke``
and read the figures (they depend on the machine and on what else runs on it).

    .venv/bin/python benchmarks/scale_smoke.py --records 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from sluiceway.cli.progress import RichProgress
from sluiceway.config.models import DatasetConfig
from sluiceway.engine.run import RunOptions, run_dataset
from sluiceway.observability import EVENTS_FILE_NAME


def smoke_config(
    records: int, buffer_size: int, trace_sample_rate: float | None = None
) -> DatasetConfig:
    events = {} if trace_sample_rate is None else {"trace_sample_rate": trace_sample_rate}
    return DatasetConfig.model_validate(
        {
            "providers": [{"name": "sim", "type": "simulated"}],
            "models": [
                {
                    "alias": "fast",
                    "provider": "sim",
                    "model": "sim-fast",
                    "max_parallel_requests": 256,
                }
            ],
            "columns": [
                {
                    "name": "topic",
                    "type": "sampler",
                    "sampler": {
                        "kind": "category",
                        "values": ["tides", "locks", "canals", "weirs"],
                    },
                },
                {
                    "name": "n",
                    "type": "sampler",
                    "sampler": {"kind": "integer", "low": 1, "high": 9},
                },
                {
                    "name": "title",
                    "type": "expression",
                    "template": "{{ n }} facts about {{ topic }}",
                },
                {
                    "name": "text",
                    "type": "llm_text",
                    "model": "fast",
                    "prompt": "Write: {{ title }}",
                },
            ],
            "run": {
                "num_records": records,
                "seed": 7,
                "buffer_size": buffer_size,
                "max_concurrent_row_groups": 4,
                "events": events,
            },
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--buffer-size", type=int, default=1_000)
    parser.add_argument("--output", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument(
        "--journal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="journal completed model cells in journal.sqlite (default: on)",
    )
    parser.add_argument(
        "--events",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="write every event to events.jsonl in the output directory (default: off)",
    )
    parser.add_argument(
        "--trace-sample-rate",
        type=float,
        default=None,
        help="run.events.trace_sample_rate: share of task attempts whose detail events are "
        "recorded (default: the config default; 1 = every event)",
    )
    parser.add_argument(
        "--live-view",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="render the rich live view into a discarding terminal (default: off)",
    )
    args = parser.parse_args()
    config = smoke_config(args.records, args.buffer_size, args.trace_sample_rate)
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as devnull:
        progress = (
            RichProgress(Console(file=devnull, force_terminal=True, width=160))
            if args.live_view
            else None
        )
        output = args.output or Path(tmp) / "smoke"
        started = time.perf_counter()
        cpu_started = time.process_time()  # every thread of this process: less noisy than wall
        events_file = output / EVENTS_FILE_NAME if args.events else None
        outcome = asyncio.run(
            run_dataset(
                config,
                RunOptions(
                    output_dir=output,
                    overwrite=True,
                    journal=args.journal,
                    events_file=events_file,
                    progress=progress,
                ),
            )
        )
        events_mib = events_file.stat().st_size / 2**20 if events_file is not None else 0.0
        wall = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
    info = outcome.info
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "records": args.records,
        "buffer_size": args.buffer_size,
        "journal": args.journal,
        "events": args.events,
        "live_view": args.live_view,
        "trace_sample_rate": config.run.events.trace_sample_rate,
        "events_file_mib": round(events_mib, 1),
        "rows_written": info.rows_written,
        "rows_dropped": info.rows_dropped,
        "model_calls": info.model_calls_succeeded,
        "wall_seconds": round(wall, 2),
        "model_calls_per_second": round(info.model_calls_succeeded / wall, 1),
        "cpu_seconds": round(cpu_seconds, 2),
        "peak_rss_mib": round(peak_rss_mib, 1),
        "python": sys.version.split()[0],
    }
    print(json.dumps(report, indent=2))
    return 0 if info.rows_written == args.records and peak_rss_mib < 1024 else 1


if __name__ == "__main__":
    sys.exit(main())
