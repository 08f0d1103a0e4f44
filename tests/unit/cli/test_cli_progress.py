"""The plain progress line: the time left in readable units, whatever the run's size."""

from __future__ import annotations

import io

import pytest

from sluiceway.cli.progress import LogProgress, eta, format_duration
from sluiceway.engine.progress import ProgressSnapshot


def _snapshot(*, total: int, done: int, elapsed_seconds: float) -> ProgressSnapshot:
    return ProgressSnapshot(
        records_total=total,
        records_done=done,
        rows_written=done,
        rows_dropped=0,
        row_groups_total=1,
        row_groups_done=0,
        model_requests=0,
        elapsed_seconds=elapsed_seconds,
    )


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0s"),
        (0.9, "0s"),
        (59.99, "59s"),
        (60, "1m 00s"),
        (65, "1m 05s"),
        (3599, "59m 59s"),
        (3600, "1h 00m"),
        (86_399, "23h 59m"),
        (86_400, "1d 0h"),
        (90_000, "1d 1h"),
        (31_535_999, "364d 23h"),
        (31_536_000, "1y 0d"),
        (4_268_328_104, "135y 126d"),
        (1_000 * 31_536_000 - 1, "999y 364d"),
        (1_000 * 31_536_000, "> 1,000y"),
        (1e18, "> 1,000y"),
    ],
)
def test_durations_show_their_two_largest_units(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


def test_a_negative_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        format_duration(-1)


def test_the_eta_of_a_trillion_records_is_readable() -> None:
    stream = io.StringIO()
    progress = LogProgress(stream)

    # 250 records in the first second: 3,999,999,999 s left at that rate.
    progress.on_progress(_snapshot(total=1_000_000_000_000, done=250, elapsed_seconds=1.0))

    assert "eta 126y 306d" in stream.getvalue()


def test_the_eta_is_unknown_before_the_first_record_and_zero_at_the_end() -> None:
    assert eta(_snapshot(total=10, done=0, elapsed_seconds=3.0)) == "unknown"
    assert eta(_snapshot(total=10, done=10, elapsed_seconds=3.0)) == "0s"
