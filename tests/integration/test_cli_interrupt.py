"""Ctrl-C on a real ``sluiceway run`` process: an orderly stop, a summary, a non-zero exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _slow_config(path: Path) -> Path:
    config = {
        "providers": [{"name": "p", "type": "simulated", "simulation": {"latency_seconds": 0.02}}],
        "models": [{"alias": "m", "provider": "p", "model": "m-1", "max_parallel_requests": 2}],
        "columns": [
            {"name": "who", "type": "sampler", "sampler": {"kind": "uuid"}},
            {"name": "text", "type": "llm_text", "model": "m", "prompt": "About {{ who }}"},
        ],
        "run": {"num_records": 100_000, "buffer_size": 2, "max_concurrent_row_groups": 1},
    }
    file = path / "slow.yaml"
    file.write_text(yaml.safe_dump(config))
    return file


def _start(config: Path, out: Path) -> subprocess.Popen[str]:
    code = "from sluiceway.cli.app import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "run", str(config), "-o", str(out)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_for_progress(process: subprocess.Popen[str]) -> None:
    assert process.stderr is not None
    for line in process.stderr:  # ends if the process exits early
        if line.startswith("progress:"):
            return
    raise AssertionError(f"the run ended before any progress (exit {process.wait(10)})")


def test_first_ctrl_c_cancels_in_order_and_keeps_written_row_groups(tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = _start(_slow_config(tmp_path), out)
    try:
        _wait_for_progress(process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
    assert process.returncode == 130, stderr
    assert "cancelling" in stderr and "stopped: the run was cancelled" in stderr
    assert "kept" in stderr
    assert f"sluiceway run {tmp_path / 'slow.yaml'} -o {out} --resume" in stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "cancelled"
    assert manifest["row_groups"], "the row group written before Ctrl-C is kept"
    for group in manifest["row_groups"]:
        assert group["rows_written"] + group["rows_dropped"] == 2
    plan = json.loads((out / "capacity_plan.json").read_text())["runtime_snapshot"]
    assert plan["task_admission"]["active_leases"] == 0
    assert plan["request_admission"]["live_leases"] == 0


def test_second_ctrl_c_aborts_at_once(tmp_path: Path) -> None:
    process = _start(_slow_config(tmp_path), tmp_path / "out")
    try:
        _wait_for_progress(process)
        assert process.stderr is not None
        process.send_signal(signal.SIGINT)
        for line in process.stderr:
            if line.startswith("cancelling"):
                break
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
    assert process.returncode == 130
    assert "aborted" in stderr
