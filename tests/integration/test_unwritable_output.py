"""Unwritable output directories, for real: ``sluiceway run`` as a subprocess that the file
system refuses to let write.

Root ignores permission bits, so when the tests run as root the subprocess loses the two
capabilities that let it (``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``) from its bounding set
before it starts: it stays uid 0, can still read everything root owns (the interpreter may live
under a private home), but a directory with mode 0o555 is as read-only to it as to any user.
Without root the permission bits apply as they are. The tests skip only when neither works.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sluiceway.storage.dataset import load_dataset, read_manifest
from sluiceway.storage.manifest import RunStatus

NUM_RECORDS = 120
BUFFER_SIZE = 20
DEADLINE_SECONDS = 30.0
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2


def _drop_permission_override() -> None:
    """In the child before exec: without these capabilities root obeys permission bits."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"prctl(PR_CAPBSET_DROP, {capability}): {os.strerror(error)}")


def _restriction() -> Callable[[], None] | None:
    return _drop_permission_override if os.geteuid() == 0 else None


@pytest.fixture
def read_only_directory(tmp_path: Path) -> Iterator[Path]:
    """A directory with mode 0o555; skips when a restricted subprocess can still write in it."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        probe = subprocess.run(
            [sys.executable, "-c", f"open({str(directory / 'probe')!r}, 'w')"],
            preexec_fn=_restriction(),
            capture_output=True,
            timeout=DEADLINE_SECONDS,
            check=False,
        )
    except subprocess.SubprocessError as exc:
        directory.chmod(0o755)
        pytest.skip(f"cannot start a subprocess without write permission: {exc}")
    if probe.returncode == 0 or b"PermissionError" not in probe.stderr:
        directory.chmod(0o755)
        pytest.skip("neither dropped capabilities nor permission bits make a directory read-only")
    try:
        yield directory
    finally:
        directory.chmod(0o755)


def _config() -> dict[str, object]:
    return {
        "providers": [
            {"name": "sim", "type": "simulated", "simulation": {"latency_seconds": 0.02}}
        ],
        "models": [
            {"alias": "writer", "provider": "sim", "model": "sim-w", "max_parallel_requests": 4}
        ],
        "columns": [
            {"name": "n", "type": "sampler", "sampler": {"kind": "integer", "low": 0, "high": 99}},
            {"name": "text", "type": "llm_text", "model": "writer", "prompt": "Write {{ n }}"},
        ],
        "run": {
            "num_records": NUM_RECORDS,
            "seed": 3,
            "buffer_size": BUFFER_SIZE,
            "max_concurrent_row_groups": 1,
        },
    }


def _command(config: Path, out: Path, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "sluiceway.cli.app", "run", str(config), "-o", str(out)]
    return [*command, "-q", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "1000"}


def _run_restricted(config: Path, out: Path, *extra: str) -> tuple[int, str]:
    result = subprocess.run(
        _command(config, out, *extra),
        cwd=config.parent,
        env=_env(),
        capture_output=True,
        timeout=DEADLINE_SECONDS,
        preexec_fn=_restriction(),
        check=False,
    )
    return result.returncode, " ".join(result.stderr.decode().split())


def _snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Content hash and modification time of every file in ``directory``."""
    return {
        path.name: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(directory.iterdir())
        if path.is_file()
    }


def _config_file(root: Path) -> Path:
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(_config()))
    return config


def test_a_new_run_into_a_read_only_directory_fails_naming_the_path(
    tmp_path: Path, read_only_directory: Path
) -> None:
    config = _config_file(tmp_path)
    for out in (read_only_directory, read_only_directory / "data"):
        code, stderr = _run_restricted(config, out)
        assert code == 1, stderr
        assert str(out) in stderr
        assert "not writable" in stderr or "PermissionError" in stderr, stderr
        assert list(read_only_directory.iterdir()) == []


def test_resuming_into_a_read_only_directory_fails_and_overwrites_nothing(
    tmp_path: Path, read_only_directory: Path
) -> None:
    config = _config_file(tmp_path)
    read_only_directory.chmod(0o755)
    out = read_only_directory / "data"
    # A run stopped after two row groups: the dataset, manifest and journal a resume continues.
    with (tmp_path / "first.stderr").open("wb") as stderr:
        first = subprocess.Popen(
            _command(config, out),
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + DEADLINE_SECONDS
    while len(list(out.glob("part-*.parquet"))) < 2:
        assert first.poll() is None, (tmp_path / "first.stderr").read_text()
        assert time.monotonic() < deadline, "no two part files in time"
        time.sleep(0.005)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=DEADLINE_SECONDS)
    written = load_dataset(out)
    assert BUFFER_SIZE <= len(written) < NUM_RECORDS
    out.chmod(0o555)
    before = _snapshot(out)

    for flag in ("--resume", "--overwrite"):
        code, stderr = _run_restricted(config, out, flag)
        assert code == 1, stderr
        assert str(out) in stderr, stderr
        assert "not writable" in stderr or "PermissionError" in stderr, stderr
        assert _snapshot(out) == before, f"a failed run with {flag} changed files already written"
    pd.testing.assert_frame_equal(load_dataset(out), written)

    out.chmod(0o755)
    code, stderr = _run_restricted(config, out, "--resume")
    assert code == 0, stderr
    assert read_manifest(out).status is RunStatus.COMPLETED
    assert len(load_dataset(out)) == NUM_RECORDS
