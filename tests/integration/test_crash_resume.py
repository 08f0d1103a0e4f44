"""Crash safety end to end: ``sluiceway run`` as a real subprocess, killed (SIGKILL) or
interrupted (SIGINT) at seeded random points, then ``sluiceway run --resume``. The final dataset
must equal an uninterrupted run with the same seed, and no model request whose result was
already kept (journaled, or in a checkpointed row group) may be sent again. Requests are counted
by content hash twice: at the provider (the simulated provider's ``request_log`` gets the key of
every answered attempt, written through at once, so it survives SIGKILL) and where the generator
receives the answer (a custom column appends one line per completed call to a log file named by
an environment variable). Every prompt names its row, so one content hash is one cell."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sluiceway.storage.dataset import load_dataset, read_manifest
from sluiceway.storage.journal import JOURNAL_FILE_NAME, read_journal_keys
from sluiceway.storage.manifest import RowGroupStatus, RunStatus

NUM_RECORDS = 240
BUFFER_SIZE = 20
DEADLINE_SECONDS = 60.0
LOG_ENV = "SLUICEWAY_CRASH_REQUEST_LOG"
PROVIDER_LOG = "provider.log"  # relative to the workspace, where the runs start

COLUMN_MODULE = f'''
import hashlib
import os


async def counted(row, ctx):
    # The row index makes every request distinct, so a content hash names one cell.
    prompt = f"Summarize record {{ctx.row_indices[0]}}: {{row['title']}}"
    text = await ctx.models.generate_text("writer", prompt)
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:16]
    line = f"{{ctx.column}} {{ctx.row_indices[0]}} {{digest}}\\n".encode()
    fd = os.open(os.environ["{LOG_ENV}"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return text
'''


def _config(*, provider_log: bool = True) -> dict[str, object]:
    simulation: dict[str, object] = {"latency_seconds": 0.01}
    if provider_log:
        simulation["request_log"] = PROVIDER_LOG
    return {
        "providers": [{"name": "sim", "type": "simulated", "simulation": simulation}],
        "models": [
            {"alias": "writer", "provider": "sim", "model": "sim-w", "max_parallel_requests": 8}
        ],
        "columns": [
            {
                "name": "topic",
                "type": "sampler",
                "sampler": {"kind": "category", "values": ["a", "b", "c"]},
            },
            {"name": "n", "type": "sampler", "sampler": {"kind": "integer", "low": 0, "high": 99}},
            {"name": "serial", "type": "sampler", "sampler": {"kind": "uuid"}},
            {"name": "title", "type": "expression", "template": "{{ n }} on {{ topic }}"},
            {
                "name": "text",
                "type": "llm_text",
                "model": "writer",
                "prompt": "Write {{ title }} ({{ serial }})",
            },
            {
                "name": "summary",
                "type": "custom",
                "function": "crash_columns:counted",
                "models": ["writer"],
                "depends_on": ["title"],
            },
        ],
        "run": {
            "num_records": NUM_RECORDS,
            "seed": 5,
            "buffer_size": BUFFER_SIZE,
            "max_concurrent_row_groups": 2,
        },
    }


@dataclass(frozen=True)
class Workspace:
    root: Path
    config: Path


def _workspace(root: Path, *, provider_log: bool = True) -> Workspace:
    """A directory with the column module and the config; ``provider_log=False`` for runs under
    a file-size or disk limit, which the provider's log must not count against."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "crash_columns.py").write_text(COLUMN_MODULE)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(_config(provider_log=provider_log)))
    return Workspace(root=root, config=config)


def _start(ws: Workspace, out: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, LOG_ENV: str(log), "COLUMNS": "1000"}
    command = [sys.executable, "-m", "sluiceway.cli.app", "run", str(ws.config)]
    command += ["-o", str(out), "-q", *extra]
    with (
        (ws.root / f"{log.stem}.stdout").open("wb") as stdout,
        (ws.root / f"{log.stem}.stderr").open("wb") as stderr,
    ):
        return subprocess.Popen(command, cwd=ws.root, env=env, stdout=stdout, stderr=stderr)


def _model_requests(summary: Path) -> int:
    """The ``model requests`` figure of a finished run's summary (every attempt it sent)."""
    found = re.search(r"model requests\W+([\d,]+)", summary.read_text())
    assert found is not None, summary.read_text()
    return int(found.group(1).replace(",", ""))


