"""What ``sluiceway bench`` does: pick scenarios, run them (or compare two refs) and print where
the results went. The CLI module only parses options and calls ``run_bench``."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sluiceway.bench.compare import compare_refs
from sluiceway.bench.runner import (
    DEFAULT_ITERATIONS,
    DEFAULT_WARMUP,
    BenchSettings,
    ScenarioResult,
    run_scenario,
    write_overview,
)
from sluiceway.bench.scenarios import SCENARIOS, Scenario, scenario_named
from sluiceway.errors import SluicewayError

SMOKE_WARMUP = 0
SMOKE_ITERATIONS = 1


def select(name: str | None, smoke: bool) -> list[Scenario]:
    """``all`` (or no name in smoke mode) means every scenario; raises ``SluicewayError``."""
    if name is None or name == "all":
        if name is None and not smoke:
            raise SluicewayError(
                f"name a scenario ({', '.join(SCENARIOS)}) or 'all', or pass --smoke"
            )
        return list(SCENARIOS.values())
    try:
        return [scenario_named(name)]
    except KeyError as error:
        raise SluicewayError(str(error.args[0])) from None


def run_bench(
    name: str | None,
    settings: BenchSettings,
    *,
    compare: tuple[str, str] | None = None,
    repo: Path | None = None,
    echo: Callable[[str], object] = print,
) -> list[Path]:
    """Run and return the files or directories written. Raises ``SluicewayError`` (including
    ``BenchmarkError`` for a leak) after writing what was measured."""
    if not settings.command:
        settings = replace(settings, command=shlex.join(["sluiceway", *sys.argv[1:]]))
    if settings.smoke and settings.warmup == DEFAULT_WARMUP:
        settings = replace(settings, warmup=SMOKE_WARMUP)
    if settings.smoke and settings.iterations == DEFAULT_ITERATIONS:
        settings = replace(settings, iterations=SMOKE_ITERATIONS)
    scenarios = select(name, settings.smoke)
    if compare is not None:
        if len(scenarios) != 1:
            raise SluicewayError("--compare takes one scenario; name it instead of 'all'")
        directory = compare_refs(scenarios[0], compare, settings, repo or Path.cwd())
        echo(f"wrote {directory}")
        return [directory]
    results: list[ScenarioResult] = []
    for scenario in scenarios:
        started = time.perf_counter()
        result = run_scenario(scenario, settings)
        results.append(result)
        summary = result.summaries.get(scenario.primary_metric)
        figure = f"{summary.mean:,.4g} (mean of {summary.count})" if summary else "n/a"
        echo(
            f"{scenario.name}: {scenario.primary_metric} = {figure}; leak check passed; "
            f"{time.perf_counter() - started:.1f} s"
        )
    overview = write_overview(results, settings)
    echo(f"wrote {overview}")
    return [overview, *(result.directory for result in results)]
