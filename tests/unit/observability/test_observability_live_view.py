"""The live view and the plain progress lines show what SPEC §9.3 lists: records done/total,
rows/s, per-column progress, per-model in flight vs current limit vs cap, rate limits,
cooldowns and ETA."""

from __future__ import annotations

import io
import re
from dataclasses import replace

from rich.console import Console

from sluiceway.cli.progress import LogProgress, RichProgress
from sluiceway.engine.progress import ColumnProgress, ModelProgress, ProgressSnapshot


def _snapshot(done: int, *, elapsed: float, cooldown: float = 0.0) -> ProgressSnapshot:
    return ProgressSnapshot(
        records_total=400,
        records_done=done,
        rows_written=done - 2,
        rows_dropped=2,
        row_groups_total=4,
        row_groups_done=done // 100,
        model_requests=3 * done,
        elapsed_seconds=elapsed,
        columns=(
            ColumnProgress(name="topic", rows_done=400),
            ColumnProgress(name="answer", rows_done=done),
        ),
        models=(
            ModelProgress(
                label="writer (sim/sim-writer)",
                in_flight=6,
                limit=7,
                cap=8,
                waiters=31,
                requests=2 * done,
                rate_limited=5,
                cooldown_seconds=cooldown,
                breaker="closed",
            ),
            ModelProgress(
                label="judge (sim/sim-judge)",
                in_flight=0,
                limit=1,
                cap=4,
                waiters=9,
                requests=done,
                rate_limited=0,
                cooldown_seconds=0.0,
                breaker="open",
            ),
        ),
    )


def test_the_live_view_shows_progress_models_rate_limits_and_cooldowns() -> None:
    console = Console(record=True, force_terminal=True, width=160, file=io.StringIO())
    view = RichProgress(console)
    view.on_start(_snapshot(0, elapsed=0.0))
    view.on_progress(_snapshot(200, elapsed=4.0, cooldown=1.5))
    view.on_finish(_snapshot(200, elapsed=4.0, cooldown=1.5))
    text = console.export_text()
    assert "200/400" in text
    assert "50.0 rows/s" in text
    assert "600 requests" in text and "2 dropped" in text
    assert "ETA" in text
    assert re.search(r"^answer +200 \(50%\)$", text, re.MULTILINE)
    assert re.search(r"^topic +400 \(100%\)$", text, re.MULTILINE)
    for header in ("in flight", "limit", "cap", "waiting", "rate limited", "state"):
        assert header in text
    writer = next(line for line in text.splitlines() if line.startswith("writer"))
    assert writer.split()[2:9] == ["6", "7", "8", "31", "400", "5", "cooling"]
    assert "cooling down 1.5s" in writer
    judge = next(line for line in text.splitlines() if line.startswith("judge"))
    assert "breaker open" in judge


def test_plain_progress_lines_carry_the_same_facts() -> None:
    stream = io.StringIO()
    progress = LogProgress(stream)
    progress.on_start(_snapshot(0, elapsed=0.0))
    progress.on_progress(_snapshot(100, elapsed=4.0, cooldown=2.25))
    progress.on_finish(_snapshot(400, elapsed=8.0))
    first, middle, last = stream.getvalue().splitlines()
    assert first == "run started: 400 records"
    assert middle.startswith("progress: 100/400 records (25.0%), 25.0 rows/s, 300 requests, ")
    assert "2 dropped, eta 12s" in middle
    assert (
        "writer (sim/sim-writer) 6/7/8 in flight/limit/cap, 5 rate limited, cooling down" in middle
    )
    assert "judge (sim/sim-judge) 0/1/4 in flight/limit/cap, 0 rate limited, breaker open" in middle
    assert last.startswith("progress: 400/400 records (100.0%), 50.0 rows/s")
    assert "eta 0s" in last


def test_the_plain_lines_say_what_the_limit_is_doing() -> None:
    def line(**state: object) -> str:
        model = ModelProgress(
            label="w (p/m)",
            in_flight=3,
            limit=4,
            cap=8,
            waiters=5,
            requests=10,
            rate_limited=1,
            cooldown_seconds=0.0,
            breaker="closed",
            **state,  # type: ignore[arg-type]
        )
        snapshot = ProgressSnapshot(
            records_total=10,
            records_done=1,
            rows_written=1,
            rows_dropped=0,
            row_groups_total=1,
            row_groups_done=0,
            model_requests=10,
            elapsed_seconds=1.0,
            models=(model,),
        )
        stream = io.StringIO()
        LogProgress(stream).on_progress(snapshot)
        return stream.getvalue()

    assert line(limit_phase="probe").rstrip().endswith("probing")
    assert line(limit_phase="recovery").rstrip().endswith("recovering")
    assert line(limit_phase="hold").rstrip().endswith("1 rate limited")  # "ok" is not printed
    paced = line(limit_phase="probe", paced_seconds=0.25).rstrip()
    assert paced.endswith("paced by the provider's window 0.2s")


def test_abandoned_stragglers_and_hedges_are_counted_in_the_progress_line() -> None:
    base = _snapshot(100, elapsed=4.0)
    stream = io.StringIO()
    LogProgress(stream).on_progress(replace(base, adaptive_timeouts=3, hedges=1))
    assert "2 dropped, 3 abandoned stragglers, 1 hedged, eta" in stream.getvalue()
    console = Console(record=True, force_terminal=True, width=200, file=io.StringIO())
    view = RichProgress(console)
    view.on_start(base)
    view.on_progress(replace(base, adaptive_timeouts=3))
    view.on_finish(replace(base, adaptive_timeouts=3))
    assert "2 dropped, 3 abandoned stragglers" in console.export_text()
