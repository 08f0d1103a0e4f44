"""Whole-engine runs with custom columns whose code misbehaves: it raises CancelledError,
GeneratorExit, KeyboardInterrupt or SystemExit, never returns, reads a column it did not
declare, or leaves a context variable set. Every run must end (each test has a time limit, so a
regression fails instead of hanging) with the right rows written and dropped, and leave no
thread behind."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluiceway.columns.base import GenerationContext
from sluiceway.config.models import DatasetConfig
from sluiceway.engine.run import RunOptions, RunOutcome, run_dataset
from sluiceway.storage.dataset import load_dataset

pytestmark = pytest.mark.timeout(60)

Row = Mapping[str, Any]
RECORDS = 40
FAILED: set[int] = set()  # record indices the column under test failed on


def _config(function: str, *, records: int = RECORDS, **custom: Any) -> dict[str, Any]:
    return {
        "providers": [{"name": "sim", "type": "simulated"}],
        "models": [{"alias": "writer", "provider": "sim", "model": "sim-writer"}],
        "columns": [
            {"name": "n", "type": "sampler", "sampler": {"kind": "integer", "low": 0, "high": 3}},
            {
                "name": "c",
                "type": "custom",
                "function": f"{__name__}:{function}",
                "depends_on": ["n"],
                **custom,
            },
        ],
        "run": {"num_records": records, "seed": 5, "buffer_size": 10},
    }


def _run(config: dict[str, Any], output: Path | None = None, **options: Any) -> RunOutcome:
    return asyncio.run(
        run_dataset(
            DatasetConfig.model_validate(config),
            RunOptions(
                output_dir=output,
                overwrite=output is not None and not options.get("resume", False),
                **options,
            ),
        )
    )


_BEFORE: set[threading.Thread] = set()  # threads alive when the test started


@pytest.fixture(autouse=True)
def _threads_before() -> None:
    _BEFORE.clear()
    _BEFORE.update(threading.enumerate())


def _sluiceway_threads() -> list[threading.Thread]:
    """Column threads started during this test and still alive."""
    return [
        thread
        for thread in threading.enumerate()
        if thread.name.startswith("sluiceway-") and thread not in _BEFORE
    ]


def _assert_dropped_exactly(outcome: RunOutcome, fragment: str) -> None:
    dropped = {row.row_index: row.reason for row in outcome.info.dropped_rows}
    assert FAILED and set(dropped) == FAILED
    assert all(fragment in reason and "'c'" in reason for reason in dropped.values()), dropped
    assert outcome.info.rows_written == RECORDS - len(FAILED)


# -- CancelledError and GeneratorExit raised by the column's own code ----------------------------


async def cancelled_before_any_await(row: Row, ctx: GenerationContext) -> int:
    if row["n"] == 0:
        FAILED.add(ctx.row_indices[0])
        raise asyncio.CancelledError
    return 1


async def awaits_a_cancelled_future(row: Row, ctx: GenerationContext) -> int:
    await asyncio.sleep(0)
    if row["n"] == 0:
        FAILED.add(ctx.row_indices[0])
        shared: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        shared.cancel()  # something else gave up on work this row shared
        return await shared
    return 1


def cancelled_in_a_thread(row: Row, ctx: GenerationContext) -> int:
    if row["n"] == 0:
        FAILED.add(ctx.row_indices[0])
        raise asyncio.CancelledError
    return 1


async def raises_generator_exit(row: Row, ctx: GenerationContext) -> int:
    if row["n"] == 0:
        FAILED.add(ctx.row_indices[0])
        raise GeneratorExit
    return 1


@pytest.mark.parametrize(
    ("function", "fragment"),
    [
        ("cancelled_before_any_await", "CancelledError"),
        ("awaits_a_cancelled_future", "CancelledError"),
        ("cancelled_in_a_thread", "CancelledError"),
        ("raises_generator_exit", "GeneratorExit"),
    ],
)
def test_a_cancelled_error_or_generator_exit_of_the_column_drops_its_rows(
    tmp_path: Path, function: str, fragment: str
) -> None:
    FAILED.clear()
    outcome = _run(_config(function), tmp_path / "out")
    _assert_dropped_exactly(outcome, fragment)
    frame = load_dataset(tmp_path / "out")
    assert len(frame) == outcome.info.rows_written and (frame["n"] != 0).all()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert not _sluiceway_threads()


# -- KeyboardInterrupt and SystemExit: an orderly, resumable stop, then the interrupt ------------

INTERRUPT: list[BaseException] = []  # raised once at row 25 while it holds an error


async def interrupting(row: Row, ctx: GenerationContext) -> str:
    text = await ctx.models.generate_text("writer", f"about {row['n']}")
    if INTERRUPT and ctx.row_indices[0] == 25:
        raise INTERRUPT.pop()
    return text


def interrupting_in_a_thread(row: Row, ctx: GenerationContext) -> str:
    text = ctx.models.generate_text_sync("writer", f"about {row['n']}")
    if INTERRUPT and ctx.row_indices[0] == 25:
        raise INTERRUPT.pop()
    return text


@pytest.mark.parametrize(
    ("function", "interrupt"),
    [
        ("interrupting", KeyboardInterrupt()),
        ("interrupting_in_a_thread", KeyboardInterrupt()),
        ("interrupting", SystemExit(3)),
        ("interrupting_in_a_thread", SystemExit(3)),
    ],
)
def test_an_interrupt_from_the_column_stops_the_run_resumably_then_propagates(
    tmp_path: Path, function: str, interrupt: BaseException
) -> None:
    out = tmp_path / "out"
    config = _config(function, models=["writer"])
    INTERRUPT[:] = [interrupt]
    with pytest.raises(type(interrupt)) as caught:
        _run(config, out)
    assert caught.value is interrupt
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "cancelled"
    assert (out / "journal.sqlite").exists()  # kept for the resume: paid-for answers
    assert not _sluiceway_threads()

    config["columns"][1]["timeout_seconds"] = 300  # a time limit does not change the data
    resumed = _run(config, out, resume=True, journal=True)
    assert resumed.info.rows_written == RECORDS
    assert len(load_dataset(out)) == RECORDS
    assert json.loads((out / "manifest.json").read_text())["status"] == "completed"


# -- a column that never returns: a time limit per attempt ---------------------------------------

HANGING_ROWS = frozenset({3, 17})
RELEASE = threading.Event()


async def never_returns(row: Row, ctx: GenerationContext) -> int:
    if ctx.row_indices[0] in HANGING_ROWS:
        FAILED.add(ctx.row_indices[0])
        await asyncio.Event().wait()
    return 1


def never_returns_in_a_thread(row: Row, ctx: GenerationContext) -> int:
    if ctx.row_indices[0] in HANGING_ROWS:
        FAILED.add(ctx.row_indices[0])
        RELEASE.wait()
    return 1


@pytest.mark.parametrize("function", ["never_returns", "never_returns_in_a_thread"])
def test_a_column_that_never_returns_times_out_and_its_rows_are_dropped(
    tmp_path: Path, function: str
) -> None:
    FAILED.clear()
    RELEASE.clear()
    config = _config(function, timeout_seconds=1.0)
    config["run"]["retry"] = {"max_attempts": 2}
    try:
        outcome = _run(config, tmp_path / "out")
        _assert_dropped_exactly(outcome, "did not return within timeout_seconds=1")
        assert all(
            "retry budget of 2 attempts exhausted" in row.reason
            for row in outcome.info.dropped_rows
        )
        # The run returned while the sync calls were still blocked: 2 rows x 2 attempts.
        stuck = _sluiceway_threads()
        assert len(stuck) == (4 if function == "never_returns_in_a_thread" else 0)
        assert all(thread.daemon for thread in stuck)
    finally:
        RELEASE.set()
    for thread in _sluiceway_threads():
        thread.join()  # each exits once its call returns


def test_the_cli_exits_although_a_sync_column_never_returns(tmp_path: Path) -> None:
    (tmp_path / "stuck_column.py").write_text(
        "import threading\n\n"
        "def hang(row, ctx):\n"
        "    if ctx.row_indices[0] == 2:\n"
        "        threading.Event().wait()\n"
        "    return 1\n"
    )
    config = _config("hang", records=10, timeout_seconds=0.5)
    config["columns"][1]["function"] = "stuck_column:hang"
    config["run"]["retry"] = {"max_attempts": 1}
    (tmp_path / "stuck.yaml").write_text(yaml.safe_dump(config))
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            "from sluiceway.cli.app import main; main()",
            "run",
            "stuck.yaml",
            "-o",
            "out",
            "--no-report",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,  # kills the process: before the test's own limit
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.returncode == 0, process.stderr
    assert len(load_dataset(tmp_path / "out")) == 9
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    [dropped] = manifest["dropped_rows"]
    assert dropped["row_index"] == 2 and "timeout_seconds=0.5" in dropped["reason"]


# -- context variables: each row starts from the run's context -----------------------------------

TRACE: contextvars.ContextVar[str] = contextvars.ContextVar("trace", default="unset")
SEEN: list[str] = []


async def reads_then_sets(row: Row, ctx: GenerationContext) -> int:
    SEEN.append(TRACE.get())
    TRACE.set(f"row {ctx.row_indices[0]}")  # a tracing library that never resets it
    if row["n"] % 2:
        await asyncio.sleep(0)
    return 1


def reads_then_sets_in_a_thread(row: Row, ctx: GenerationContext) -> int:
    SEEN.append(TRACE.get())
    TRACE.set(f"row {ctx.row_indices[0]}")
    return 1


@pytest.mark.parametrize("function", ["reads_then_sets", "reads_then_sets_in_a_thread"])
def test_a_context_variable_one_row_sets_is_not_seen_by_another(function: str) -> None:
    SEEN.clear()
    token = TRACE.set("the caller's")
    try:
        outcome = _run(_config(function, records=60))
    finally:
        TRACE.reset(token)
    assert outcome.info.rows_written == 60
    assert SEEN == ["the caller's"] * 60


# -- reading a column the function did not declare ----------------------------------------------


def reads_facts(row: Row, ctx: GenerationContext) -> str:
    return f"{row['n']}: {row['facts']}"


def test_reading_an_undeclared_column_drops_rows_with_a_reason_naming_it() -> None:
    config = _config("reads_facts", records=10)
    # `facts` exists, but is computed after `c`: it is never in the row `c` gets.
    config["columns"].append({"name": "facts", "type": "expression", "template": "{{ c }}!"})
    outcome = _run(config)
    assert outcome.info.rows_written == 0
    reasons = {row.reason for row in outcome.info.dropped_rows}
    assert reasons == {
        "NonRetryableGenerationError: column 'c': the custom function read column 'facts', "
        "which is not in its row: a custom function is sure to get only the columns its "
        "depends_on lists (['n']); add 'facts' to depends_on of column 'c'"
    }


# -- threads ------------------------------------------------------------------------------------


def sync_cell(row: Row, ctx: GenerationContext) -> int:
    return int(row["n"]) * 2


def sync_batch(rows: list[Row], ctx: GenerationContext) -> list[int]:
    return [int(row["n"]) + 1 for row in rows]


def test_no_thread_of_a_sync_column_outlives_its_run(tmp_path: Path) -> None:
    config = _config("sync_cell", records=200)
    config["columns"].append(
        {
            "name": "b",
            "type": "custom",
            "function": f"{__name__}:sync_batch",
            "strategy": "batch",
            "depends_on": ["c"],
        }
    )
    outcome = _run(config, tmp_path / "out")
    assert outcome.info.rows_written == 200
    frame = load_dataset(tmp_path / "out")
    assert (frame["c"] == frame["n"] * 2).all() and (frame["b"] == frame["n"] + 1).all()
    assert set(threading.enumerate()) - _BEFORE == set()  # no thread of any kind is left


@pytest.mark.parametrize(("raised", "code"), [("KeyboardInterrupt()", 130), ("SystemExit(4)", 4)])
def test_the_cli_says_how_to_resume_after_a_column_interrupts_the_run(
    tmp_path: Path, raised: str, code: int
) -> None:
    (tmp_path / "stopping_column.py").write_text(
        "def stop(row, ctx):\n"
        "    if ctx.row_indices[0] == 7:\n"
        f"        raise {raised}\n"
        "    return 1\n"
    )
    config = _config("stop", records=10)
    config["columns"][1]["function"] = "stopping_column:stop"
    (tmp_path / "stop.yaml").write_text(yaml.safe_dump(config))
    process = subprocess.run(
        [sys.executable, "-m", "sluiceway", "run", "stop.yaml", "-o", "out", "--no-report"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )
    assert process.returncode == code, process.stderr
    assert "continue it later with --resume" in process.stderr
    assert "sluiceway run stop.yaml -o out --resume" in process.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "cancelled"
