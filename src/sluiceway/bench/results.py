"""Benchmark results: per-iteration records, summary statistics (mean, p50, p95, min, max, stdev)
and the files a benchmark writes: ``results.json``, ``iterations.csv`` and ``summary.md``."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Iteration:
    """One run of a scenario: its metrics, dataset hash and leak findings (empty: none)."""

    index: int
    warmup: bool
    metrics: Mapping[str, float | int | None]
    output_hash: str | None
    leaks: tuple[str, ...]
    capacity_plan: Mapping[str, Any] = field(repr=False)
    label: str = ""  # the git ref of a comparison; empty otherwise


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricSummary:
    count: int
    mean: float
    p50: float
    p95: float
    min: float
    max: float
    stdev: float

    def to_dict(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "mean": self.mean,
            "p50": self.p50,
            "p95": self.p95,
            "min": self.min,
            "max": self.max,
            "stdev": self.stdev,
        }


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolation percentile of a non-empty sequence (``fraction`` in [0, 1])."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Sequence[float]) -> MetricSummary:
    """Summary of a non-empty sequence; ``stdev`` is the sample stdev (0 for one value)."""
    return MetricSummary(
        count=len(values),
        mean=statistics.fmean(values),
        p50=percentile(values, 0.5),
        p95=percentile(values, 0.95),
        min=min(values),
        max=max(values),
        stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
    )


def summarize_metrics(iterations: Sequence[Iteration]) -> dict[str, MetricSummary]:
    """Per metric, the summary over the measured (non-warmup) iterations that report it."""
    names = sorted({name for it in iterations if not it.warmup for name in it.metrics})
    summaries: dict[str, MetricSummary] = {}
    for name in names:
        values = [
            float(value)
            for it in iterations
            if not it.warmup and (value := it.metrics.get(name)) is not None
        ]
        if values:
            summaries[name] = summarize(values)
    return summaries


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
    }


def _format(value: float) -> str:
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.4f}"


def metric_table(summaries: Mapping[str, MetricSummary]) -> list[str]:
    lines = [
        "| metric | mean | p50 | p95 | min | max | stdev |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in summaries.items():
        cells = (s.mean, s.p50, s.p95, s.min, s.max, s.stdev)
        lines.append(f"| {name} | " + " | ".join(_format(c) for c in cells) + " |")
    return lines


def write_iterations_csv(path: Path, scenario: str, iterations: Sequence[Iteration]) -> None:
    """Long form: one line per iteration and metric."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["scenario", "label", "iteration", "warmup", "metric", "value"])
        for it in iterations:
            for name, value in sorted(it.metrics.items()):
                writer.writerow([scenario, it.label, it.index, it.warmup, name, value])


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
