"""Runs a scenario: warmup and measured iterations in worker processes, derived metrics
(utilization = achieved / physical limit), the leak check, and the result files.

Layout of the output directory: ``<scenario>/results.json``, ``<scenario>/iterations.csv``,
``<scenario>/summary.md`` per scenario and ``summary.md`` over all scenarios of the command.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluiceway.bench import worker as worker_module
from sluiceway.bench.mock_process import mock_server
from sluiceway.bench.results import (
    Iteration,
    MetricSummary,
    machine_info,
    metric_table,
    summarize_metrics,
    write_iterations_csv,
    write_json,
)
from sluiceway.bench.scenarios import Scenario, Transport
from sluiceway.bench.worker import WORKER_MODULE
from sluiceway.errors import SluicewayError

# Metric divided by the physical limit -> derived ratio.
_RATIOS = {
    "utilization": "model_calls_per_second",
    "goodput_ratio": "model_calls_per_second",
    "goodput_after_settle_ratio": "goodput_after_settle_per_second",
    "busy_provider_utilization_in_cooldown": "busy_provider_calls_per_second_in_cooldown",
}


class BenchmarkError(SluicewayError):
    """A benchmark could not run, or its run leaked leases or waiters."""


DEFAULT_WARMUP = 1
DEFAULT_ITERATIONS = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchSettings:
    """How to run: iteration counts, smoke size, record override and where to write."""

    output_dir: Path
    warmup: int = DEFAULT_WARMUP
    iterations: int = DEFAULT_ITERATIONS
    smoke: bool = False
    records: int | None = None
    command: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioResult:
    scenario: Scenario
    records: int
    iterations: tuple[Iteration, ...]
    summaries: Mapping[str, MetricSummary]
    directory: Path


def job_records(scenario: Scenario, settings: BenchSettings) -> int:
    if settings.records is not None:
        return settings.records
    return scenario.smoke_records if settings.smoke else scenario.records


def derive(scenario: Scenario, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` plus the ratios to the scenario's physical limit: ``utilization`` against
    the limit from the measured mean latency where the run measured it (SPEC §10), and
    ``utilization_configured`` against the configured latency (stricter: it counts the
    endpoint's timer overshoot against the engine)."""
    derived = dict(metrics)
    limit = scenario.physical_limit_per_second
    if limit:
        for name in scenario.ratio_metrics:
            value = metrics.get(_RATIOS[name])
            if value is not None:
                derived[name] = value / limit
        measured = metrics.get("measured_limit_per_second")
        calls = metrics.get("model_calls_per_second")
        if "utilization" in derived and calls is not None:
            derived["utilization_configured"] = derived["utilization"]
            if measured:
                derived["utilization"] = calls / measured
    return derived


@contextlib.contextmanager
def endpoint_url(scenario: Scenario) -> Iterator[str | None]:
    """The mock server's URL for a mock-server scenario (started here), else None."""
    if scenario.transport is Transport.MOCK_SERVER:
        assert scenario.mock_endpoint is not None
        with mock_server(scenario.mock_endpoint) as url:
            yield url
    else:
        yield None


def run_worker(
    scenario: Scenario,
    *,
    records: int,
    base_url: str | None,
    warmups: Sequence[bool],
    python: Path,
    smoke: bool,
    cwd: Path | None = None,
) -> list[dict[str, Any]]:
    """Run the scenario's config once per entry of ``warmups`` in one worker process started with
    ``python``; returns one record per iteration. Raises ``BenchmarkError`` if the worker fails."""
    analysis = scenario.smoke_analysis if smoke and scenario.smoke_analysis else scenario.analysis
    with tempfile.TemporaryDirectory(prefix="sluiceway-bench-") as tmp:
        work = Path(tmp)
        worker_file = work / f"{WORKER_MODULE}.py"
        shutil.copyfile(worker_module.__file__, worker_file)
        job = {
            "config": scenario.build(records, base_url),
            "journal": scenario.journal,
            "event_kinds": list(scenario.event_kinds),
            "analysis": dict(analysis),
            "iterations": list(warmups),
            "work_dir": str(work),
        }
        job_file = work / "job.json"
        job_file.write_text(json.dumps(job))
        completed = subprocess.run(
            [str(python), str(worker_file), str(job_file)],
            cwd=cwd or work,
            capture_output=True,
            text=True,
            check=False,
        )
    if completed.returncode != 0:
        raise BenchmarkError(
            f"scenario {scenario.name}: the worker ({python}) exited with "
            f"{completed.returncode}; its stderr ends with: {completed.stderr[-2000:]}"
        )
    return [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]


def to_iteration(
    scenario: Scenario, index: int, record: Mapping[str, Any], label: str = ""
) -> Iteration:
    return Iteration(
        index=index,
        warmup=bool(record["warmup"]),
        metrics=derive(scenario, record["metrics"]),
        output_hash=record.get("output_hash"),
        leaks=tuple(record.get("leaks", ())),
        capacity_plan=record.get("capacity_plan", {}),
        label=label,
    )


def check_leaks(scenario: Scenario, iterations: Sequence[Iteration]) -> list[str]:
    return [
        f"{scenario.name} iteration {it.index}{f' ({it.label})' if it.label else ''}: {leak}"
        for it in iterations
        for leak in it.leaks
    ]


