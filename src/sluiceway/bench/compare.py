"""A/B comparison of two git refs: each ref checked out in its own worktree (under a temporary
directory) with its own virtualenv, then paired iterations of one scenario in alternating order
(A B, B A, ...), so drift of a shared machine hits both sides alike. Reports B / A per metric.

The virtualenv gets the ref's package as an editable install without dependencies; the third-party
dependencies are taken from the running interpreter's site-packages (a ``.pth`` line), so both
sides run the same library versions and no download is needed besides the build backend.
"""

from __future__ import annotations

import contextlib
import shutil
import site
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluiceway.bench.results import (
    Iteration,
    machine_info,
    metric_table,
    summarize_metrics,
    write_iterations_csv,
    write_json,
)
from sluiceway.bench.runner import (
    BenchmarkError,
    BenchSettings,
    check_leaks,
    endpoint_url,
    job_records,
    run_worker,
    to_iteration,
)
from sluiceway.bench.scenarios import Scenario


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkout:
    """One ref checked out with its interpreter."""

    ref: str
    commit: str
    root: Path
    python: Path


def _git(repo: Path, *args: str) -> str:
    completed = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise BenchmarkError(f"git {' '.join(args)} failed: {completed.stderr.strip()}")
    return completed.stdout.strip()


def _run(command: Sequence[str], what: str) -> None:
    completed = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise BenchmarkError(f"{what} failed: {completed.stderr[-2000:]}")


def _prepare(repo: Path, ref: str, root: Path) -> Checkout:
    commit = _git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}")
    _git(repo, "worktree", "add", "--detach", str(root), commit)
    venv = root / ".bench-venv"
    _run([sys.executable, "-m", "venv", str(venv)], f"creating the virtualenv of {ref}")
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    shared = [path for path in site.getsitepackages() if Path(path).is_dir()]
    # Sorts after the editable install's .pth, so the ref's own source wins over any other copy.
    (Path(purelib) / "zz_sluiceway_bench_shared.pth").write_text("\n".join(shared) + "\n")
    _run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(root)],
        f"installing {ref} into its virtualenv",
    )
    return Checkout(ref=ref, commit=commit, root=root, python=python)


@contextlib.contextmanager
def checkouts(repo: Path, refs: Sequence[str]) -> Iterator[list[Checkout]]:
    """Worktrees and virtualenvs of ``refs``; removed (``git worktree remove``) on exit."""
    with tempfile.TemporaryDirectory(prefix="sluiceway-compare-") as tmp:
        made: list[Path] = []
        try:
            prepared = []
            for index, ref in enumerate(refs):
                root = Path(tmp) / f"ref-{index}"
                made.append(root)
                prepared.append(_prepare(repo, ref, root))
            yield prepared
        finally:
            for root in made:
                if root.exists():
                    subprocess.run(
                        ["git", "-C", str(repo), "worktree", "remove", "--force", str(root)],
                        capture_output=True,
                        check=False,
                    )
            subprocess.run(
                ["git", "-C", str(repo), "worktree", "prune"], capture_output=True, check=False
            )
            shutil.rmtree(tmp, ignore_errors=True)


def paired_ratios(
    a: Sequence[Iteration], b: Sequence[Iteration]
) -> dict[str, dict[str, float | int]]:
    """Per metric, B / A of each measured pair, summarized (mean, min, max of the ratios)."""
    ratios: dict[str, list[float]] = {}
    for left, right in zip(a, b, strict=True):
        if left.warmup:
            continue
        for name, value in left.metrics.items():
            other = right.metrics.get(name)
            if value and other is not None:
                ratios.setdefault(name, []).append(float(other) / float(value))
    return {
        name: {
            "pairs": len(values),
            "mean": statistics.fmean(values),
            "min": min(values),
            "max": max(values),
        }
        for name, values in sorted(ratios.items())
    }


def compare_refs(
    scenario: Scenario, refs: tuple[str, str], settings: BenchSettings, repo: Path
) -> Path:
    """Run the paired comparison and write ``compare-<scenario>/``; returns that directory.
    Raises ``BenchmarkError`` when a ref cannot be built or a run leaked leases or waiters."""
    records = job_records(scenario, settings)
    sides: dict[int, list[Iteration]] = {0: [], 1: []}
    with checkouts(repo, refs) as (first, second), endpoint_url(scenario) as url:
        pair = (first, second)
        plan = [True] * settings.warmup + [False] * settings.iterations
        for index, warmup in enumerate(plan):
            order = (0, 1) if index % 2 == 0 else (1, 0)  # alternate who goes first
            for side in order:
                checkout = pair[side]
                (record,) = run_worker(
                    scenario,
                    records=records,
                    base_url=url,
                    warmups=[warmup],
                    python=checkout.python,
                    smoke=settings.smoke,
                    cwd=checkout.root,
                )
                sides[side].append(to_iteration(scenario, index, record, label=checkout.ref))
        commits = {checkout.ref: checkout.commit for checkout in pair}
    directory = settings.output_dir / f"compare-{scenario.name}"
    directory.mkdir(parents=True, exist_ok=True)
    a, b = sides[0], sides[1]
    leaks = check_leaks(scenario, [*a, *b])
    ratios = paired_ratios(a, b)
    summaries = {ref: summarize_metrics(side) for ref, side in zip(refs, (a, b), strict=True)}
    document: dict[str, Any] = {
        "scenario": scenario.name,
        "refs": {"a": refs[0], "b": refs[1]},
        "commits": commits,
        "records": records,
        "command": settings.command,
        "machine": machine_info(),
        "ratio_b_over_a": ratios,
        "metrics": {
            ref: {name: s.to_dict() for name, s in summary.items()}
            for ref, summary in summaries.items()
        },
        "leak_check": {"passed": not leaks, "findings": leaks},
        "output_hashes": {
            ref: sorted({it.output_hash for it in side if it.output_hash and not it.warmup})
            for ref, side in zip(refs, (a, b), strict=True)
        },
    }
    write_json(directory / "results.json", document)
    write_iterations_csv(directory / "iterations.csv", scenario.name, [*a, *b])
    (directory / "summary.md").write_text(
        "\n".join(_markdown(scenario, refs, records, settings, ratios, summaries, leaks)) + "\n"
    )
    if leaks:
        raise BenchmarkError("leaked leases or waiters:\n  " + "\n  ".join(leaks))
    return directory


def _markdown(
    scenario: Scenario,
    refs: tuple[str, str],
    records: int,
    settings: BenchSettings,
    ratios: Mapping[str, Mapping[str, float | int]],
    summaries: Mapping[str, Any],
    leaks: Sequence[str],
) -> list[str]:
    primary = ratios.get(scenario.primary_metric)
    lines = [
        f"# {scenario.name}: {refs[1]} / {refs[0]}",
        "",
        f"- command: `{settings.command}`",
        f"- records: {records:,}; paired iterations: {settings.iterations} (after "
        f"{settings.warmup} warmup pairs), order alternating",
        f"- leak check: {'passed' if not leaks else 'FAILED'}",
    ]
    if primary is not None:
        lines.append(
            f"- {scenario.primary_metric}: B / A = {primary['mean']:.3f} "
            f"(min {primary['min']:.3f}, max {primary['max']:.3f})"
        )
    lines += [
        "",
        "| metric | pairs | mean B/A | min | max |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {name} | {r['pairs']} | {r['mean']:.3f} | {r['min']:.3f} | {r['max']:.3f} |"
        for name, r in ratios.items()
    ]
    for ref, summary in summaries.items():
        lines += ["", f"## {ref}", "", *metric_table(summary)]
    return lines