def _finish(process: subprocess.Popen[bytes]) -> int:
    try:
        return process.wait(timeout=DEADLINE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        raise


def _wait_until(process: subprocess.Popen[bytes], condition: Callable[[], bool], what: str) -> None:
    """Polls the file system until ``condition`` holds; fails if the run ends first."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended (code {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait(timeout=10)
            pytest.fail(f"no {what} within {DEADLINE_SECONDS} s")
        time.sleep(0.005)


def _log_entries(log: Path) -> list[tuple[str, int, str]]:
    if not log.exists():
        return []
    entries = []
    for line in log.read_text().splitlines():
        column, row, digest = line.split()
        entries.append((column, int(row), digest))
    return entries


def _provider_keys(ws: Workspace) -> list[str]:
    """Request keys the simulated provider answered, in order, over every run so far."""
    log = ws.root / PROVIDER_LOG
    return log.read_text().split() if log.exists() else []


def _part_files(out: Path) -> int:
    return len(list(out.glob("part-*.parquet"))) if out.exists() else 0


MODEL_COLUMNS = ("text", "summary")


def _written_groups(out: Path) -> set[int]:
    return {
        group.index
        for group in read_manifest(out).row_groups
        if group.status is not RowGroupStatus.PARTIAL
    }


def _kept_cells(out: Path) -> set[tuple[str, int]]:
    """Model cells whose result survived the stop: journaled, or in a complete row group's
    file."""
    kept: set[tuple[str, int]] = set()
    journal = out / JOURNAL_FILE_NAME
    if journal.exists():
        kept |= {(column, row) for _, column, row in read_journal_keys(journal)}
    # A partial group (salvaged at the stop) is not counted: its finished cells are journaled.
    for group in _written_groups(out):
        rows = range(group * BUFFER_SIZE, (group + 1) * BUFFER_SIZE)
        kept |= {(column, row) for column in MODEL_COLUMNS for row in rows}
    return kept


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    ws = _workspace(tmp_path_factory.mktemp("baseline"))
    out = ws.root / "data"
    code = _finish(_start(ws, out, ws.root / "baseline.log"))
    assert code == 0, (ws.root / "baseline.stderr").read_text()
    assert len(_log_entries(ws.root / "baseline.log")) == NUM_RECORDS
    assert _model_requests(ws.root / "baseline.stdout") == len(MODEL_COLUMNS) * NUM_RECORDS
    keys = _provider_keys(ws)
    # One answered request per model cell, each with its own content.
    assert len(set(keys)) == len(keys) == len(MODEL_COLUMNS) * NUM_RECORDS
    return load_dataset(out)


@dataclass(frozen=True)
class StopPoint:
    signal: signal.Signals
    trigger: str  # "requests": after N completed requests; "parts": after the k-th part file
    count: int

    def __str__(self) -> str:
        return f"{self.signal.name}-after-{self.count}-{self.trigger}"


def _stop_points() -> list[StopPoint]:
    rng = random.Random(20250301)
    return [
        StopPoint(signal.SIGKILL, "requests", rng.randint(5, 60)),
        StopPoint(signal.SIGKILL, "requests", rng.randint(100, 200)),
        StopPoint(signal.SIGKILL, "parts", rng.randint(1, 4)),
        StopPoint(signal.SIGINT, "requests", rng.randint(20, 150)),
        StopPoint(signal.SIGINT, "parts", rng.randint(2, 5)),
    ]


@pytest.mark.parametrize("point", _stop_points(), ids=str)
def test_a_stopped_run_resumes_to_the_uninterrupted_dataset(
    tmp_path: Path, baseline: pd.DataFrame, point: StopPoint
) -> None:
    ws = _workspace(tmp_path)
    out = tmp_path / "data"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

    first = _start(ws, out, first_log)
    if point.trigger == "requests":
        _wait_until(
            first, lambda: len(_log_entries(first_log)) >= point.count, f"{point.count} requests"
        )
    else:
        _wait_until(first, lambda: _part_files(out) >= point.count, f"{point.count} part files")
    first.send_signal(point.signal)
    code = _finish(first)
    assert code != 0, "the run was stopped, it must not report success"
    manifest = read_manifest(out)
    if point.signal is signal.SIGINT:
        assert manifest.status is RunStatus.CANCELLED
    # A reader of the stopped run's directory sees complete files that agree with the manifest.
    assert len(load_dataset(out)) == manifest.rows_written
    kept = _kept_cells(out)
    before = _log_entries(first_log)
    if point.trigger == "requests":
        # Stopped inside row groups: the journal holds results of cells not yet in a file, so
        # it commits while the run goes on, not only when it ends.
        assert any(cell[1] // BUFFER_SIZE not in _written_groups(out) for cell in kept)

    answered_first = _provider_keys(ws)

    second = _start(ws, out, second_log, "--resume")
    assert _finish(second) == 0, (tmp_path / "second.stderr").read_text()
    answered_second = _provider_keys(ws)[len(answered_first) :]

    pd.testing.assert_frame_equal(load_dataset(out), baseline)
    assert read_manifest(out).status is RunStatus.COMPLETED
    after = _log_entries(second_log)
    repeated_kept = [entry for entry in after if (entry[0], entry[1]) in kept]
    assert repeated_kept == [], "a request whose result was kept was sent again"
    # Both model columns, counted by the resumed run itself: no simulated request fails, so it
    # sends one request per model cell that was not kept and none for a kept one (every cell
    # not kept must be requested, so any request for a kept one would raise the count).
    assert _model_requests(tmp_path / "second.stdout") == len(MODEL_COLUMNS) * NUM_RECORDS - len(
        kept
    )
    # Every row's request was made in one of the two runs; only cells still unfinished at the
    # stop may have been requested twice.
    assert {row for _, row, _ in before} | {row for _, row, _ in after} == set(range(NUM_RECORDS))
    repeated = {digest for *_, digest in before} & {digest for *_, digest in after}
    if point.signal is signal.SIGINT:
        assert repeated == set(), "an interrupt must keep every completed request"
    # At the provider, by content hash: the resumed run asks for exactly the cells not kept,
    # so it repeats at most the answers that arrived but were not kept when the run stopped
    # (with SIGKILL: results not yet committed to the journal; with SIGINT: none).
    first_keys, second_keys = set(answered_first), set(answered_second)
    assert len(second_keys) == len(answered_second) == len(MODEL_COLUMNS) * NUM_RECORDS - len(kept)
    lost = len(first_keys) - len(kept)
    assert lost >= 0
    assert len(first_keys & second_keys) <= lost
    assert len(first_keys | second_keys) == len(MODEL_COLUMNS) * NUM_RECORDS
    if point.signal is signal.SIGINT:
        assert first_keys & second_keys == set(), "an interrupt must keep every answer"
    assert not (out / JOURNAL_FILE_NAME).exists()


def _run_with_file_size_limit(ws: Workspace, out: Path, *extra: str) -> tuple[int, str]:
    """RLIMIT_FSIZE makes writes past 5,000 bytes fail (EFBIG): a part file (about 6 KB here)
    or the journal's write-ahead log cannot be written. A full disk (ENOSPC) is tested for
    real below, on a small tmpfs."""
    result = subprocess.run(
        [sys.executable, "-m", "sluiceway.cli.app", "run", str(ws.config), "-o", str(out), "-q"]
        + list(extra),
        cwd=ws.root,
        env={**os.environ, LOG_ENV: str(ws.root / "limited.log"), "COLUMNS": "1000"},
        capture_output=True,
        timeout=DEADLINE_SECONDS,
        preexec_fn=_limit_file_size,
        check=False,
    )
    return result.returncode, result.stderr.decode()


def _limit_file_size() -> None:
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (5_000, 5_000))


def test_a_write_refused_by_a_file_size_limit_fails_loudly_and_resume_completes(
    tmp_path: Path, baseline: pd.DataFrame
) -> None:
    ws = _workspace(tmp_path, provider_log=False)
    out = tmp_path / "data"
    code, stderr = _run_with_file_size_limit(ws, out, "--no-journal")
    assert code == 1, stderr
    flat = " ".join(stderr.split())
    assert "could not write" in flat and "part-000000.parquet" in flat
    manifest = read_manifest(out)
    assert manifest.status is RunStatus.FAILED
    assert manifest.row_groups == ()  # the row group that failed is not listed as written
    assert list(out.glob("*.tmp")) == []
    assert len(load_dataset(out)) == 0

    resumed = _start(ws, out, tmp_path / "resumed.log", "--resume")
    assert _finish(resumed) == 0, (tmp_path / "resumed.stderr").read_text()
    pd.testing.assert_frame_equal(load_dataset(out), baseline)


def test_a_journal_that_cannot_be_written_fails_loudly(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, provider_log=False)
    out = tmp_path / "data"
    code, stderr = _run_with_file_size_limit(ws, out)
    assert code == 1, stderr
    flat = " ".join(stderr.split())
    assert "cell journal" in flat and JOURNAL_FILE_NAME in flat
    assert read_manifest(out).status is RunStatus.FAILED


# -- a full disk, for real ----------------------------------------------------------------------

# Run in a private mount namespace (``unshare``; a user namespace when that is allowed, so no
# root is needed): mount a tmpfs of ``$DISK_BYTES`` on ``$DISK``, run into it until the disk is
# full, copy what is left out, grow the tmpfs and resume. The namespace, and the tmpfs with it,
# ends with the script; nothing outside it sees the mount.
_FULL_DISK_SCRIPT = """
set -u
mount -t tmpfs -o size="$DISK_BYTES" tmpfs "$DISK" || exit 97
SLUICEWAY_CRASH_REQUEST_LOG="$ROOT/full.log" "$PYTHON" -m sluiceway.cli.app run "$CONFIG" \\
    -o "$DISK/data" -q --no-events $EXTRA >"$ROOT/full.stdout" 2>"$ROOT/full.stderr"
echo $? >"$ROOT/full.rc"
cp -a "$DISK/data" "$ROOT/after-full" || exit 98
mount -o remount,size=64m "$DISK" || exit 99
SLUICEWAY_CRASH_REQUEST_LOG="$ROOT/resumed.log" "$PYTHON" -m sluiceway.cli.app run "$CONFIG" \\
    -o "$DISK/data" -q --no-events --resume $EXTRA >"$ROOT/resumed.stdout" 2>"$ROOT/resumed.stderr"
echo $? >"$ROOT/resumed.rc"
cp -a "$DISK/data" "$ROOT/final" || exit 98
"""
_NAMESPACES = (
    ("unshare", "--user", "--map-root-user", "--mount"),
    ("unshare", "--mount", "--propagation", "private"),
)


@pytest.fixture(scope="module")
def private_mounts(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    """The ``unshare`` prefix that lets a child mount a tmpfs of its own; skips without one."""
    probe = tmp_path_factory.mktemp("probe")
    for prefix in _NAMESPACES:
        try:
            result = subprocess.run(
                [*prefix, "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{probe}'"],
                capture_output=True,
                timeout=DEADLINE_SECONDS,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if result.returncode == 0:
            return prefix
    pytest.skip("no private mount namespace: a small tmpfs cannot be mounted for the test")


@pytest.mark.parametrize(
    ("journal", "disk_bytes", "fails_at"),
    # tmpfs counts whole 4 KiB pages and the files of a seeded run have fixed sizes, so without
    # the journal the file that meets the full disk is known: with 44 KiB the fifth part file,
    # with 48 KiB the manifest after it (that part file stays unlisted). With the journal its
    # write-ahead log grows with every commit and is full first.
    [
        (False, 44 * 1024, r"part-\d{6}\.parquet"),
        (False, 48 * 1024, r"manifest\.json"),
        (True, 192 * 1024, r"(journal\.sqlite|part-\d{6}\.parquet|manifest\.json)"),
    ],
    ids=["no-journal-part-file", "no-journal-manifest", "journal"],
)
def test_a_full_disk_fails_loudly_and_resume_completes_once_space_is_free(
    tmp_path: Path,
    baseline: pd.DataFrame,
    private_mounts: tuple[str, ...],
    journal: bool,
    disk_bytes: int,
    fails_at: str,
) -> None:
    ws = _workspace(tmp_path, provider_log=False)
    disk = tmp_path / "disk"
    disk.mkdir()
    env = {
        **os.environ,
        "COLUMNS": "1000",
        "DISK": str(disk),
        "DISK_BYTES": str(disk_bytes),
        "ROOT": str(tmp_path),
        "PYTHON": sys.executable,
        "CONFIG": str(ws.config),
        "EXTRA": "" if journal else "--no-journal",
    }
    script = subprocess.run(
        [*private_mounts, "sh", "-c", _FULL_DISK_SCRIPT],
        cwd=ws.root,
        env=env,
        capture_output=True,
        timeout=4 * DEADLINE_SECONDS,
        check=False,
    )
    assert script.returncode == 0, script.stderr.decode()
    out = disk / "data"  # the path as the runs saw it

    # The run that filled the disk: fatal, loud, naming the file it could not write.
    stderr = " ".join((tmp_path / "full.stderr").read_text().split())
    assert (tmp_path / "full.rc").read_text().strip() == "1", stderr
    assert "No space left on device" in stderr or "database or disk is full" in stderr, stderr
    error = stderr[stderr.index("error: ") :]
    assert re.match(
        rf"error: could not \w+ (the cell journal )?{re.escape(str(out))}/{fails_at}", error
    )
    # What it left is a consistent dataset: listed files complete, no temp file, fewer rows.
    left = tmp_path / "after-full"
    assert list(left.glob("*.tmp")) == []
    manifest = read_manifest(left)
    assert manifest.status in (RunStatus.FAILED, RunStatus.RUNNING)
    written = load_dataset(left)
    assert len(written) == manifest.rows_written < NUM_RECORDS
    if len(written):
        same_rows = baseline[baseline["_row_index"].isin(written["_row_index"])]
        pd.testing.assert_frame_equal(written, same_rows.reset_index(drop=True))
    kept = _kept_cells(left)
    assert kept, "the disk was full before anything was kept; the tmpfs is too small"

    # Once there is space, the resumed run completes the same dataset, and requests nothing
    # whose result the full run kept (written row groups, or the journal).
    resumed_stderr = (tmp_path / "resumed.stderr").read_text()
    assert (tmp_path / "resumed.rc").read_text().strip() == "0", resumed_stderr
    pd.testing.assert_frame_equal(load_dataset(tmp_path / "final"), baseline)
    assert _model_requests(tmp_path / "resumed.stdout") == len(MODEL_COLUMNS) * NUM_RECORDS - len(
        kept
    )