def run_scenario(scenario: Scenario, settings: BenchSettings) -> ScenarioResult:
    """Warmups then measured iterations; writes the scenario's files. Raises ``BenchmarkError``
    (after writing them) when any iteration leaked a lease or a waiter."""
    records = job_records(scenario, settings)
    warmups = [True] * settings.warmup + [False] * settings.iterations
    raw: list[dict[str, Any]] = []
    with endpoint_url(scenario) as url:
        batches = [[w] for w in warmups] if scenario.process_per_iteration else [warmups]
        for batch in batches:
            raw.extend(
                run_worker(
                    scenario,
                    records=records,
                    base_url=url,
                    warmups=batch,
                    python=Path(sys.executable),
                    smoke=settings.smoke,
                )
            )
    iterations = tuple(to_iteration(scenario, i, record) for i, record in enumerate(raw))
    result = ScenarioResult(
        scenario=scenario,
        records=records,
        iterations=iterations,
        summaries=summarize_metrics(iterations),
        directory=settings.output_dir / scenario.name,
    )
    leaks = check_leaks(scenario, iterations)
    write_scenario(result, settings, leaks)
    if leaks:
        raise BenchmarkError(
            "leaked leases or waiters (the run's final snapshot must show none):\n  "
            + "\n  ".join(leaks)
        )
    return result


def _snapshots(plan: Mapping[str, Any]) -> dict[str, Any]:
    runtime = plan.get("runtime_snapshot", {})
    return {
        "task_admission": runtime.get("task_admission"),
        "request_admission": runtime.get("request_admission"),
        "scheduler": runtime.get("scheduler"),
    }


def write_scenario(result: ScenarioResult, settings: BenchSettings, leaks: Sequence[str]) -> None:
    scenario = result.scenario
    directory = result.directory
    directory.mkdir(parents=True, exist_ok=True)
    measured = [it for it in result.iterations if not it.warmup]
    last_plan = measured[-1].capacity_plan if measured else {}
    hashes = sorted({it.output_hash for it in measured if it.output_hash})
    document = {
        "scenario": scenario.name,
        "summary": scenario.summary,
        "records": result.records,
        "smoke": settings.smoke,
        "warmup_iterations": settings.warmup,
        "measured_iterations": len(measured),
        "command": settings.command,
        "machine": machine_info(),
        "physical_limit_per_second": scenario.physical_limit_per_second,
        "limit_note": scenario.limit_note,
        "target": scenario.target,
        "primary_metric": scenario.primary_metric,
        "metrics": {name: s.to_dict() for name, s in result.summaries.items()},
        "leak_check": {"passed": not leaks, "findings": list(leaks)},
        "output_hashes": hashes,
        "output_hashes_identical": len(hashes) <= 1,
        "final_snapshots": _snapshots(last_plan),
        "capacity_plan": last_plan,
        "iterations": [
            {
                "index": it.index,
                "warmup": it.warmup,
                "metrics": dict(it.metrics),
                "output_hash": it.output_hash,
                "leaks": list(it.leaks),
            }
            for it in result.iterations
        ],
    }
    write_json(directory / "results.json", document)
    write_iterations_csv(directory / "iterations.csv", scenario.name, result.iterations)
    (directory / "summary.md").write_text("\n".join(scenario_markdown(result, settings, leaks)))


def scenario_markdown(
    result: ScenarioResult, settings: BenchSettings, leaks: Sequence[str]
) -> list[str]:
    scenario = result.scenario
    measured = [it for it in result.iterations if not it.warmup]
    hashes = sorted({it.output_hash for it in measured if it.output_hash})
    limit = scenario.physical_limit_per_second
    machine = machine_info()
    lines = [
        f"# {scenario.name}",
        "",
        scenario.summary,
        "",
        f"- command: `{settings.command}`",
        f"- records: {result.records:,}; warmup {settings.warmup}, measured {len(measured)}",
        f"- physical limit: {f'{limit:,.0f} calls/s' if limit else 'none'} ({scenario.limit_note})",
        f"- target: {scenario.target}",
        f"- machine: {machine['cpu_count']} CPUs, Python {machine['python']}, "
        f"{machine['platform']}",
        f"- leak check: {'passed (0 leases, 0 waiters left)' if not leaks else 'FAILED'}",
        f"- output hashes: {', '.join(h[:16] for h in hashes) or 'none'}"
        f" ({'identical' if len(hashes) <= 1 else 'DIFFERENT'} across iterations)",
        "",
        *metric_table(result.summaries),
        "",
    ]
    return lines


def write_overview(results: Sequence[ScenarioResult], settings: BenchSettings) -> Path:
    """``summary.md`` over every scenario: the primary metric's mean and spread."""
    lines = [
        "# Benchmark summary",
        "",
        f"- command: `{settings.command}`",
        f"- machine: {json.dumps(machine_info())}",
        "",
        "| scenario | records | metric | mean | p50 | p95 | min | max | stdev | limit/s |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        scenario = result.scenario
        limit = scenario.physical_limit_per_second
        shown = (scenario.primary_metric, *scenario.summary_metrics, "model_calls_per_second")
        for name in dict.fromkeys(shown):
            s = result.summaries.get(name)
            if s is None:
                continue
            cells = " | ".join(
                f"{value:,.4g}" for value in (s.mean, s.p50, s.p95, s.min, s.max, s.stdev)
            )
            lines.append(
                f"| {scenario.name} | {result.records:,} | {name} | {cells} | "
                f"{f'{limit:,.0f}' if limit else '-'} |"
            )
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    path = settings.output_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path
